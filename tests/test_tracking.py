"""MLflow: a store that moves, logged models, many processes at once on SQLite and on a server,
stores that do not answer or point elsewhere, and commands that only read."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from mlflow import entities
from mlflow.tracking import MlflowClient
from servers import mlflow_ui

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.tracking import RUNS_VIEW, VIEW_KEY, Tracking, runs_table_url
from tinyvmaf.training import train


def runs_by_kind(client: MlflowClient) -> dict[str, list]:
    experiment = client.get_experiment_by_name("tinyvmaf-loso")
    found: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        found.setdefault(run.data.tags["kind"], []).append(run)
    return found


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


LOG_DATASET = """
import sys
from tinyvmaf.tracking import Tracking, log_dataset
client, experiment_id = Tracking(sys.argv[1], "datasets").experiment()
run = client.create_run(experiment_id)
log_dataset(client, run.info.run_id, "tiny", "0123456789ab", "/data/tiny", "training")
print(len(client.get_run(run.info.run_id).inputs.dataset_inputs))
"""


def test_an_experiment_whose_artifacts_point_outside_the_store_gets_no_run(their_store, tmp_path, compose):
    folder, base, _ = their_store
    elsewhere = tmp_path / "elsewhere"
    with sqlite3.connect(folder / "mlruns" / "mlflow.db") as db:
        db.execute("UPDATE experiments SET artifact_location = ?", (f"file://{elsewhere}",))
    with pytest.raises(
        TinyVmafError, match=r"^tracking.experiment=tinyvmaf-loso: its artifact location .* lies outside"
    ):
        train(compose("train", *base, "fold.heldout=Bars", "sweep_id=mine"))
    assert not elsewhere.exists()


@pytest.mark.parametrize("uri", ["postgresql://alice:s3cretpw@127.0.0.1:9/x", "http://alice:s3cretpw@127.0.0.1:9"])
def test_an_unreachable_store_is_one_line_within_seconds_and_shows_no_password(uri, tmp_path, run_entry):
    start = time.monotonic()
    proc = run_entry("evaluate.py", f"tracking.uri={uri}")
    assert time.monotonic() - start < 30 and proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: tracking.uri={uri.replace('s3cretpw', '***')}: ")
    assert "s3cretpw" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_database_that_refuses_the_connection_shows_no_password(mlflow_server, tmp_path, run_entry):
    _, _, database = mlflow_server  # postgresql+psycopg://postgres@127.0.0.1:PORT/optuna
    uri = database.replace("postgres@", "postgres:s3cretpw@").rsplit("/", 1)[0] + "/no_such_database"
    start = time.monotonic()
    proc = run_entry("train.py", f"tracking.uri={uri}", "fold.heldout=Bars")
    assert time.monotonic() - start < 30 and proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: tracking.uri={uri.replace('s3cretpw', '***')}: cannot connect to the database "
        f'(OperationalError: connection failed: connection to server at "127.0.0.1", port {uri.split(":")[3].split("/")[0]} '
        f'failed: FATAL: database "no_such_database" does not exist)'
    ]


@pytest.mark.slow
def test_a_moved_store_keeps_every_artifact(tiny_overrides, run_entry, tmp_path, monkeypatch):
    proc = run_entry("train.py", "-m", *tiny_overrides, "arch=linear", "fold.heldout=Bars,Mandel", "sweep_id=m1")
    assert proc.returncode == 0, proc.stderr
    before = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    fold_run = runs_by_kind(before)["fold"][0]
    heldout = np.load(before.download_artifacts(fold_run.info.run_id, "heldout.npz", str(tmp_path)))["predicted"]

    store = shutil.move(tmp_path / "mlruns", tmp_path / "elsewhere" / "store")
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    runs = runs_by_kind(client)
    assert len(runs["sweep"]) == 1 and len(runs["fold"]) == 2
    for run in runs["fold"]:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / run.info.run_id))
        assert f"heldout: {run.data.params['fold']}" in open(config).read()
    sweep = runs["sweep"][0].info.run_id
    assert {a.path for a in client.list_artifacts(sweep)} == {
        "digest.md",
        "digest.json",
        "scatter.png",
        "rmse_per_fold.png",
        "jobs.json",  # the sweep's ledger: what its command asked for
    }
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    model = mlflow.pyfunc.load_model(f"models:/{fold_run.outputs.model_outputs[0].model_id}")
    assert model.predict(np.full((3, 6), 0.5, dtype=np.float32))["vmaf"].shape == (3,)

    with mlflow_ui(store) as ui:  # the README's UI command, on the moved folder
        served = MlflowClient(ui)
        assert {a.path for a in served.list_artifacts(sweep)} >= {"digest.md", "scatter.png"}
        got = np.load(served.download_artifacts(fold_run.info.run_id, "heldout.npz", str(tmp_path / "served")))
        assert np.array_equal(got["predicted"], heldout)
        experiment = served.get_experiment_by_name("tinyvmaf-loso")
        url = runs_table_url(ui, experiment.experiment_id)
        assert url.endswith(f"/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}")
        assert requests.get(url.split("#")[0], timeout=10).ok
        view = experiment.tags[f"mlflow.sharedViewState.{VIEW_KEY}"]
        assert json.loads(view) == RUNS_VIEW and "metrics.`heldout_rmse`" in RUNS_VIEW["selectedColumns"]


def test_a_logged_fold_model_carries_the_folds_final_metrics(tiny_overrides, compose, tmp_path):
    from tinyvmaf.training import train

    final = train(compose("train", *tiny_overrides, "arch=linear", "fold.heldout=Bars", "sweep_id=final"))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("tinyvmaf-loso").experiment_id
    with_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        (model,) = mlflow.search_logged_models(experiment_ids=[experiment], output_format="list")
    finally:
        mlflow.set_tracking_uri(with_uri)
    metrics = {m.key: (m.value, m.step) for m in model.metrics}
    last = 2  # trainer.max_epochs=3 in the tiny overrides: epochs 0, 1, 2
    for name in ("heldout_rmse", "heldout_plcc", "heldout_srocc", "train_loss"):
        assert metrics[name] == (pytest.approx(final[name]), last), name


def test_no_command_or_test_leaves_a_store_in_the_working_folder(tiny_overrides, run_entry, tmp_path, repo):
    """MLflow's own default store is ./mlflow.db in the working folder: nothing may fall back to it."""
    work = tmp_path / "work"
    work.mkdir()
    store = next(o for o in tiny_overrides if o.startswith("tracking.uri="))
    corpus = [o for o in tiny_overrides if o.startswith(("corpus", "paths.", "cache."))]
    assert run_entry("train.py", *tiny_overrides, "arch=linear", "fold.heldout=Bars", cwd=work).returncode == 0
    assert (
        run_entry("evaluate.py", store, *corpus, f"paths.reports_dir={tmp_path}/reports", cwd=work).returncode == 3
    )  # one fold of two: written, incomplete
    assert run_entry("score.py", f"onnx={repo}/models/vmaf_tiny_v1.onnx", "log=/no/such.json", cwd=work).returncode == 1
    assert sorted(p.name for p in work.iterdir()) == []  # no mlflow.db, no mlruns/
    assert not (repo / "mlflow.db").exists()  # nor in the checkout, by any test run before this one


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


