"""A sweep's life: its plan and ledger, what its runs say of it (finished, failed, alive or dead,
missing), the verdict on each job, and its end under every launcher; with the units underneath
(the batches a job trains on, SLURM's answers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import LAUNCHERS, experiment_runs, store_runs
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from mlflow import entities
from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.runs import HELDOUT, Param, Tag
from tinyvmaf.slurm import JobState, job_states
from tinyvmaf.sweep import verdicts
from tinyvmaf.sweep.callbacks import sweep_jobs
from tinyvmaf.sweep.ledger import LEDGER, PlannedJob, ledger_of_run, read_ledger_file, record_jobs
from tinyvmaf.sweep.status import finish_sweep_run, sweep_status
from tinyvmaf.tracking import Tracking, find_sweep_run, open_sweep_run
from tinyvmaf.training import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_a_failed_fold_fails_the_sweep_under_every_launcher(launcher, tiny_overrides, run_entry):
    proc = run_entry(
        "train.py",
        "-m",
        *tiny_overrides,
        *LAUNCHERS[launcher],
        "arch=linear",
        "fold.heldout=Bars,Ghost",
        "trainer.max_epochs=1",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: 1 of 2 jobs failed: " in proc.stderr and "fold=Ghost: no such source in corpus 'tiny'" in proc.stderr
    statuses = sorted(
        (r.data.params["fold"], r.info.status) for r in experiment_runs(tiny_overrides[5].split("=", 1)[1])
    )
    assert statuses == [("Bars", "FINISHED"), ("Ghost", "FAILED")]


def test_a_sweep_that_launches_no_job_fails(tiny_overrides, run_entry):
    proc = run_entry("train.py", "-m", *tiny_overrides, "fold=glob(NoSuchSource*)")
    assert proc.returncode == 1 and "error: the sweep launched no job" in proc.stderr


def test_a_sweep_over_two_teachers_is_refused_before_any_job(tiny_overrides, run_entry, tmp_path):
    """Runs are keyed by (arch, fold) in a sweep: two teachers' stand-ins would count as one run
    twice in its digest and resumption, so the plan refuses the sweep in one line."""
    proc = run_entry("train.py", "-m", *tiny_overrides, "teacher=vmaf_v0.6.1,vmaf_v0.6.1neg", "arch=linear",
                     "fold.heldout=Bars", "sweep_id=two")  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().endswith(
        "error: teacher: this sweep trains stand-ins of vmaf_v0.6.1, vmaf_v0.6.1neg; a sweep's digest, resumption and "
        "evidence are of one teacher: sweep each under its own sweep_id (python train.py -m teacher=... sweep_id=...)"
    )
    assert not list(tmp_path.rglob("FAILED")) and "linear fold=Bars" not in proc.stdout


@pytest.mark.slow
def test_a_cold_parallel_sweep_builds_the_cache_once_before_any_job(tiny_overrides, run_entry, tmp_path):
    proc = run_entry(
        "train.py",
        "-m",
        *tiny_overrides,
        *LAUNCHERS["joblib"],
        "arch=linear,mlp_small",
        "fold.heldout=Bars,Mandel",
        "trainer.max_epochs=1",
    )
    assert proc.returncode == 0, proc.stderr
    assert "teacher cache of corpus 'tiny': 6 clip(s) computed, 0 reused" in proc.stdout
    entries = list((tmp_path / "data" / "cache" / "tiny" / "clips").glob("*.json"))
    runs = experiment_runs(tiny_overrides[5].split("=", 1)[1])
    assert len(entries) == 6 and len(runs) == 4
    # every entry was written once, before the first job started: no worker ran libvmaf
    assert max(e.stat().st_mtime for e in entries) * 1000 < min(r.info.start_time for r in runs)


@pytest.mark.slow
def test_a_parallel_sweep_against_a_team_server_on_postgresql(mlflow_server, tiny_overrides, run_entry, tmp_path):
    uri, server_artifacts, _ = mlflow_server
    overrides = [o for o in tiny_overrides if not o.startswith("tracking.")]
    proc = run_entry(
        "train.py", "-m", *overrides, f"tracking.uri={uri}", "tracking.experiment=team-sweep", *LAUNCHERS["joblib"],
        "arch=linear,mlp_small", "fold.heldout=Bars,Mandel", "sweep_id=pg",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    runs = experiment_runs(uri, "team-sweep")
    assert sorted((r.data.params["arch"], r.data.params["fold"], r.info.status) for r in runs) == [
        ("linear", "Bars", "FINISHED"), ("linear", "Mandel", "FINISHED"),
        ("mlp_small", "Bars", "FINISHED"), ("mlp_small", "Mandel", "FINISHED"),
    ]  # fmt: skip
    client = MlflowClient(uri)
    for r in runs:
        assert {"heldout_rmse", "heldout_plcc", "heldout_srocc", "train_loss"} <= set(r.data.metrics)
        assert len(client.get_metric_history(r.info.run_id, "heldout_rmse")) == 3
        assert r.info.artifact_uri.startswith("mlflow-artifacts:")
        assert {a.path for a in client.list_artifacts(r.info.run_id)} == {"config.yaml", "model.pt", "heldout.npz"}
    # on the server's disk, in this experiment's folder (other tests share the session's server)...
    on_server = server_artifacts / client.get_experiment_by_name("team-sweep").experiment_id
    assert len(list(on_server.rglob("model.pt"))) == 4
    assert len(list(on_server.rglob("MLmodel"))) == 4  # (the fold runs' logged ONNX models)
    assert not (tmp_path / "mlruns").exists()  # ...and nothing on the client's
    # one run for the sweep, opened by the launching process, the joblib workers' runs under it
    (sweep,) = experiment_runs(uri, "team-sweep", kinds=("sweep",))
    assert sweep.info.run_name == "pg" and sweep.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {sweep.info.run_id}
    rmse = [r.data.metrics["heldout_rmse"] for r in runs if r.data.params["arch"] == "linear"]
    assert sweep.data.metrics["linear/rmse_mean"] == pytest.approx(sum(rmse) / 2)
    assert {a.path for a in client.list_artifacts(sweep.info.run_id)} >= {"digest.md", "scatter.png"}


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
    while time.monotonic() < deadline and not store_runs(
        f"sqlite:///{tmp_path}/mlruns/mlflow.db", "tags.kind = 'fold'"
    ):
        time.sleep(0.5)
    time.sleep(2)  # inside Trainer.fit
    os.kill(proc.pid, stop)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and stderr.strip().endswith("error: interrupted"), stderr[-2000:]
    (run,) = store_runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "tags.kind = 'fold'")
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


def test_a_rerun_sweep_trains_only_what_it_lacks(tiny_overrides, compose, capsys):
    base = [*tiny_overrides, "arch=linear", "sweep_id=S"]
    first = train(compose("train", *base, "fold.heldout=Bars"))
    again = train(compose("train", *base, "fold.heldout=Bars"))
    train(compose("train", *base, "fold.heldout=Mandel"))
    assert again == first and "linear fold=Bars: finished earlier in sweep S" in capsys.readouterr().out
    cfg = compose("train", *base)
    client = MlflowClient(cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert sorted(r.data.params["fold"] for r in runs) == ["Bars", "Mandel"]
    with pytest.raises(TinyVmafError, match="sweep_id=S: linear fold=Bars already finished there with another recipe"):
        train(compose("train", *base, "fold.heldout=Bars", "model.optimizer.lr=1e-3"))


def test_a_rerun_after_the_corpus_changed_refuses_to_mix_its_folds(tiny_overrides, tiny_corpus, compose, make_clip):
    """Same sweep, same clip names, other content: a fold finished on the old clips is not kept
    beside folds trained on the new ones."""
    base = [*tiny_overrides, "arch=linear", "sweep_id=S"]
    train(compose("train", *base, "fold.heldout=Bars"))
    make_clip(
        tiny_corpus / "dis" / "Bars__crf45.mp4", "testsrc2", codec=["-c:v", "libx264", "-crf", "30", "-threads", "1"]
    )
    with pytest.raises(
        TinyVmafError,
        match=r"sweep_id=S: linear fold=Bars already finished there on other data \(corpus cache [0-9a-f]{12}, now [0-9a-f]{12}: its clips changed\)",
    ):
        train(compose("train", *base, "fold.heldout=Bars"))
    with pytest.raises(TinyVmafError, match="linear fold=Bars already finished there on other data"):
        train(compose("train", *base, "fold.heldout=all"))


def test_the_digest_states_missing_killed_and_duplicate_runs(tiny_overrides, compose, run_entry, tmp_path):
    base = [*tiny_overrides, "arch=linear", "sweep_id=K"]
    train(compose("train", *base, "fold.heldout=Bars"))
    cfg = compose("train", *base)
    client = MlflowClient(cfg.tracking.uri)
    experiment_id = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    finished = client.search_runs([experiment_id])[0]
    # a copy of the finished run (an older store, a manual rerun): a duplicate of (linear, Bars)
    twin = client.create_run(experiment_id, tags=finished.data.tags)
    for k, v in finished.data.params.items():
        client.log_param(twin.info.run_id, k, v)
    for k, v in finished.data.metrics.items():
        client.log_metric(twin.info.run_id, k, v + 1.0)
    client.set_terminated(twin.info.run_id)
    # a run whose process was killed with -9: RUNNING for ever
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = client.create_run(experiment_id, tags={**finished.data.tags, "pid": str(dead.pid)})
    for k, v in {**finished.data.params, "fold": "Mandel"}.items():
        client.log_param(killed.info.run_id, k, v)
    status = sweep_status(client.search_runs([experiment_id]))
    assert (status.expected, len(status.finished), len(status.running), len(status.missing)) == (2, 1, 1, 0)
    assert status.finished[("linear", "Bars")].info.run_id == twin.info.run_id
    assert "is gone (killed)" in status.running[0]["process"]
    evaluate = [
        "evaluate.py",
        *[o for o in tiny_overrides if o.startswith(("tracking.", "corpus", "paths.", "cache."))],
        "sweep_id=K",
        f"paths.reports_dir={tmp_path}/reports",
    ]
    proc = run_entry(*evaluate)
    assert proc.returncode == 3, proc.stderr  # written, and incomplete
    assert (
        "1 finished, 0 failed, 1 still RUNNING, 0 missing. **Incomplete: the means above cover the finished folds only.**"
        in proc.stdout
    )
    assert "duplicates: linear fold Bars finished 2 times; only the latest" in proc.stdout
    digest = json.loads((tmp_path / "reports" / "K" / "digest.json").read_text())
    assert [f["rmse"] for f in digest["archs"]["linear"]["folds"]] == [finished.data.metrics["heldout_rmse"] + 1.0]
    proc = run_entry(*evaluate, "fail_running=true")
    assert "1 finished, 1 failed, 0 still RUNNING" in proc.stdout
    assert [r.info.status for r in client.search_runs([experiment_id], "params.fold = 'Mandel'")] == ["FAILED"]


def fake_slurm(folder: Path, squeue: str | None, sacct: str | None, status: int = 0) -> dict[str, str]:
    """A PATH holding ``squeue`` and ``sacct`` that print the given output (absent when None)."""
    folder.mkdir()
    for name, out in (("squeue", squeue), ("sacct", sacct)):
        if out is not None:
            script = folder / name
            script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{out}EOF\nexit {status}\n")
            script.chmod(0o755)
    return {"PATH": f"{folder}:/usr/bin:/bin"}


def test_job_states_read_the_queue_then_accounting_and_count_requeued_attempts(tmp_path, monkeypatch):
    squeue = "24_3|PENDING\n24_4|RUNNING\n"
    sacct = "24_[3-4]|PENDING\n25|NODE_FAIL\n25|RUNNING\n26|CANCELLED by 0\n"
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin", squeue, sacct)["PATH"])
    states = job_states(["24_3", "24_4", "25", "26", "27"])
    assert states == {
        "24_3": JobState("PENDING", 1),
        "24_4": JobState("RUNNING", 1),
        "25": JobState("RUNNING", 2),  # its node died, SLURM requeued it: the second attempt runs
        "26": JobState("CANCELLED", 1),
    }
    assert states["25"].live and not states["26"].live and "27" not in states


@pytest.mark.parametrize("present, status", [(False, 0), (True, 1)], ids=["no SLURM here", "SLURM not answering"])
def test_job_states_are_unknown_where_slurm_cannot_be_asked(present, status, tmp_path, monkeypatch):
    out = "1|RUNNING\n" if present else None
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin", out, out, status)["PATH"])
    assert job_states(["1"]) is None
    assert job_states([]) == {}


def test_a_verdict_is_one_line_without_passwords_and_a_rerun_clears_it(tmp_path):
    job = tmp_path / "sweep" / "3"
    verdicts.mark_failed_job(job, ["arch=linear", "tracking.uri=http://me:secret@db"], "boom\n  at line 2")
    line = (job / verdicts.FAILED_MARKER).read_text()
    assert line == "arch=linear tracking.uri=http://me:***@db: boom at line 2\n"
    assert verdicts.failure_of(job) == "boom at line 2"
    assert verdicts.failed_jobs(verdicts.job_folders(tmp_path / "sweep")) == [line.strip()]
    verdicts.mark_interrupted(tmp_path / "sweep", "the launching process was interrupted")
    assert verdicts.interruption(tmp_path / "sweep") == "the launching process was interrupted"
    verdicts.clear_verdicts(tmp_path / "sweep")
    assert verdicts.failure_of(job) is None and verdicts.interruption(tmp_path / "sweep") is None


def test_the_plan_is_the_basic_sweepers_product_of_the_command_line(compose, tmp_path):
    command = ["arch=mlp_small,linear", "fold=Bikes,Life", "seed=1", "seed=2,3"]
    cfg = compose("train")
    with open_dict(cfg):
        cfg.hydra = {"overrides": {"task": command}}
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        jobs = sweep_jobs(cfg)
    assert len(jobs) == 8  # a later override of a key replaces the earlier one, as Hydra's basic sweeper does
    assert jobs[0] == ["arch=mlp_small", "fold=Bikes", "seed=2"] and jobs[-1] == ["arch=linear", "fold=Life", "seed=3"]


def test_two_sweeps_sharing_a_folder_keep_their_ledgers_apart(tiny_overrides, compose, tmp_path):
    """hydra.sweep.dir shared by sweeps A and B: B's ledger (on its run, what its digest reads)
    holds only B's job; the folder's jobs.json keeps both, nothing of A's lost."""
    folder = tmp_path / "shared"
    for sweep, arch in (("A", "linear"), ("B", "mlp_small")):
        cfg = compose("train", *tiny_overrides, f"sweep_id={sweep}")
        with open_dict(cfg):
            cfg.hydra = {"sweep": {"dir": str(folder)}}
        open_sweep_run(instantiate(cfg.tracking), sweep, {})
        record_jobs(cfg, [PlannedJob(0, [f"arch={arch}"], arch, ["Bars"], sweep_id=sweep)])
    client, experiment_id = instantiate(cfg.tracking).experiment()
    for sweep, arch in (("A", "linear"), ("B", "mlp_small")):
        run = find_sweep_run(client, experiment_id, sweep)
        assert [j["arch"] for j in ledger_of_run(client, run.info.run_id)] == [arch]
    assert [(j["sweep_id"], j["arch"]) for j in read_ledger_file(folder / LEDGER)] == [
        ("A", "linear"),
        ("B", "mlp_small"),
    ]


