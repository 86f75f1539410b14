"""A sweep's life whatever the launcher: jobs stopped from outside, what the digest calls missing,
and a rerun that launches only what is lacking. The same on a real SLURM cluster: test_slurm.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


def runs_of(store: Path, query: str = "") -> list:
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("tinyvmaf-loso")
    return [] if experiment is None else client.search_runs([experiment.experiment_id], query, max_results=1000)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_job_stopped_during_training_exits_130_and_its_run_ends_killed(stop, tiny_overrides, tmp_path):
    """What a SLURM preemption or time limit sends (SIGTERM), or Ctrl-C: Lightning's Trainer would
    turn either into exit status 1 and the run into FAILED with error "1"."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *tiny_overrides, "arch=linear", "fold.heldout=Bars",
         "trainer.max_epochs=100000", f"hydra.run.dir={tmp_path}/h"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not runs_of(tmp_path / "mlruns", "tags.kind = 'fold'"):
        time.sleep(0.5)
    time.sleep(2)  # inside Trainer.fit
    os.kill(proc.pid, stop)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and stderr.strip().endswith("error: interrupted"), stderr[-2000:]
    (run,) = runs_of(tmp_path / "mlruns", "tags.kind = 'fold'")
    assert run.info.status == "KILLED" and run.data.tags["error"] == f"interrupted ({stop.name})"


@pytest.mark.slow
def test_the_digest_expects_what_the_command_asked_and_says_so_by_its_exit_status(tiny_overrides, run_entry, tmp_path):
    """A fold naming no source fails; the digest does not call the other source of the corpus
    missing (the command never asked for it), and evaluate.py exits 3: written, incomplete."""
    sweep = run_entry("train.py", "-m", *tiny_overrides, "arch=linear", "fold.heldout=Bars,Ghost", "sweep_id=asked")
    assert sweep.returncode == 1, sweep.stderr
    assert "2 runs expected: 1 finished, 1 failed, 0 still RUNNING, 0 missing." in sweep.stdout
    assert "- missing" not in sweep.stdout  # Mandel is in the corpus, not in the command
    store = [o for o in tiny_overrides if o.startswith(("tracking.", "corpus", "paths.", "cache."))]
    evaluate = run_entry("evaluate.py", *store, "sweep_id=asked", f"paths.reports_dir={tmp_path}/reports")
    assert evaluate.returncode == 3, evaluate.stderr
    again = subprocess.run(  # in a sweep folder of its own, as a rerun's is by default
        [sys.executable, str(ROOT / "train.py"), "-m", *tiny_overrides, "arch=linear", "fold.heldout=Bars,Mandel",
         "sweep_id=asked", f"hydra.sweep.dir={tmp_path}/rerun"], cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert again.returncode == 0 and "1 of 2 jobs already finished in sweep asked with this recipe" in again.stdout
    assert "3 runs expected: 2 finished, 1 failed" in again.stdout  # what both commands asked for
