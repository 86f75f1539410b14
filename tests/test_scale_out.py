"""Past one process: sweeps under Hydra's joblib and submitit launchers, the teacher cache built
once before parallel jobs, and a team MLflow server on PostgreSQL, each with real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.utils import get_object
from mlflow.tracking import MlflowClient

from tinyvmaf.cache import TeacherCache, shard_of
from tinyvmaf.corpus.directory import DirectoryCorpus
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.tracking import Tracking
from tinyvmaf.training import train

LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=tinyvmaf_submitit_local", "hydra.launcher.timeout_min=10"],
}


def experiment_runs(uri: str, name: str = "tinyvmaf-loso", kinds: tuple[str, ...] = ("fold", "loso")) -> list:
    """The experiment's runs of these kinds (fold runs and whole-configuration runs by default; not the sweep run)."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("kind") in kinds]


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
def test_build_cache_multirun_builds_every_corpus(tiny_corpus, make_clip, run_entry, tmp_path):
    other = tmp_path / "other"
    make_clip(other / "ref" / "Solo.y4m", "testsrc2")
    make_clip(other / "dis" / "Solo__noisy.mp4", "testsrc2", vf="noise=alls=20")
    proc = run_entry(
        "build_cache.py",
        "-m",
        "corpus=directory",
        f"corpus.root={tiny_corpus},{other}",
        f"paths.data_dir={tmp_path}/data",
        *LAUNCHERS["joblib"],
    )
    assert proc.returncode == 0, proc.stderr
    assert {p.parent.name for p in (tmp_path / "data" / "cache").glob("*/summary.json")} == {"corpus", "other"}
    (other / "dis" / "Solo__noisy.mp4").write_bytes(b"broken")
    proc = run_entry(
        "build_cache.py",
        "-m",
        "corpus=directory",
        f"corpus.root={tiny_corpus},{other}",
        f"paths.data_dir={tmp_path}/data",
    )
    assert proc.returncode == 1 and "1 of 2 jobs failed" in proc.stderr and "exit status 1" in proc.stderr


def test_an_unreachable_server_is_one_line_within_seconds(tiny_overrides, run_entry):
    start = time.monotonic()
    proc = run_entry(
        "train.py", *tiny_overrides, "tracking.uri=http://127.0.0.1:9"
    )  # the discard port: nobody serves it
    assert time.monotonic() - start < 30
    assert (
        proc.returncode == 1
        and proc.stderr.strip()
        == "error: tracking.uri=http://127.0.0.1:9: no MLflow server answers there (ConnectionError)"
    )


CREATE = """
import sys
from tinyvmaf.tracking import Tracking
print(Tracking(sys.argv[1], sys.argv[2]).experiment()[1])
"""


def create_at_once(uri: str, name: str, n: int = 6) -> set[str]:
    procs = [
        subprocess.Popen([sys.executable, "-c", CREATE, uri, name], stdout=subprocess.PIPE, text=True) for _ in range(n)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    return set(outputs)


def test_many_processes_create_the_experiment_at_once_on_sqlite(tmp_path):
    assert len(create_at_once(f"sqlite:///{tmp_path}/mlflow.db", "race")) == 1


@pytest.mark.slow
def test_many_processes_create_the_experiment_at_once_on_a_server(mlflow_server, tmp_path):
    uri, _, _ = mlflow_server
    assert len(create_at_once(uri, "race", n=8)) == 1


LOG_DATASET = """
import sys
from tinyvmaf.tracking import Tracking, log_dataset
client, experiment_id = Tracking(sys.argv[1], "datasets").experiment()
run = client.create_run(experiment_id)
log_dataset(client, run.info.run_id, "tiny", "0123456789ab", "/data/tiny", "training")
print(len(client.get_run(run.info.run_id).inputs.dataset_inputs))
"""


@pytest.mark.slow
def test_many_runs_log_the_same_new_dataset_at_once_on_a_server(mlflow_server):
    uri, _, _ = mlflow_server
    Tracking(uri, "datasets").experiment()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOG_DATASET, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-500:] for _, err in outputs]
    assert [out.strip() for out, _ in outputs] == ["1"] * 8


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
    assert len(list(server_artifacts.rglob("model.pt"))) == 4  # on the server's disk...
    assert len(list(server_artifacts.rglob("MLmodel"))) == 4  # (the fold runs' logged ONNX models)
    assert not (tmp_path / "mlruns").exists()  # ...and nothing on the client's
    # one run for the sweep, opened by the launching process, the joblib workers' runs under it
    (sweep,) = experiment_runs(uri, "team-sweep", kinds=("sweep",))
    assert sweep.info.run_name == "pg" and sweep.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {sweep.info.run_id}
    rmse = [r.data.metrics["heldout_rmse"] for r in runs if r.data.params["arch"] == "linear"]
    assert sweep.data.metrics["linear/rmse_mean"] == pytest.approx(sum(rmse) / 2)
    assert {a.path for a in client.list_artifacts(sweep.info.run_id)} >= {"digest.md", "scatter.png"}