def test_many_processes_create_the_experiment_at_once_on_sqlite(tmp_path):
    assert len(create_at_once(f"sqlite:///{tmp_path}/mlflow.db", "race")) == 1


@pytest.mark.slow
def test_many_processes_create_the_experiment_at_once_on_a_server(mlflow_server, tmp_path):
    uri, _, _ = mlflow_server
    assert len(create_at_once(uri, "race", n=8)) == 1


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


def test_read_only_commands_create_no_store(tmp_path, run_entry):
    proc = run_entry("evaluate.py", f"tracking.uri=sqlite:///{tmp_path}/nowhere/x/mlflow.db")
    assert (
        proc.returncode == 1
        and proc.stderr.strip()
        == f"error: tracking.uri=sqlite:///{tmp_path}/nowhere/x/mlflow.db: no MLflow store at {tmp_path}/nowhere/x/mlflow.db"
    )
    assert not (tmp_path / "nowhere").exists()
    store = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    MlflowClient(store).create_experiment("tinyvmaf-loso", artifact_location="mlflow-artifacts:/tinyvmaf-loso")
    proc = run_entry("export.py", f"tracking.uri={store}", "run_id=0123abc", f"output={tmp_path}/x.onnx")
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: run_id=0123abc: no such run in {store}"
    assert not (tmp_path / "x.onnx").exists()


def _not_a_store(path):
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (text TEXT)")


def _another_mlflows_store(path):
    MlflowClient(f"sqlite:///{path}").search_experiments()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = 'b7e2c1a4d9f3'")


