"""Score a 2-million-frame libvmaf JSON log (libvmaf's own pretty-printed layout, ~650 MB) with
``score.py`` in each output format: wall time and the process's peak memory.

    python benchmarks/big_log.py [frames]

The log is generated into a temporary folder (random feature values, frameNum 0..n-1) and
removed afterwards. Record the result in docs/benchmarks.md with the machine.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT

from tinyvmaf.teacher import FEATURE_NAMES

NAMES = [*FEATURE_NAMES, "vmaf"]


def write_log(path: Path, frames: int) -> None:
    values = np.random.default_rng(0).uniform(0.3, 1.0, (frames, len(NAMES)))
    values[:, -1] *= 100
    with open(path, "w") as f:
        f.write('{\n  "version": "3.0.0",\n  "fps": 25.0,\n  "frames": [\n')
        for i, row in enumerate(values):
            metrics = ",\n        ".join(f'"{k}": {v:.6f}' for k, v in zip(NAMES, row))
            end = ",\n" if i < frames - 1 else "\n"
            f.write(f'    {{\n      "frameNum": {i},\n      "metrics": {{\n        {metrics}\n      }}\n    }}{end}')
        f.write('  ],\n  "pooled_metrics": {}\n}\n')


def main(frames: int) -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="tinyvmaf-biglog-") as tmp:
        log = Path(tmp) / "log.json"
        write_log(log, frames)
        print(f"{frames:,} frames, {log.stat().st_size / 2**20:.0f} MiB")
        for fmt in ("table", "csv", "json"):
            command = [
                "/usr/bin/time", "-f", "%M", "-o", f"{tmp}/rss", sys.executable, str(ROOT / "score.py"),
                f"onnx={ROOT}/models/vmaf_tiny_v1.onnx", f"log={log}", f"format={fmt}", f"hydra.run.dir={tmp}/hydra",
            ]  # fmt: skip
            start = time.perf_counter()
            with open(Path(tmp) / "out", "wb") as out:
                subprocess.run(command, stdout=out, check=True)
            seconds = time.perf_counter() - start
            size = (Path(tmp) / "out").stat().st_size
            peak = int((Path(tmp) / "rss").read_text().split()[-1])
            print(f"format={fmt}: {seconds:.1f} s, peak memory {peak / 2**20:.2f} GiB, {size / 2**20:.0f} MiB written")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000)
