"""Every SLURM command of the README on a real cluster (tests/cluster.py: SLURM 22.05, two nodes in
network namespaces, accounting on MariaDB), and the faults a cluster has: a job cancelled, a node
lost with and without requeue, a submission refused, the launching process stopped or killed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cluster import HOST_ADDRESS, NODES
from helpers import store_runs
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

ON_SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=cpu", "hydra.launcher.timeout_min=10"]


def command(tmp_path: Path, script: str, *args: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / script),
        *args,
        f"hydra.sweep.dir={tmp_path}/sweep",
        f"hydra.run.dir={tmp_path}/run",
    ]


def run(slurm, tmp_path: Path, script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(tmp_path, script, *args), cwd=tmp_path, env=slurm.env, capture_output=True, text=True, timeout=timeout
    )


LAUNCHER_LOGS: list[Path] = []  # the background launchers' output, shown when a wait times out
LAUNCHERS: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_launcher_left():
    """A test that failed half-way leaves no launching process waiting for ever: stopped by its PID."""
    yield
    while LAUNCHERS:
        proc = LAUNCHERS.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start(slurm, tmp_path: Path, script: str, *args: str) -> subprocess.Popen:
    LAUNCHER_LOGS.append(tmp_path / f"launcher-{time.monotonic_ns()}.log")
    out = open(LAUNCHER_LOGS[-1], "w")
    proc = subprocess.Popen(
        command(tmp_path, script, *args), cwd=tmp_path, env=slurm.env, stdout=out, stderr=subprocess.STDOUT, text=True
    )
    proc.log = LAUNCHER_LOGS[-1]
    LAUNCHERS.append(proc)
    return proc


def finished(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    proc.wait(timeout=timeout)
    return proc.returncode, proc.log.read_text()


def sacct(slurm, job: str) -> list[str]:
    out = slurm.command("sacct", "-n", "-P", "-X", "-D", "-j", job, "-o", "State").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def wait_until(what: str, ready, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    logs = "".join(p.read_text()[-2000:] for p in LAUNCHER_LOGS[-2:])
    raise AssertionError(f"{what}: not within {seconds} s\n{logs}")


def running_fold_runs(uri: str) -> list:
    return store_runs(uri, "tags.kind = 'fold' and attributes.status = 'RUNNING'")


def test_a_per_fold_array_on_slurm_trains_as_the_basic_launcher_and_fails_one_fold_loudly(
    slurm, tiny_overrides, tmp_path
):
    """The README's per-fold sweep as a SLURM array: metrics equal to the basic launcher's, each run
    tagged with its SLURM job; a fold naming no source fails its job for SLURM too (FAILED in sacct),
    and the sweep's one line names its SLURM job and log; the digest counts no fold the command did
    not ask for as missing, and evaluate.py says the sweep is incomplete by its exit status."""
    sweep = ["arch=linear", "fold.heldout=Bars,Mandel,Ghost", "trainer.max_epochs=2", "sweep_id=array"]
    proc = run(slurm, tmp_path, "train.py", "-m", *ON_SLURM, *tiny_overrides, *sweep)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(
        (x for x in proc.stderr.splitlines() if x.startswith("error: 1 of 3 jobs failed")),
        proc.stdout[-3000:] + proc.stderr[-3000:],
    )
    job = re.search(r"SLURM job (\d+_\d+), log (\S+)\)", line)
    assert "fold=Ghost: no such source in corpus 'tiny'" in line and job, line
    assert sacct(slurm, job.group(1)) == ["FAILED"] and Path(job.group(2)).is_file()
    uri = tiny_overrides[5].split("=", 1)[1]
    on_slurm = {r.data.params["fold"]: r for r in store_runs(uri, "tags.kind = 'fold'")}
    assert {f: r.info.status for f, r in on_slurm.items()} == {
        "Bars": "FINISHED",
        "Mandel": "FINISHED",
        "Ghost": "FAILED",
    }
    assert all(re.fullmatch(r"\d+_\d", r.data.tags["slurm_job"]) for r in on_slurm.values())
    assert (
        "- missing" not in proc.stdout
        and "3 runs expected: 2 finished, 1 failed, 0 still RUNNING, 0 missing" in proc.stdout
    )
    (sweep_run,) = store_runs(uri, "tags.kind = 'sweep'")
    assert sweep_run.info.status == "FAILED"
    here = [*tiny_overrides[:5], f"tracking.uri=sqlite:///{tmp_path}/local/mlflow.db", *tiny_overrides[6:]]
    basic = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", *here, *sweep[:1], "fold.heldout=Bars,Mandel", *sweep[2:],
         f"hydra.sweep.dir={tmp_path}/basic"], cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert basic.returncode == 0, basic.stderr
    for r in store_runs(f"sqlite:///{tmp_path}/local/mlflow.db", "tags.kind = 'fold'"):
        assert r.data.metrics["heldout_rmse"] == on_slurm[r.data.params["fold"]].data.metrics["heldout_rmse"]
    evaluate = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), *[o for o in tiny_overrides if o.startswith(("tracking", "corpus",
         "paths", "cache"))], "sweep_id=array", f"paths.reports_dir={tmp_path}/reports"], cwd=tmp_path,
        capture_output=True, text=True,
    )  # fmt: skip
    assert evaluate.returncode == 3, evaluate.stderr


def test_a_rerun_submits_only_the_jobs_the_sweep_lacks(slurm, tiny_overrides, tmp_path):
    sweep = [
        *ON_SLURM,
        *tiny_overrides,
        "arch=linear,mlp_small",
        "fold.heldout=all",
        "trainer.max_epochs=2",
        "sweep_id=whole",
    ]
    first = run(slurm, tmp_path, "train.py", "-m", *sweep[:-3], "arch=linear", *sweep[-3:])
    assert first.returncode == 0, first.stderr
    again = run(slurm, tmp_path, "train.py", "-m", *sweep)
    assert again.returncode == 0, again.stderr
    assert "submitting 1 of 2 jobs: the sweep finished the others with this recipe" in again.stdout
    ledger = json.loads((tmp_path / "sweep" / "jobs.json").read_text())
    assert [(j["arch"], j["done"]) for j in ledger] == [("linear", True), ("mlp_small", False)]
    assert ledger[1]["slurm_job"] and Path(ledger[1]["log"]).is_file()
    uri = tiny_overrides[5].split("=", 1)[1]
    assert len(store_runs(uri, "tags.kind = 'fold'")) == 4 and "4 runs expected: 4 finished" in again.stdout


def test_a_sharded_cache_array_equals_a_plain_build(slurm, tiny_corpus, tmp_path):
    corpus = ["corpus=directory", f"corpus.root={tiny_corpus}", "corpus.name=tiny", "cache.models=[vmaf_v0.6.1]"]
    sharded = run(slurm, tmp_path, "build_cache.py", "-m", *ON_SLURM, *corpus, f"paths.data_dir={tmp_path}/a",
                  "cache.num_shards=2", "cache.shard=0,1")  # fmt: skip
    assert sharded.returncode == 0, sharded.stderr
    plain = subprocess.run(
        [sys.executable, str(ROOT / "build_cache.py"), *corpus, f"paths.data_dir={tmp_path}/b", f"hydra.run.dir={tmp_path}/p"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    a, b = (np.load(tmp_path / d / "cache" / "tiny" / "frames.npz") for d in ("a", "b"))
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_a_sweep_against_the_team_server_leaves_nothing_local(slurm, tiny_overrides, tmp_path):
    from servers import team_server

    with team_server(HOST_ADDRESS) as (uri, artifacts, _):
        remote = [o if not o.startswith("tracking.uri=") else f"tracking.uri={uri}" for o in tiny_overrides]
        proc = run(slurm, tmp_path, "train.py", "-m", *ON_SLURM, *remote, "arch=linear", "fold.heldout=all",
                   "trainer.max_epochs=2", "sweep_id=team")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        runs = store_runs(uri)
        assert sorted(r.data.tags["kind"] for r in runs) == ["fold", "fold", "loso", "sweep"]
        assert all(r.info.status == "FINISHED" for r in runs) and any(artifacts.rglob("digest.md"))
    assert not (tmp_path / "mlruns").exists() and not list(tmp_path.rglob("mlflow.db"))


def long_and_short(tiny_overrides: list[str], sweep: str, seconds: int = 600) -> list[str]:
    """Two one-fold jobs: Bars ends in seconds; Mandel trains for ``seconds`` (Lightning's
    ``max_time``) unless something stops it first. Bars' recipe is the same whatever ``seconds``."""
    limit = f"00:00:{seconds // 60:02d}:{seconds % 60:02d}"
    return [*ON_SLURM, *tiny_overrides, "arch=linear", "fold.heldout=Bars,Mandel", "+epochs_of={Bars:2,Mandel:100000}",
            f"+time_of={{Mandel:'{limit}'}}", "trainer.max_epochs='${oc.select:epochs_of.${fold.heldout},2}'",
            "+trainer.max_time='${oc.select:time_of.${fold.heldout},null}'", f"sweep_id={sweep}"]  # fmt: skip