def test_a_ledger_that_is_not_one_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "jobs.json"
    path.write_text('[{"index": 0, "overrides": "arch=linear"}]')
    with pytest.raises(TinyVmafError, match=r"jobs\.json: not a sweep's job ledger"):
        read_ledger_file(path)
    assert read_ledger_file(tmp_path / "absent.json") == []


# --- units: what a sweep's runs say of it -------------------------------------------------------


def fold_run(arch: str, fold: str, hidden: str = "[16, 8]", rmse: float = 1.0, start: int = 0) -> Run:
    """A finished fold run as the store returns it."""
    info = RunInfo(f"{arch}-{fold}-{start}", "1", "", "FINISHED", start, start + 1, "active")
    metrics = {HELDOUT["rmse"]: rmse, HELDOUT["plcc"]: 0.99, HELDOUT["srocc"]: 0.98}
    params = {Param.ARCH: arch, Param.FOLD: fold, Param.HIDDEN: hidden}
    data = RunData(
        metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
        params=[entities.Param(k, v) for k, v in params.items()],
        tags=[RunTag(Tag.CORPUS_SOURCES, json.dumps(["A", "B"]))],
    )
    return Run(info, data)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_finished_run_with_non_finite_metrics_is_a_failed_run_not_a_number_to_average(value):
    status = sweep_status([fold_run("mlp_small", "A"), fold_run("mlp_small", "B", rmse=value)])
    assert list(status.finished) == [("mlp_small", "A")] and not status.complete
    (failed,) = status.failed
    assert (failed["fold"], failed["status"]) == ("B", "FINISHED")
    assert failed["error"] == f"held-out metrics missing or not finite ({HELDOUT['rmse']}={value})"


