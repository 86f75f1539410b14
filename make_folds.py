"""Rewrite configs/fold/ to hold one option per source of the configured corpus."""

import hydra
from omegaconf import DictConfig

from tinyvmaf.cli import run_command
from tinyvmaf.corpus.folds import make_folds


@hydra.main(version_base="1.3", config_path="configs", config_name="make_folds")
def main(cfg: DictConfig) -> None:
    run_command(make_folds, cfg)


if __name__ == "__main__":
    main()