def long_run(uri: str):
    """The long job's run, once it trains."""
    wait_until(
        "the long job training", lambda: store_runs(uri, "params.fold = 'Mandel' and attributes.status = 'RUNNING'")
    )
    return store_runs(uri, "params.fold = 'Mandel' and attributes.status = 'RUNNING'")[0]


def test_a_cancelled_job_ends_the_sweep_with_its_line_a_digest_and_a_failed_sweep_run(slurm, tiny_overrides, tmp_path):
    uri = tiny_overrides[5].split("=", 1)[1]
    launcher = start(slurm, tmp_path, "train.py", "-m", *long_and_short(tiny_overrides, "cancel"))
    cancelled = long_run(uri)
    slurm.command("scancel", cancelled.data.tags["slurm_job"])
    status, log = finished(launcher)
    assert status == 1, log
    line = next(x for x in log.splitlines() if x.startswith("error: 1 of 2 jobs failed"))
    assert re.search(rf"CANCELLED( by \d+)? \(SLURM job {cancelled.data.tags['slurm_job']}, log ", line), line
    assert "fold.heldout=Mandel" in line
    assert "Traceback" not in log and (tmp_path / "sweep").is_dir()
    assert (
        MlflowClient(uri).get_run(cancelled.info.run_id).info.status == "KILLED"
    )  # scancel's SIGTERM, seen by the job
    (sweep_run,) = store_runs(uri, "tags.kind = 'sweep'")
    assert sweep_run.info.status == "FAILED" and "digest.md" in {
        a.path for a in MlflowClient(uri).list_artifacts(sweep_run.info.run_id)
    }


