"""The v1 cache's throughput against raw ffmpeg-libvmaf: the same clips of corpus=v1, the same
models at the same display size and bit depth, two clips at a time, one run.

    python benchmarks/v1_cache.py [number of sources, default 4]

Raw: one ffmpeg per clip with the libvmaf graph written out by hand, its JSON log left unread.
Cache: ``TeacherCache.build`` into a scratch folder (graph, log parsing, checks, the entry and
frames.npz written). Prints both wall times, their ratio (the target: the cache at >= 90 % of raw
throughput) and the largest difference between the two runs' scores, which must be 0.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import compose
from hydra.utils import instantiate

from tinyvmaf import ffmpeg
from tinyvmaf.cache import TeacherCache
from tinyvmaf.corpus import ClipPair
from tinyvmaf.teacher.ffmpeg_filter import FfmpegLibvmaf

JOBS = 2


def raw_libvmaf(pair: ClipPair, models: list[str], display: list[int], bit_depth: int, log: Path) -> None:
    width, height = display
    chain = f"scale={width}:{height}:flags=bicubic,format=yuv420p{bit_depth}le,settb=1/25,setpts=N"
    model = ffmpeg.filter_option("|".join(f"version={m}:name={m}" for m in models))
    graph = f"[0:v]{chain}[d];[1:v]{chain}[r];[d][r]libvmaf=log_fmt=json:log_path={log}:n_threads=1:model={model}"
    ffmpeg.run(["-i", str(pair.distorted.path), "-i", str(pair.reference.path), "-lavfi", graph, "-f", "null", "-"],
               what=str(pair.distorted.path))  # fmt: skip


def main() -> None:
    n_sources = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    cfg = compose("build_cache", "corpus=v1", "teacher=vmaf_v1.0.16_3d0h")
    corpus = instantiate(cfg.corpus)
    every = corpus.pairs()  # generates the corpus first if needed: not timed
    sources = sorted({p.source for p in every})[:n_sources]
    pairs = [p for p in every if p.source in sources]
    models, display, bit_depth = list(cfg.cache.models), list(cfg.cache.display), int(cfg.cache.bit_depth)
    with tempfile.TemporaryDirectory(prefix="tinyvmaf-v1-cache-") as scratch:
        logs = [Path(scratch) / f"raw-{i}.json" for i in range(len(pairs))]
        start = time.perf_counter()
        with ThreadPoolExecutor(JOBS) as pool:
            list(pool.map(lambda i: raw_libvmaf(pairs[i], models, display, bit_depth, logs[i]), range(len(pairs))))
        raw = time.perf_counter() - start
        cache = TeacherCache(
            Path(scratch) / "cache", FfmpegLibvmaf(), models, JOBS, display=display, bit_depth=bit_depth
        )
        start = time.perf_counter()
        report = cache.build(corpus, pairs)
        built = time.perf_counter() - start
        assert not report.failures, report.failures
        table = cache.load(corpus)
        raw_scores = {
            p.asset: [f["metrics"][cfg.teacher.model] for f in json.loads(log.read_text())["frames"]]
            for p, log in zip(pairs, logs, strict=True)
        }
    frames = len(table)
    diff = max(
        np.abs(np.asarray(raw_scores[clip]) - table.scores[cfg.teacher.model][table.clip == i]).max()
        for i, clip in enumerate(table.clips)
    )
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {len(pairs)} clips of {', '.join(sources)}, "
          f"{frames:,} frames at {display[0]}x{display[1]}p{bit_depth}, models {', '.join(models)}, {JOBS} jobs")  # fmt: skip
    print(f"raw ffmpeg-libvmaf: {raw:.1f} s, {frames / raw:.2f} frames/s")
    print(f"TeacherCache.build: {built:.1f} s, {frames / built:.2f} frames/s")
    print(f"cache throughput / raw: {raw / built:.1%}; max |score difference| {diff:.1e}")


if __name__ == "__main__":
    main()
