"""The two teacher backends on the default corpus: ffmpeg's libvmaf filter against libvmaf's own
``vmaf`` tool (built from ../shared, or the path given), same clips, same jobs, one run.

    python benchmarks/teacher_backends.py [path/to/vmaf]

Each backend builds a cold cache into a scratch folder; the corpus itself is the project's
(generated into data/ if missing). Prints wall times, frames/s and the largest difference
between the two backends' features and scores.
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
from common import ROOT, compose
from hydra.utils import instantiate

from tinyvmaf.cache import TeacherCache
from tinyvmaf.teacher.ffmpeg_filter import FfmpegLibvmaf
from tinyvmaf.teacher.vmaf_cli import VmafCli


def vmaf_tool(scratch: Path) -> str:
    if len(sys.argv) > 1:
        return sys.argv[1]
    built = subprocess.run(
        ["bash", str(ROOT.parent / "shared" / "tools" / "build-libvmaf.sh"), str(scratch / "libvmaf")],
        check=True,
        capture_output=True,
        text=True,
    )
    return built.stdout.strip().splitlines()[-1]


def main() -> None:
    cfg = compose("build_cache")
    corpus = instantiate(cfg.corpus)
    pairs = corpus.pairs()  # generates the corpus first if needed: not timed
    models = list(cfg.cache.models)
    tables, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="tinyvmaf-backends-") as scratch:
        for name, libvmaf in (("ffmpeg filter", FfmpegLibvmaf()), ("vmaf CLI", VmafCli(vmaf_tool(Path(scratch))))):
            cache = TeacherCache(Path(scratch) / name.replace(" ", "-"), libvmaf, models, n_jobs=2)
            start = time.perf_counter()
            report = cache.build(corpus, pairs)
            seconds[name] = time.perf_counter() - start
            assert not report.failures, report.failures
            tables[name] = cache.load(corpus)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {len(pairs)} clips, {len(tables['ffmpeg filter']):,} frames, models {', '.join(models)}, 2 jobs"
    )
    for name, table in tables.items():
        print(
            f"{name} (libvmaf {table.libvmaf_version}): {seconds[name]:.1f} s, {len(table) / seconds[name]:.0f} frames/s"
        )
    a, b = tables.values()
    print(f"vmaf CLI / ffmpeg filter wall time: {seconds['vmaf CLI'] / seconds['ffmpeg filter']:.2f}x")
    print(
        f"max |difference|: features {np.abs(a.features - b.features).max():.1e}, "
        + ", ".join(f"{m} {np.abs(a.scores[m] - b.scores[m]).max():.1e}" for m in models)
    )


if __name__ == "__main__":
    main()
