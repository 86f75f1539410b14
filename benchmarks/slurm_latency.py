"""SLURM's latencies for tinyvmaf's jobs, on the test cluster (tests/cluster.py: two namespace nodes
of 1 CPU each on this machine's 2 shared cores, accounting on MariaDB): submission to start, a job's
start-up before its first MLflow run, and how late the launching process learns of a job that
failed in its own code or was cancelled. Figures for docs/scaling.md.

    python benchmarks/slurm_latency.py     (as root; the default corpus's cache built)
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import ROOT
from mlflow.tracking import MlflowClient

from tinyvmaf.runs import Kind, Param, Tag, search_runs

sys.path.insert(0, str(ROOT / "tests"))
from cluster import available, slurm_cluster  # noqa: E402

SWEEP = ["hydra/launcher=slurm", "hydra.launcher.partition=cpu", "arch=linear", "trainer.max_epochs=2"]


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def accounting(cluster, jobs: list[str]) -> dict[str, dict[str, str]]:
    out = cluster.command("sacct", "-n", "-P", "-X", "-j", ",".join(jobs), "-o", "JobID,Submit,Start,End,State").stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return {r[0]: dict(zip(("submit", "start", "end", "state"), r[1:])) for r in rows}


def main() -> None:
    lacking = available()
    if lacking:
        sys.exit(f"error: {lacking}")
    folder = Path(tempfile.mkdtemp(prefix="tinyvmaf-slurm-bench-"))
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    with slurm_cluster() as cluster:
        command = [sys.executable, str(ROOT / "train.py"), "-m", *SWEEP, f"tracking.uri={uri}",
                   f"paths.data_dir={ROOT / 'data'}", "fold.heldout=Bikes,Life,Carphone,CoffeePan,Ghost",
                   f"hydra.sweep.dir={folder}/sweep", "sweep_id=latency"]  # fmt: skip
        t0 = time.time()
        done = subprocess.run(command, cwd=folder, env=cluster.env, capture_output=True, text=True)
        wall = time.time() - t0
        client = MlflowClient(uri)
        runs = search_runs(client, client.get_experiment_by_name("tinyvmaf-loso").experiment_id, Kind.FOLD)
        by_job = {r.data.tags[Tag.SLURM_JOB]: r for r in runs}
        sacct = accounting(cluster, list(by_job))
        queued = [seconds(a["start"]) - seconds(a["submit"]) for a in sacct.values()]
        startup = [by_job[j].info.start_time / 1000 - seconds(a["start"]) for j, a in sacct.items()]
        ghost = next(j for j, r in by_job.items() if r.data.params[Param.FOLD] == "Ghost")
        marker = next((folder / "sweep").glob("*/FAILED"))
        detected = marker.stat().st_mtime - seconds(sacct[ghost]["end"])
    print(
        f"machine: {subprocess.run(['uname', '-m'], capture_output=True, text=True).stdout.strip()}, 2 cores shared by both nodes"
    )
    print(f"sweep of 5 one-fold jobs (one failing): {wall:.1f} s, exit {done.returncode}")
    print(
        f"submission to start: median {statistics.median(queued):.1f} s, max {max(queued):.1f} s (5 jobs, 2 at a time)"
    )
    print(f"job start to its MLflow run: median {statistics.median(startup):.1f} s, max {max(startup):.1f} s")
    print(f"a failed job's end to the launching process's verdict: {detected:.1f} s")


if __name__ == "__main__":
    main()