def test_runs_of_one_arch_with_different_widths_are_not_averaged_or_counted():
    runs = [
        fold_run("mlp_small", "A", "[4]"), fold_run("mlp_small", "B", "[64, 32]"),
        fold_run("linear", "A", "[]"), fold_run("linear", "B", "[]"),
    ]  # fmt: skip
    status = sweep_status(runs)
    assert status.mixed == [{"arch": "mlp_small", "widths": ["[4]", "[64, 32]"]}]
    assert sorted(status.finished) == [("linear", "A"), ("linear", "B")] and not status.complete


def test_a_digest_never_fails_a_sweep_whose_launcher_is_alive_and_drops_its_own_old_verdict(tmp_path):
    tracking = Tracking(f"sqlite:///{tmp_path}/mlflow.db", "tinyvmaf-loso")
    client, _ = tracking.experiment()
    run_id = open_sweep_run(tracking, "live", {})
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    client.set_tag(run_id, Tag.LAUNCHER_HOST, os.uname().nodename)
    client.set_tag(run_id, Tag.LAUNCHER_PID, str(launcher.pid))
    between_jobs = sweep_status([fold_run("linear", "A")])  # B not started yet
    try:
        finish_sweep_run(client, client.get_run(run_id), between_jobs)
        run = client.get_run(run_id)
        assert run.info.status == "RUNNING" and Tag.ERROR not in run.data.tags
    finally:
        launcher.kill()
        launcher.wait()
    finish_sweep_run(client, client.get_run(run_id), between_jobs)  # its launcher gone: the sweep is over
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags[Tag.ERROR] == "incomplete: 0 failed, 1 missing of 2"
    finish_sweep_run(client, run, sweep_status([fold_run("linear", "A"), fold_run("linear", "B")]))
    run = client.get_run(run_id)  # a rerun finished it: FINISHED, and the old verdict is gone
    assert run.info.status == "FINISHED" and Tag.ERROR not in run.data.tags
