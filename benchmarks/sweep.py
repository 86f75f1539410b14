"""Time the 27-run LOSO sweep (3 archs x 9 folds) on a warm teacher cache; print LOSO means.

    python benchmarks/sweep.py [extra train.py overrides]
    python benchmarks/sweep.py --launchers     # basic, joblib(2) and fold.heldout=all + joblib(2), one run
    python benchmarks/sweep.py --stacked [REV] # stacked folds against one after another, and against REV's code

The cache is built first (untimed); each sweep writes to a scratch MLflow store so the
project's own mlruns/ is left alone. Record the result in docs/benchmarks.md with the machine.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tinyvmaf.runs import ALL_FOLDS, LOSO_MEAN, LOSO_WORST, Kind, Param, Tag, heldout, loso_figures

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


def timed_sweep(overrides: list[str], checkout: Path = ROOT) -> tuple[float, list[Run]]:
    """Wall time of the whole ``train.py -m`` command (of ``checkout``'s code), and its runs, on an
    existing store, as a user's ``mlruns/`` is: SQLite's first-run migrations are not timed."""
    with tempfile.TemporaryDirectory(prefix="tinyvmaf-bench-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        store = [f"tracking.uri={uri}", f"hydra.sweep.dir={tmp}/multirun"]
        env = {
            **os.environ,
            "PYTHONWARNINGS": "ignore",
            "PYTHONPATH": str(checkout / "src"),
            "TINYVMAF_DATA": str(ROOT / "data"),
        }
        MlflowClient(uri).search_experiments()  # creates the database
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "train.py", "-m", *overrides, *store],
            cwd=checkout,
            check=True,
            capture_output=True,
            env=env,
        )
        seconds = time.perf_counter() - start
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("tinyvmaf-loso").experiment_id], max_results=1000)
    return seconds, runs


def fold_runs(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.FOLD]


def job_seconds(runs: list[Run], arch: str) -> float:
    """A whole-configuration job's own time: its MLflow run's start to end (no process start-up)."""
    (job,) = [r for r in runs if r.data.params.get(Param.FOLD) == ALL_FOLDS and r.data.params.get(Param.ARCH) == arch]
    return (job.info.end_time - job.info.start_time) / 1000


def stacked(baseline: str) -> None:
    """Stacked whole-configuration jobs against the same jobs one fold after another, and the README's
    per-fold sweep against the code of ``baseline`` (a git revision), all in this one run."""
    old = Path(tempfile.mkdtemp(prefix="tinyvmaf-baseline-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), baseline], check=True, capture_output=True
    )
    try:
        results = {
            f"README per-fold sweep, {baseline}": timed_sweep(SWEEP, old),
            "README per-fold sweep": timed_sweep(SWEEP),
            "3 stacked jobs": timed_sweep([SWEEP[0], "fold.heldout=all"]),
            "mlp_small job, one fold after another": timed_sweep(
                ["arch=mlp_small", "fold.heldout=all", "stack_folds=false"]
            ),
            "mlp_small job, stacked": timed_sweep(["arch=mlp_small", "fold.heldout=all"]),
        }
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=True)
        shutil.rmtree(old, ignore_errors=True)
    today, _ = results[f"README per-fold sweep, {baseline}"]
    for name, (seconds, runs) in results.items():
        print(
            f"{name}: {seconds:.1f} s wall, {100 * seconds / today:.0f} % of {baseline}'s sweep ({len(fold_runs(runs))} fold runs)"
        )
    one_by_one = job_seconds(results["mlp_small job, one fold after another"][1], "mlp_small")
    at_once = job_seconds(results["mlp_small job, stacked"][1], "mlp_small")
    print(
        f"mlp_small fold.heldout=all job (its MLflow run): {one_by_one:.2f} s one fold after another, {at_once:.2f} s stacked: {one_by_one / at_once:.2f}x"
    )
    for name in ("README per-fold sweep", "3 stacked jobs"):
        print(name)
        loso_means(fold_runs(results[name][1]))


def loso_means(runs: list[Run]) -> None:
    for arch in dict.fromkeys(r.data.params.get(Param.ARCH) for r in sorted(runs, key=lambda r: r.info.start_time)):
        figures = loso_figures([heldout(r) for r in runs if r.data.params.get(Param.ARCH) == arch])
        print(
            f"{arch:11s} PLCC {figures[LOSO_MEAN['plcc']]:.4f}  SROCC {figures[LOSO_MEAN['srocc']]:.4f}  "
            f"RMSE {figures[LOSO_MEAN['rmse']]:.3f}  worst-fold RMSE {figures[LOSO_WORST['rmse']]:.3f}"
        )


def main(args: list[str]) -> None:
    subprocess.run([sys.executable, "build_cache.py"], cwd=ROOT, check=True, capture_output=True)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    if args[:1] == ["--stacked"]:
        stacked(args[1] if len(args) > 1 else "4c015e4")
        return
    if args[:1] != ["--launchers"]:
        seconds, runs = timed_sweep([*SWEEP, *args])
        runs = fold_runs(runs)
        print(
            f"27-run sweep: {seconds:.1f} s wall ({len(runs)} runs, {sum(r.info.status == 'FINISHED' for r in runs)} finished)"
        )
        loso_means(runs)
        return
    results = {name: (s, fold_runs(runs)) for name, (s, runs) in ((n, timed_sweep(o)) for n, o in LAUNCHERS.items())}
    basic, _ = results["basic launcher"]
    for name, (seconds, runs) in results.items():
        print(f"{name}: {seconds:.1f} s wall, {basic / seconds:.2f}x the basic launcher ({len(runs)} fold runs)")
    by_fold = [
        {(r.data.params[Param.ARCH], r.data.params[Param.FOLD]): heldout(r)["rmse"] for r in runs}
        for _, runs in results.values()
    ]
    print(
        f"max |held-out RMSE difference| between the three: {max(abs(a[k] - b[k]) for a in by_fold for b in by_fold for k in a):.1e}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
