"""Largest |model - teacher| over the box of valid feature values, for ONNX models.

    python benchmarks/domain_guard.py [model.onnx ...]        (default: models/*.onnx)

The teacher is the one named in each model's metadata, evaluated as code (no libvmaf run).
Probes: the test's 5^6 grid + 20,000 random points (tests/test_export.py, limit 5
VMAF), a 7^6 grid, and 10^6 random points. Record the figures in models/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from common import ROOT

from tinyvmaf.metrics import DOMAIN_PROBE
from tinyvmaf.teacher import FEATURE_NAMES
from tinyvmaf.teacher.function import domain_points, load_teacher

PROBES = {
    "5^6 grid + 20,000 random (the test, and each fold's domain_max_error)": DOMAIN_PROBE,
    "7^6 grid": dict(grid_steps=7, n_random=0, seed=0),
    "10^6 random": dict(grid_steps=0, n_random=1_000_000, seed=7),
}


def worst(path: Path, x: np.ndarray) -> tuple[float, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x32 = x.astype(np.float32)  # what the model sees; the teacher gets the same values
    teacher = load_teacher(session.get_modelmeta().custom_metadata_map["teacher"])(x32.astype(np.float64))
    error = np.abs(session.run(None, {"features": x32})[0] - teacher)
    return float(error.max()), x[error.argmax()]


def main(paths: list[Path]) -> None:
    points = {name: domain_points(**probe) for name, probe in PROBES.items()}
    for path in paths:
        for name, x in points.items():
            error, where = worst(path, x)
            at = ", ".join(f"{n.removeprefix('integer_')}={v:g}" for n, v in zip(FEATURE_NAMES, where))
            print(f"{path.name}: {name}: max |diff| {error:.3f} VMAF at {at}")


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]] or sorted((ROOT / "models").glob("*.onnx")))