@pytest.mark.parametrize("requeue", [False, True])
def test_a_lost_node(requeue, slurm, tiny_overrides, tmp_path):
    """Every process of the node running the long job killed at once. Without requeue: the sweep
    ends with the job's NODE_FAIL, its run is reported dead (not "still running") and fail_running
    marks it FAILED. With requeue: the job runs again on the other node and the sweep succeeds; the
    dead attempt's run is FAILED, not RUNNING for ever."""
    uri = tiny_overrides[5].split("=", 1)[1]
    seconds = 15 if requeue else 600  # requeued, the job must end on its own
    extra = ["+hydra.launcher.additional_parameters.requeue=true"] if requeue else []
    launcher = start(
        slurm, tmp_path, "train.py", "-m", *long_and_short(tiny_overrides, f"lost{requeue}", seconds), *extra
    )
    node = None
    try:
        attempt = long_run(uri)
        node = slurm.command("squeue", "-h", "-j", attempt.data.tags["slurm_job"], "-o", "%N").stdout.strip()
        assert node in NODES
        slurm.crash_node(node)
        status, log = finished(launcher, timeout=400)
    finally:
        if node is not None:
            slurm.start_node(node)
    dead = MlflowClient(uri).get_run(attempt.info.run_id)
    if requeue:
        assert status == 0, log
        assert dead.info.status == "FAILED" and "was requeued" in dead.data.tags["error"]
        assert sacct(slurm, attempt.data.tags["slurm_job"])[-1] == "COMPLETED"
        return
    assert status == 1 and "NODE_FAIL (SLURM job" in log, log
    assert dead.info.status == "RUNNING" and f"SLURM job {attempt.data.tags['slurm_job']} ended NODE_FAIL" in log
    evaluate = [sys.executable, str(ROOT / "evaluate.py"), *[o for o in tiny_overrides if o.startswith(("tracking",
                "corpus", "paths", "cache"))], f"sweep_id=lost{requeue}", f"paths.reports_dir={tmp_path}/reports"]  # fmt: skip
    marked = subprocess.run(
        [*evaluate, "fail_running=true"], cwd=tmp_path, env=slurm.env, capture_output=True, text=True
    )
    assert marked.returncode == 3 and MlflowClient(uri).get_run(attempt.info.run_id).info.status == "FAILED"


