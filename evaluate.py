"""The digest of a LOSO sweep from MLflow, or a shipped ONNX model's metrics on a corpus."""

import hydra
from omegaconf import DictConfig

from tinyvmaf.cli import no_telemetry, run_command


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    no_telemetry()  # before MLflow and ONNX Runtime are imported: both read their switch then
    from tinyvmaf.digest import write_digest
    from tinyvmaf.score import evaluate_onnx

    run_command(evaluate_onnx if cfg.onnx else write_digest, cfg)


if __name__ == "__main__":
    main()
