"""Time the 27-run LOSO sweep (3 archs x 9 folds) on a warm teacher cache; print LOSO means.

    python benchmarks/sweep.py [extra train.py overrides]
    python benchmarks/sweep.py --launchers     # basic, joblib(2) and fold.heldout=all + joblib(2), one run

The cache is built first (untimed); each sweep writes to a scratch MLflow store so the
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
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tinyvmaf.tracking import FOLD, KIND

SWEEP = ["arch=mlp_small,mlp_medium,linear", "fold=glob(*)"]
LAUNCHERS = {
    "basic launcher": SWEEP,
    "joblib, 2 workers": [*SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "fold.heldout=all, joblib, 2 workers": [
        SWEEP[0],
        "fold.heldout=all",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ],
}


def timed_sweep(overrides: list[str]) -> tuple[float, list[Run]]:
    """Wall time of the whole ``train.py -m`` command, and its fold runs."""
    with tempfile.TemporaryDirectory(prefix="tinyvmaf-bench-") as tmp:
        store = [
            f"tracking.uri=sqlite:///{tmp}/mlflow.db",
            f"hydra.sweep.dir={tmp}/multirun",
        ]
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "train.py", "-m", *overrides, *store],
            cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
        seconds = time.perf_counter() - start
        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        runs = client.search_runs([client.get_experiment_by_name("tinyvmaf-loso").experiment_id], max_results=1000)
    return seconds, [r for r in runs if r.data.tags.get(KIND) == FOLD]


def loso_means(runs: list[Run]) -> None:
    for arch in dict.fromkeys(r.data.params.get("arch") for r in sorted(runs, key=lambda r: r.info.start_time)):
        mine = [r.data.metrics for r in runs if r.data.params.get("arch") == arch]
        means = {k: sum(m[k] for m in mine) / len(mine) for k in ("heldout_plcc", "heldout_srocc", "heldout_rmse")}
        worst = max(m["heldout_rmse"] for m in mine)
        print(
            f"{arch:11s} PLCC {means['heldout_plcc']:.4f}  SROCC {means['heldout_srocc']:.4f}  "
            f"RMSE {means['heldout_rmse']:.3f}  worst-fold RMSE {worst:.3f}"
        )


def main(args: list[str]) -> None:
    subprocess.run([sys.executable, "build_cache.py"], cwd=ROOT, check=True, capture_output=True)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    if args[:1] != ["--launchers"]:
        seconds, runs = timed_sweep([*SWEEP, *args])
        print(
            f"27-run sweep: {seconds:.1f} s wall ({len(runs)} runs, {sum(r.info.status == 'FINISHED' for r in runs)} finished)"
        )
        loso_means(runs)
        return
    results = {name: timed_sweep(overrides) for name, overrides in LAUNCHERS.items()}
    basic, _ = results["basic launcher"]
    for name, (seconds, runs) in results.items():
        print(f"{name}: {seconds:.1f} s wall, {basic / seconds:.2f}x the basic launcher ({len(runs)} fold runs)")
    by_fold = [
        {(r.data.params["arch"], r.data.params["fold"]): r.data.metrics["heldout_rmse"] for r in runs}
        for _, runs in results.values()
    ]
    print(
        f"max |held-out RMSE difference| between the three: {max(abs(a[k] - b[k]) for a in by_fold for b in by_fold for k in a):.1e}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