def test_pending_jobs_are_pending_and_a_stopped_launcher_cancels_them(slurm, tiny_overrides, tmp_path):
    """Four long jobs on two one-CPU nodes: two run, two wait. evaluate.py calls the waiting ones
    pending, not "never started", and the running ones alive (none finished: no digest yet); SIGTERM to the launching process
    cancels all four (pending ones included) and it exits 130."""
    uri = tiny_overrides[5].split("=", 1)[1]
    sweep = [*ON_SLURM, *tiny_overrides, "arch=linear,mlp_small", "fold.heldout=Bars,Mandel", "trainer.max_epochs=100000",
             "+trainer.max_time=00:00:10:00", "sweep_id=pending"]  # fmt: skip
    launcher = start(slurm, tmp_path, "train.py", "-m", *sweep)
    wait_until("two jobs training", lambda: len(running_fold_runs(uri)) == 2)
    store = [o for o in tiny_overrides if o.startswith(("tracking", "corpus", "paths", "cache"))]
    evaluate = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), *store, "sweep_id=pending", f"paths.reports_dir={tmp_path}/reports"],
        cwd=tmp_path, env=slurm.env, capture_output=True, text=True,
    )  # fmt: skip
    assert evaluate.returncode == 1 and "none of its 2 runs finished" in evaluate.stderr, evaluate.stderr
    assert (
        len(re.findall(r"- missing: \S+ fold \S+ \(SLURM job \d+_\d is PENDING: not started yet\)", evaluate.stdout))
        == 2
    )
    assert len(re.findall(r"- RUNNING: .*SLURM job \d+_\d is RUNNING", evaluate.stdout)) == 2, evaluate.stdout
    launcher.send_signal(signal.SIGTERM)
    status, log = finished(launcher)
    assert status == 130 and "4 unfinished job(s) cancelled" in log, log
    wait_until("every job over", lambda: not slurm.command("squeue", "-h").stdout.strip(), 60)


def test_a_refused_submission_is_one_line_and_a_failed_sweep_run(slurm, tiny_overrides, tmp_path):
    proc = run(slurm, tmp_path, "train.py", "-m", *ON_SLURM, "hydra.launcher.cpus_per_task=2", *tiny_overrides,
               "arch=linear", "fold.heldout=Bars,Mandel", "sweep_id=refused")  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("error: 2 of 2 jobs failed"))
    assert line.count("not submitted: sbatch: error: CPU count per node can not be satisfied") == 2
    (sweep_run,) = store_runs(tiny_overrides[5].split("=", 1)[1], "tags.kind = 'sweep'")
    assert sweep_run.info.status == "FAILED"


def test_the_launcher_stopped_cancels_its_jobs_and_a_rerun_submits_only_those(slurm, tiny_overrides, tmp_path):
    uri = tiny_overrides[5].split("=", 1)[1]
    launcher = start(slurm, tmp_path, "train.py", "-m", *long_and_short(tiny_overrides, "stopped"))
    long_run(uri)
    wait_until("the short job done", lambda: store_runs(uri, "params.fold = 'Bars' and attributes.status = 'FINISHED'"))
    # Its run ends before its SLURM task does (submitit writes the result after): a SIGTERM between
    # the two rightly cancels that task too, so wait until SLURM lists the long one alone.
    wait_until(
        "the short job's SLURM task over", lambda: len(slurm.command("squeue", "-h").stdout.strip().splitlines()) == 1
    )
    launcher.send_signal(signal.SIGTERM)
    status, log = finished(launcher)
    assert status == 130 and "the launching process was interrupted: 1 unfinished job(s) cancelled" in log, log
    wait_until("the job's cancellation", lambda: not running_fold_runs(uri), 60)
    again = run(slurm, tmp_path, "train.py", "-m", *long_and_short(tiny_overrides, "stopped", 3))
    assert again.returncode == 0 and "submitting 1 of 2 jobs" in again.stdout, again.stdout + again.stderr


def test_the_launcher_killed_leaves_its_jobs_and_a_rerun_takes_their_results(slurm, tiny_overrides, tmp_path):
    uri = tiny_overrides[5].split("=", 1)[1]
    sweep = long_and_short(tiny_overrides, "killed", 10)
    launcher = start(slurm, tmp_path, "train.py", "-m", *sweep)
    long_run(uri)
    os.kill(launcher.pid, signal.SIGKILL)  # a lost login session: nothing can be cleaned up
    launcher.wait()
    wait_until(
        "both jobs done unwatched",
        lambda: len(store_runs(uri, "attributes.status = 'FINISHED' and tags.kind = 'fold'")) == 2,
    )
    again = run(slurm, tmp_path, "train.py", "-m", *sweep)
    assert again.returncode == 0, again.stderr
    assert "submitting 0 of 2 jobs" in again.stdout and "2 runs expected: 2 finished" in again.stdout