@pytest.mark.parametrize(
    "make, said",
    [
        (lambda p: p.write_bytes(b""), "is not an MLflow store (it lacks MLflow's tables)"),
        (_another_mlflows_store, "holds schema revision b7e2c1a4d9f3, not this MLflow's"),
        (lambda p: p.write_bytes(b"some notes, not a database\n" * 100), "is not an SQLite database"),
        (_not_a_store, "is not an MLflow store (it lacks MLflow's tables)"),
    ],
    ids=["empty file", "another MLflow's store", "text file", "another program's database"],
)
def test_a_command_that_only_reads_refuses_a_file_that_is_not_a_store_and_writes_nothing(make, said, tmp_path):
    db = tmp_path / "mlflow.db"
    make(db)
    before = db.read_bytes()
    with pytest.raises(TinyVmafError) as refused:
        Tracking(f"sqlite:///{db}", "tinyvmaf-loso").existing_experiment()
    assert str(refused.value).startswith(f"tracking.uri=sqlite:///{db}: {db} {said}")
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    """A real MLflow SQLite store with a few runs in it (its pages span the file)."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    client, experiment = Tracking(f"sqlite:///{db}", "tinyvmaf-loso").experiment()
    for i in range(20):
        run = client.create_run(experiment, run_name=f"run {i}")
        client.log_batch(run.info.run_id, metrics=[entities.Metric(f"m{j}", j, 0, 0) for j in range(20)])
    return db


def _schema_reads(db: Path) -> bool:
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            con.execute("SELECT name FROM sqlite_master").fetchall()
            con.execute("SELECT version_num FROM alembic_version").fetchall()
        return True
    except sqlite3.DatabaseError:
        return False


def _damaged_in_the_middle(store: Path):
    """One page from the middle on overwritten, the first whose damage the schema's own tables do
    not show: MLflow went on writing into such a file; only a check of the whole file finds it."""

    def damage(db: Path) -> None:
        data, page = store.read_bytes(), 4096
        for start in range(len(data) // page // 2 * page, len(data), page):
            db.write_bytes(data[:start] + np.random.default_rng(0).bytes(page) + data[start + page :])
            if _schema_reads(db):
                return
        raise AssertionError("no page whose damage the schema does not show")

    return damage


@pytest.mark.parametrize(
    "make, said",
    [
        (lambda store: lambda db: db.write_bytes(b"some notes, not a database\n" * 100), "is not an SQLite database"),
        (lambda store: lambda db: db.mkdir(), "a folder at"),
        (lambda store: _not_a_store, "is not an MLflow store (it lacks MLflow's tables)"),
        (_damaged_in_the_middle, "is damaged (SQLite's check: "),
    ],
    ids=["text file", "folder", "another program's database", "damaged in the middle"],
)
def test_a_command_that_writes_runs_refuses_a_file_that_is_not_an_intact_store_and_writes_nothing(
    make, said, small_store, tmp_path
):
    db = tmp_path / "mlflow.db"
    make(small_store)(db)
    before = db.read_bytes() if db.is_file() else None
    for open_store in ("experiment", "existing_experiment"):
        with pytest.raises(TinyVmafError) as refused:
            getattr(Tracking(f"sqlite:///{db}", "tinyvmaf-loso"), open_store)()
        assert str(refused.value).startswith(f"tracking.uri=sqlite:///{db}: ")
        assert said in str(refused.value) and "\n" not in str(refused.value)
    assert (db.read_bytes() if db.is_file() else None) == before


READ_ONLY_MOUNT = """
import sys
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.tracking import Tracking
for open_store in ("existing_experiment", "experiment"):
    try:
        print(open_store, "opened", getattr(Tracking(sys.argv[1], "tinyvmaf-loso"), open_store)()[1])
    except TinyVmafError as exc:
        print(open_store, "refused:", exc)
"""


def test_a_store_on_a_read_only_file_system_is_read_but_refuses_runs_in_one_line(small_store, tmp_path):
    """Root ignores file modes, so a read-only bind mount (in a mount namespace of the test's own) stands in."""
    shutil.copy(small_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mount = f"mount --bind {tmp_path} {tmp_path} && mount -o remount,bind,ro {tmp_path}"
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", f'{mount} && exec "$0" -c "$1" "$2"', sys.executable, READ_ONLY_MOUNT, uri],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if "mount" in proc.stderr and "permission denied" in proc.stderr.lower():
        pytest.skip("no mount namespace here")
    assert proc.stdout.splitlines() == [
        "existing_experiment opened 1",
        f"experiment refused: tracking.uri={uri}: {tmp_path} cannot be written (Read-only file system); "
        "runs cannot be written there",
    ], proc.stderr


KILLED_MID_WRITE = """
import os, sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")
con.execute("UPDATE experiments SET name = name || '-half-written'")
con.execute("CREATE TABLE filler (x BLOB)")
con.executemany("INSERT INTO filler VALUES (?)", [(b"x" * 1000,) for _ in range(3000)])  # spills to the file
os.kill(os.getpid(), 9)
"""


def test_a_store_whose_writer_was_killed_mid_write_opens_at_its_last_commit(small_store, tmp_path):
    """kill -9 mid-transaction leaves a hot journal: not damage, but a write SQLite rolls back."""
    db = tmp_path / "mlflow.db"
    shutil.copy(small_store, db)
    subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(db)], timeout=60)
    assert (tmp_path / "mlflow.db-journal").exists()
    for open_store in ("existing_experiment", "experiment"):
        client, experiment = getattr(Tracking(f"sqlite:///{db}", "tinyvmaf-loso"), open_store)()
        assert client.get_experiment(experiment).name == "tinyvmaf-loso"
    assert len(client.search_runs([experiment])) == 20
