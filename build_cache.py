"""Build the teacher cache (libvmaf features and scores) of a corpus and print its summary."""

import hydra
from omegaconf import DictConfig

from tinyvmaf.cache import build_cache
from tinyvmaf.cli import run_command


@hydra.main(version_base="1.3", config_path="configs", config_name="build_cache")
def main(cfg: DictConfig) -> None:
    run_command(build_cache, cfg)


if __name__ == "__main__":
    main()
