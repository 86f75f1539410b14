"""Time the 27-run LOSO sweep (3 archs x 9 folds) on a warm teacher cache; print LOSO means.

    python benchmarks/sweep.py [extra train.py overrides]

The cache is built first (untimed); the sweep writes to a scratch MLflow store so the
project's own mlruns/ is left alone. Record the result in docs/benchmarks.md with the machine.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time

from common import ROOT
from mlflow.tracking import MlflowClient


def main(extra: list[str]) -> None:
    subprocess.run([sys.executable, "build_cache.py"], cwd=ROOT, check=True, capture_output=True)
    with tempfile.TemporaryDirectory(prefix="tinyvmaf-bench-") as tmp:
        store = [
            f"tracking.uri=sqlite:///{tmp}/mlflow.db",
            f"tracking.artifact_root={tmp}/artifacts",
            f"hydra.sweep.dir={tmp}/multirun",
        ]
        cmd = [sys.executable, "train.py", "-m", "arch=mlp_small,mlp_medium,linear", "fold=glob(*)", *store, *extra]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        seconds = time.perf_counter() - start
        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        runs = client.search_runs([client.get_experiment_by_name("tinyvmaf-loso").experiment_id], max_results=1000)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"27-run sweep: {seconds:.1f} s wall ({len(runs)} runs, {sum(r.info.status == 'FINISHED' for r in runs)} finished)"
    )
    for arch in dict.fromkeys(r.data.params.get("arch") for r in sorted(runs, key=lambda r: r.info.start_time)):
        mine = [r.data.metrics for r in runs if r.data.params.get("arch") == arch]
        means = {k: sum(m[k] for m in mine) / len(mine) for k in ("heldout_plcc", "heldout_srocc", "heldout_rmse")}
        worst = max(m["heldout_rmse"] for m in mine)
        print(
            f"{arch:11s} PLCC {means['heldout_plcc']:.4f}  SROCC {means['heldout_srocc']:.4f}  RMSE {means['heldout_rmse']:.3f}  worst-fold RMSE {worst:.3f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
