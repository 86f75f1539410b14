"""Train tiny VMAF models leave-one-source-out: python train.py -m arch=mlp_small,mlp_medium,linear 'fold=glob(*)'"""

import hydra
from omegaconf import DictConfig

from tinyvmaf.cli import no_telemetry, run_command


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig):
    # Imported in the job, not at the top: the launching process of a parallel sweep never trains,
    # and torch, Lightning and MLflow take ~6 s to import before it could start any worker.
    no_telemetry()  # before MLflow and ONNX Runtime are imported: both read their switch then
    from tinyvmaf.training import train

    return run_command(train, cfg)


if __name__ == "__main__":
    main()