@pytest.mark.slow
def test_whole_configuration_jobs_one_fold_after_another_equal_the_per_fold_runs(tiny_overrides, run_entry, compose):
    proc = run_entry(
        "train.py",
        "-m",
        *tiny_overrides,
        *LAUNCHERS["joblib"],
        "arch=linear,mlp_small",
        "fold.heldout=all",
        "stack_folds=false",  # one fold after another: bit for bit the separate runs (stacked: tests/test_stacked.py)
        "sweep_id=whole",
    )
    assert proc.returncode == 0, proc.stderr
    uri = tiny_overrides[5].split("=", 1)[1]
    runs = experiment_runs(uri)
    parents = {r.data.params["arch"]: r for r in runs if r.data.params["fold"] == "all"}
    children = [r for r in runs if r.data.params["fold"] != "all"]
    assert sorted(parents) == ["linear", "mlp_small"] and len(children) == 4
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[child.data.params["arch"]].info.run_id
        alone = train(
            compose(
                "train",
                *tiny_overrides,
                f"arch={child.data.params['arch']}",
                f"fold.heldout={child.data.params['fold']}",
                "sweep_id=alone",
            )
        )
        for name in ("heldout_rmse", "heldout_plcc", "heldout_srocc", "train_loss"):
            assert abs(child.data.metrics[name] - alone[name]) <= 1e-6
    for arch, parent in parents.items():
        rmse = [c.data.metrics["heldout_rmse"] for c in children if c.data.params["arch"] == arch]
        assert parent.data.metrics["loso_rmse_mean"] == pytest.approx(sum(rmse) / 2) and parent.data.metrics[
            "loso_rmse_worst"
        ] == max(rmse)


@pytest.mark.slow
def test_a_sharded_build_over_two_jobs_equals_a_single_build(tiny_corpus, run_entry, tmp_path):
    corpus = ["corpus=directory", f"corpus.root={tiny_corpus}", "cache.models=[vmaf_v0.6.1]"]
    single = run_entry("build_cache.py", *corpus, f"paths.data_dir={tmp_path}/single")
    assert single.returncode == 0, single.stderr
    sharded = run_entry(
        "build_cache.py",
        "-m",
        *corpus,
        f"paths.data_dir={tmp_path}/sharded",
        "cache.num_shards=2",
        "cache.shard=0,1",
        *LAUNCHERS["joblib"],
    )
    assert sharded.returncode == 0, sharded.stderr
    assert "consolidated 6 clip(s) of corpus 'corpus'" in sharded.stdout
    with (
        np.load(tmp_path / "single" / "cache" / "corpus" / "frames.npz") as a,
        np.load(tmp_path / "sharded" / "cache" / "corpus" / "frames.npz") as b,
    ):
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    # an entry from a machine with another libvmaf: the consolidation refuses the mixed cache
    entry = next((tmp_path / "sharded" / "cache" / "corpus" / "clips").glob("*.json"))
    document = json.loads(entry.read_text())
    entry.write_text(json.dumps({**document, "libvmaf_version": "0.0.0-other", "key": "0" * 64}))
    proc = run_entry("build_cache.py", *corpus, f"paths.data_dir={tmp_path}/sharded", "compute=false")
    assert proc.returncode == 1 and "computed with libvmaf 0.0.0-other, but this machine has" in proc.stderr


def test_shards_split_the_corpus_by_cost(tiny_corpus, make_clip):
    make_clip(tiny_corpus / "ref" / "Long.y4m", "testsrc2", frames=40)
    make_clip(tiny_corpus / "dis" / "Long__a.mp4", "testsrc2", frames=40)
    pairs = DirectoryCorpus(tiny_corpus).pairs()
    shards = [shard_of(pairs, i, 2) for i in range(2)]
    assert sorted(p.asset for s in shards for p in s) == sorted(p.asset for p in pairs)  # each pair in one shard
    # longest first to the lightest shard: 40 frames + 8 against 5 x 8, not 3 clips against 4
    assert "Long__a" in {p.asset for p in shards[0]} and (len(shards[0]), len(shards[1])) == (2, 5)
    with pytest.raises(TinyVmafError, match=r"cache.shard=2: must be an integer in \[0, 2\)"):
        TeacherCache("/tmp/x", None, ["vmaf_v0.6.1"], num_shards=2, shard=2)


def test_the_slurm_example_composes_onto_the_submitit_plugin(repo):
    with initialize_config_dir(config_dir=str(repo / "configs"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.partition, launcher.cpus_per_task, launcher.array_parallelism) == ("cpu", 1, 64)
    bases = [c.__name__ for c in get_object(launcher._target_).__mro__]  # Hydra loads plugins as modules of its own
    assert {"SlurmLauncher", "SubmititVerdict"} <= set(bases) and launcher.cancel_jobs_on_exit is True
    assert not launcher.setup  # nothing relative to the launch folder: jobs run this Python by its absolute path
