"""Score a distorted video against its reference, or a libvmaf JSON log, with a tiny ONNX model."""

import hydra
from omegaconf import DictConfig

from tinyvmaf.cli import no_telemetry, run_command


@hydra.main(version_base="1.3", config_path="configs", config_name="score")
def main(cfg: DictConfig) -> None:
    no_telemetry()  # before MLflow and ONNX Runtime are imported: both read their switch then
    from tinyvmaf.score import score_command

    run_command(score_command, cfg)


if __name__ == "__main__":
    main()
