"""Time the default corpus's teacher cache: cold build (corpus generation + libvmaf), warm build, load.

    python benchmarks/cache.py

Builds into a scratch data folder, so the project's own data/ is left alone.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, compose
from hydra.utils import instantiate


def timed_command(data: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "build_cache.py", f"paths.data_dir={data}", f"hydra.run.dir={data}/hydra"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tinyvmaf-cache-bench-") as data:
        cold, warm = timed_command(data), timed_command(data)
        cfg = compose("build_cache", f"paths.data_dir={data}")
        corpus, cache = instantiate(cfg.corpus), instantiate(cfg.cache)
        start = time.perf_counter()
        table = cache.load(corpus)
        load = time.perf_counter() - start
        size = sum(p.stat().st_size for p in Path(data).rglob("*") if p.is_file())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    print(f"cold build (generate corpus + libvmaf, all cores): {cold:.1f} s")
    print(f"warm build (build_cache.py, no libvmaf): {warm:.2f} s")
    print(f"load {len(table):,} frames into arrays: {load * 1000:.1f} ms; disk: {size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
