"""Time writing one model's ONNX file: the graph written from the weights (``tinyvmaf.onnx_io.onnx_graph``)
against torch's tracing exporter (``torch.onnx.export``, dynamo), and the check every export runs.

    python benchmarks/onnx_export.py

Models: the shipped architectures with their initial weights and a fitted standardization (the
graph's size and shape do not depend on the values). Median of repeated writes, one thread.
Record the result in docs/benchmarks.md with the machine.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from tinyvmaf.features import Standardization
from tinyvmaf.model import VmafNet, mlp
from tinyvmaf.onnx_io import check_graph, onnx_graph
from tinyvmaf.teacher.function import DOMAIN_HIGH, DOMAIN_LOW

ARCHS = {"mlp_small": [16, 8], "mlp_medium": [64, 32], "linear": []}
REPEATS = 50


def model(hidden: list[int]) -> VmafNet:
    torch.manual_seed(0)
    box = np.random.default_rng(0).uniform(DOMAIN_LOW, DOMAIN_HIGH, size=(1000, 6))
    net = VmafNet(mlp(hidden, "SiLU"))
    net.set_standardization(Standardization.fit(box, 60 + 30 * box[:, 0]))
    return net.eval()


def median_seconds(write, path: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        write(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def traced(net: VmafNet, path: Path) -> None:
    """What tinyvmaf did before: torch's exporter traces the module (clip included)."""

    class Clipped(torch.nn.Module):
        def forward(self, x):
            return net.predict(x)

    program = torch.onnx.export(
        Clipped(), (torch.zeros(4, 6),), input_names=["features"], output_names=["vmaf"],
        dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False, verbose=False,
    )  # fmt: skip
    onnx.save_model(program.model_proto, str(path), save_as_external_data=False)


def main() -> None:
    torch.set_num_threads(1)
    for name in ("onnx_ir", "onnxscript", "torch.onnx", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, onnx {onnx.__version__}")
    frames = np.random.default_rng(1).uniform(DOMAIN_LOW, DOMAIN_HIGH, size=(12_420, 6)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        for arch, hidden in ARCHS.items():
            net = model(hidden)
            written = median_seconds(lambda p: onnx.save_model(onnx_graph(net), str(p)), path, REPEATS)
            size = path.stat().st_size
            checked = median_seconds(lambda p: check_graph(p, net, frames), path, REPEATS)
            tracing = median_seconds(lambda p: traced(net, p), path, 3)
            print(
                f"{arch}: written from the weights {1000 * written:.2f} ms ({size:,} bytes); "
                f"checked (onnx.checker + ONNX Runtime vs torch on 12,420 frames) {1000 * checked:.1f} ms; "
                f"torch.onnx.export (dynamo) {1000 * tracing:.0f} ms: {tracing / written:.0f}x"
            )


if __name__ == "__main__":
    main()
