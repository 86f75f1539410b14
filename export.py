"""Write the shipping ONNX models (self-contained, checked with onnx.checker and onnxruntime)."""

import hydra
from omegaconf import DictConfig

from tinyvmaf.cli import no_telemetry, run_command


@hydra.main(version_base="1.3", config_path="configs", config_name="export")
def main(cfg: DictConfig) -> None:
    no_telemetry()  # before MLflow and ONNX Runtime are imported: both read their switch then
    from tinyvmaf.export import export_models

    run_command(export_models, cfg)


if __name__ == "__main__":
    main()
