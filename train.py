"""Train tiny VMAF models leave-one-source-out: python train.py -m arch=mlp_small,mlp_medium,linear 'fold=glob(*)'"""

import hydra
from omegaconf import DictConfig

from tinyvmaf.cli import run_command
from tinyvmaf.training import train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig):
    return run_command(train, cfg)


if __name__ == "__main__":
    main()
