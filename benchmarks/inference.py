"""Throughput of the shipped ONNX models (ONNX Runtime, CPU), vmaf_v0.6.1 itself as ONNX, and libvmaf.

    python benchmarks/inference.py

Needs the default corpus's cache (python build_cache.py). libvmaf's figure is a full pass
(features + vmaf_v0.6.1) over three default-corpus clips at 384x216, one thread: the tiny
models start from those features, so libvmaf's time is what scoring costs with or without them.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np
import onnxruntime as ort
from common import ROOT, compose
from hydra.utils import instantiate

from tinyvmaf.teacher.ffmpeg_filter import FfmpegLibvmaf
from tinyvmaf.teacher.function import load_teacher


def frames_per_second(fn, frames: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return frames / best


def main() -> None:
    cfg = compose("build_cache")
    corpus, cache = instantiate(cfg.corpus), instantiate(cfg.cache)
    table = cache.load(corpus)
    big = np.resize(table.features.astype(np.float32), (100_000, 6))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__}")
    for name in ("vmaf_tiny_v1", "vmaf_tiny_v1_medium", "vmaf_v0.6.1"):  # the last: libvmaf's SVR as ONNX
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(
            str(ROOT / "models" / f"{name}.onnx"), options, providers=["CPUExecutionProvider"]
        )
        rows = [big[i : i + 1] for i in range(2000)]
        single = frames_per_second(lambda: [session.run(None, {"features": r}) for r in rows], len(rows))
        batch = frames_per_second(lambda: session.run(None, {"features": big}), len(big))
        meta = session.get_modelmeta().custom_metadata_map
        size = (ROOT / "models" / f"{name}.onnx").stat().st_size
        print(
            f"{name} ({int(meta['n_params']):,} numbers, {size / 1024:.1f} KiB): batch 1: {single:,.0f} frames/s; "
            f"batch 100,000: {batch:,.0f} frames/s (1 thread)"
        )
    teacher = load_teacher("vmaf_v0.6.1")
    svr = frames_per_second(lambda: teacher(big.astype(np.float64)), len(big))
    print(f"teacher function (vmaf_v0.6.1 SVR in numpy, from features), batch 100,000: {svr:,.0f} frames/s")
    pairs = corpus.pairs()[:3]
    libvmaf = FfmpegLibvmaf(n_threads=1)
    n = sum(len(libvmaf.score(p, ["vmaf_v0.6.1"]).features) for p in pairs[:1])  # warm-up
    start = time.perf_counter()
    n = sum(len(libvmaf.score(p, ["vmaf_v0.6.1"]).features) for p in pairs)
    print(f"libvmaf (features + vmaf_v0.6.1, 384x216, 1 thread): {n / (time.perf_counter() - start):,.0f} frames/s")


if __name__ == "__main__":
    main()
