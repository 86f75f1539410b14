"""The default corpus's cold teacher cache: the thread-pool build against a sharded build through
Hydra's joblib launcher, on the same machine, in one run.

    python benchmarks/shards.py [shards]

Both build into scratch folders from the project's generated corpus (data/corpus/default, made
first if missing and not timed). Prints wall times, the sharded build's throughput as a share of
the thread pool's, and whether the two frames.npz are identical.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
from common import ROOT, compose
from hydra.utils import instantiate


def timed(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "build_cache.py", *args], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main(shards: int) -> None:
    cfg = compose("build_cache")
    instantiate(cfg.corpus).generate()  # not timed
    corpus = ["cache.models=[vmaf_v0.6.1,vmaf_v0.6.1neg,vmaf_4k_v0.6.1]", f"corpus.root={cfg.corpus.root}"]
    with tempfile.TemporaryDirectory(prefix="tinyvmaf-shards-") as tmp:
        pool = timed(*corpus, f"cache.root={tmp}/pool", f"n_jobs={os.cpu_count()}", f"hydra.run.dir={tmp}/h1")
        sharded = timed(
            "-m", *corpus, f"cache.root={tmp}/shards", "n_jobs=1", f"cache.num_shards={shards}",
            f"cache.shard=range({shards})", "hydra/launcher=joblib", f"hydra.sweep.dir={tmp}/h2",
        )  # fmt: skip
        with np.load(f"{tmp}/pool/default/frames.npz") as a, np.load(f"{tmp}/shards/default/frames.npz") as b:
            identical = sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    print(f"thread-pool build ({os.cpu_count()} jobs): {pool:.1f} s")
    print(f"sharded build ({shards} shards, joblib, 1 thread each, consolidation included): {sharded:.1f} s")
    print(f"sharded throughput / thread-pool throughput: {pool / sharded:.0%}; frames.npz identical: {identical}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
