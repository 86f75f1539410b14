"""MLflow: one experiment; per sweep one parent run, per fold one run; batched writes.

The default store is an SQLite database inside ``mlruns/`` (MLflow 3 refuses a bare file
store), its artifacts beside it under ``mlruns/artifacts/`` behind ``mlflow-artifacts:`` URIs,
so the folder can be moved or shared (``tinyvmaf.mlflow_artifacts``); ``tracking.uri`` points a
team at a shared server instead. The database, the experiment and a sweep's parent run are
created under a file lock, since several processes creating a fresh SQLite store at once
corrupt it.
What a run holds, and its keys, is ``tinyvmaf.runs``.
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from functools import cache
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import mlflow.onnx
import numpy as np
import onnx
import onnxruntime
import requests
from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow import entities
from mlflow.entities import Dataset, DatasetInput, Experiment, InputTag, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from omegaconf import DictConfig

from tinyvmaf.errors import Interrupted, TinyVmafError, without_passwords
from tinyvmaf.files import safe_name
from tinyvmaf.mlflow_artifacts import local_artifact_root, store_path
from tinyvmaf.runs import HELDOUT, Kind, Metric, Param, Tag, search_runs, slurm_tags
from tinyvmaf.teacher.function import ONNX_PROVIDERS


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        lock = FileLock(str(db) + ".lock")
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except OSError as exc:  # a read-only or foreign folder: before MLflow's own traceback
            raise TinyVmafError(
                f"tracking.uri={uri}: {db.parent} cannot be written ({exc.strerror}); runs cannot be written there"
            ) from None
        try:
            yield
        finally:
            lock.release()
    else:
        yield


def check_artifact_location(tracking_uri: str, location: str | None, what: str) -> None:
    """A local store's artifact location (of an experiment or run, as its database says) must lie
    inside the store's artifact folder: a received store must not make tinyvmaf read or write
    elsewhere. A server keeps its artifacts itself, so nothing is checked against one."""
    root = local_artifact_root(tracking_uri)
    if root is None:
        return
    parsed = urlparse(location or "")
    if parsed.scheme == "mlflow-artifacts" and not parsed.netloc:
        path = store_path(root, location)
    elif parsed.scheme in ("file", "") and not parsed.netloc and location:
        path = Path(unquote(parsed.path))
    else:
        path = None
    if path is None or not path.resolve().is_relative_to(root.resolve()):
        raise TinyVmafError(
            f"{what}: its artifact location {location!r:.200} lies outside the store's artifact folder {root}; "
            "nothing is read or written there"
        )


# The runs table as the README's link opens it: MLflow's shared view state (an experiment tag
# `mlflow.sharedViewState.<key>`, opened by `?viewStateShareKey=<key>`), the columns a LOSO sweep is read by.
VIEW_KEY = "tinyvmaf"
RUNS_VIEW = {
    "selectedColumns": [
        "attributes.`Dataset`", "attributes.`Models`",
        *(f"params.`{p}`" for p in (Param.ARCH, Param.FOLD, Param.EXPERIMENT)),
        *(f"metrics.`{HELDOUT[m]}`" for m in ("rmse", "plcc", "srocc")), f"metrics.`{Metric.N_PARAMS}`",
    ],
    "orderByKey": "attributes.start_time",
    "orderByAsc": False,
}  # fmt: skip


MLFLOW_TABLES = {"alembic_version", "experiments", "runs"}  # what every MLflow SQL store holds


@cache
def mlflow_schema_revision() -> str:
    """The schema revision this MLflow writes. A store at another one is half-created (MLflow
    3.17's tracking store creates its tables, then runs 67 migrations (1.5 s here), with no
    lock; a reader that opens it meanwhile runs them too and both fail) or from another MLflow
    version, which opening it with this one would migrate in place. MLflow keeps no public call."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


class Tracking:
    """The MLflow store and experiment of ``configs/tracking/``: runs are written with
    ``experiment()``, which creates store and experiment on first use; commands that only read
    use ``existing_experiment()``, which never creates either."""

    def __init__(self, uri: str, experiment: str, log_models: bool = True) -> None:
        self.uri, self.name = uri, experiment
        self.log_models = log_models  # each fold run logs its model as an MLflow ONNX model
        self._opened: tuple[MlflowClient, str] | None = None

    def experiment(self) -> tuple[MlflowClient, str]:
        """Client and experiment id, creating store and experiment once (and asked once per object).

        Many processes may start at the same instant (joblib workers, a SLURM array): SQLite's
        creation is serialised by a file lock, and against a server the loser of the race to
        create the experiment takes the winner's.
        """
        if self._opened is None:
            self._opened = self._open()
        return self._opened

    def _open(self) -> tuple[MlflowClient, str]:
        self._check_server()
        with _store_lock(self.uri):
            if self.uri.startswith("sqlite:///"):
                self._check_sqlite_store(Path(self.uri.removeprefix("sqlite:///")), creating=True)
            client = MlflowClient(tracking_uri=self.uri)
            found = self._find(client)
            if found is not None:
                return client, self._checked(found)
            tags = {
                "mlflow.experimentKind": "custom_model_development",
                f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(RUNS_VIEW),
            }
            try:
                return client, client.create_experiment(self.name, self._artifact_location(), tags)
            except MlflowException as exc:
                found = self._find(client) if exc.error_code == "RESOURCE_ALREADY_EXISTS" else None
                if found is None:
                    raise
                return client, found.experiment_id

    def _artifact_location(self) -> str | None:
        """Relative to the store (``mlflow-artifacts:``) in a local SQLite store, so that it can move;
        a server decides itself (``--serve-artifacts`` gives ``mlflow-artifacts:`` too)."""
        return f"mlflow-artifacts:/{safe_name(self.name)}" if local_artifact_root(self.uri) else None

    def _check_server(self) -> None:
        """One line within seconds for a server or database that does not answer (or refuses the
        credentials), instead of minutes of MLflow's retries and a traceback."""
        if self.uri.startswith(("http://", "https://")):
            try:
                requests.get(f"{self.uri.rstrip('/')}/health", timeout=5).raise_for_status()
            except requests.RequestException as exc:
                raise TinyVmafError(
                    f"tracking.uri={self.uri}: no MLflow server answers there ({type(exc).__name__})"
                ) from None
        elif not self.uri.startswith("sqlite:") and "://" in self.uri:
            self._check_database()

    def _check_database(self) -> None:
        import sqlalchemy  # MLflow's own dependency; only a database store pays for the import

        try:
            url = sqlalchemy.engine.make_url(self.uri)
        except Exception:
            raise TinyVmafError(f"tracking.uri={self.uri}: not a database URI MLflow can open") from None
        timeout = {"connect_timeout": 5} if url.get_backend_name() == "postgresql" else {}
        try:
            engine = sqlalchemy.create_engine(url, connect_args=timeout, poolclass=sqlalchemy.pool.NullPool)
            with engine.connect():
                pass
        except Exception as exc:
            text = str(getattr(exc, "orig", None) or exc).strip()
            first = text.splitlines()[0][:200] if text else ""
            raise TinyVmafError(
                f"tracking.uri={self.uri}: cannot connect to the database ({type(exc).__name__}: {first})"
            ) from None

    def existing_experiment(self) -> tuple[MlflowClient, str]:
        self._check_server()
        if self.uri.startswith("sqlite:///"):
            self._check_sqlite_store(Path(self.uri.removeprefix("sqlite:///")))
        client = MlflowClient(tracking_uri=self.uri)
        found = self._find(client)
        if found is None:
            raise TinyVmafError(
                f"tracking.experiment={self.name}: no such experiment in {self.uri}; run train.py first"
            )
        return client, self._checked(found)

    def _check_sqlite_store(self, db: Path, creating: bool = False) -> None:
        """An SQLite file is opened only if it holds an intact MLflow store, looked at read-only
        first: MLflow writes its whole schema into any file it is pointed at (954 KB into an empty
        one, or into another program's database) and goes on writing into a damaged one. A
        command that writes runs (``creating``) may also start a store where there is none or
        an empty file; one that only reads may not. SQLite's quick_check reads the whole file:
        0.27 s for a 282 MB store here."""
        if creating and (not db.exists() or (db.is_file() and db.stat().st_size == 0)):
            return
        if not db.is_file():
            what = "a folder" if db.is_dir() else "no MLflow store"
            raise TinyVmafError(f"tracking.uri={self.uri}: {what} at {db}")
        try:
            tables, revision, damage = _inspect_sqlite(db, read_only=True)
        except sqlite3.Error as exc:
            with open(db, "rb") as f:
                sqlite = f.read(16) == b"SQLite format 3\x00"  # every SQLite database's first bytes
            if not sqlite:
                raise TinyVmafError(f"tracking.uri={self.uri}: {db} is not an SQLite database ({exc})") from None
            damage = [str(exc)]
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_READONLY and Path(f"{db}-journal").exists():
                # A writer killed mid-transaction (kill -9, a lost node) leaves a hot journal, which
                # every SQLite connection rolls back before it reads, back to the last commit; a
                # read-only one cannot, and fails. Let SQLite roll it back, then check the file.
                try:
                    tables, revision, damage = _inspect_sqlite(db, read_only=False)
                except sqlite3.Error as again:
                    damage = [str(again)]
        if damage != ["ok"]:
            said = " ".join(" ".join(damage).split())[:200]
            raise TinyVmafError(
                f"tracking.uri={self.uri}: {db} is damaged (SQLite's check: {said}); nothing is written into it: "
                "restore a copy"
            )
        if not MLFLOW_TABLES <= tables:
            raise TinyVmafError(f"tracking.uri={self.uri}: {db} is not an MLflow store (it lacks MLflow's tables)")
        if creating and not os.access(db, os.W_OK):  # a read-only folder is caught by the store's lock
            raise TinyVmafError(f"tracking.uri={self.uri}: {db} is read-only; runs cannot be written into it")
        if revision is None or revision[0] != mlflow_schema_revision():
            raise TinyVmafError(
                f"tracking.uri={self.uri}: {db} holds schema revision {revision and revision[0]}, not this MLflow's "
                f"{mlflow_schema_revision()}: another process is creating it, or another MLflow version wrote it "
                "(`mlflow db upgrade` migrates it; back it up first)"
            )

    def _checked(self, experiment: Experiment) -> str:
        """The experiment's id, once its artifact location is known to stay inside the store."""
        check_artifact_location(self.uri, experiment.artifact_location, f"tracking.experiment={self.name}")
        return experiment.experiment_id

    def _find(self, client: MlflowClient) -> Experiment | None:
        try:
            return client.get_experiment_by_name(self.name)
        except Exception as exc:
            raise TinyVmafError(
                f"tracking.uri={self.uri}: cannot open the MLflow store ({type(exc).__name__}: {exc})"
            ) from None


def _inspect_sqlite(db: Path, read_only: bool) -> tuple[set[str], tuple | None, list[str]]:
    """An SQLite file's tables, MLflow's schema revision (if its tables are there) and SQLite's
    quick_check of the whole file (``["ok"]`` when intact)."""
    mode = "?mode=ro" if read_only else ""
    with closing(sqlite3.connect(f"{db.resolve().as_uri()}{mode}", uri=True)) as con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = (
            con.execute("SELECT version_num FROM alembic_version").fetchone() if MLFLOW_TABLES <= tables else None
        )
        return tables, revision, [row[0] for row in con.execute("PRAGMA quick_check(3)")]


def run_by_id(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise TinyVmafError(f"run_id={run_id}: no such run in {client.tracking_uri}") from None


# MLflow 3.17's UI picks its views (GenAI or machine learning) from the link's ``workflowType``,
# else from the browser's own setting (localStorage ``mlflow.workflowType_v1``, GenAI until the
# user flips the switch once); it does not read the experiment's ``mlflow.experimentKind`` tag.
# So every link tinyvmaf prints or writes names the machine-learning views.
MACHINE_LEARNING_VIEWS = "workflowType=machine_learning"


def runs_table_url(ui: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI at ``ui``, with tinyvmaf's columns."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{MACHINE_LEARNING_VIEWS}&viewStateShareKey={VIEW_KEY}"


def run_page_link(experiment_id: str, run_id: str) -> str:
    """A run's page, relative to the UI's root (as a link inside MLflow's own Markdown)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?{MACHINE_LEARNING_VIEWS}"


def sweep_id(cfg: DictConfig) -> str:
    """What ties the runs of one multirun together: the sweep folder's name, unless given."""
    if cfg.get("sweep_id"):
        return str(cfg.sweep_id)
    # a job reads Hydra's config; the launching process (callbacks, sweeper) has it in ``cfg.hydra``
    hc = HydraConfig.get() if HydraConfig.initialized() else cfg.get("hydra")
    if hc is None:
        return "interactive"
    return Path(hc.sweep.dir if hc.mode == RunMode.MULTIRUN else hc.run.dir).name


def find_sweep_run(client: MlflowClient, experiment_id: str, sweep: str) -> Run | None:
    """The sweep's parent run, if one was opened; the earliest when racing processes opened two."""
    runs = search_runs(client, experiment_id, Kind.SWEEP, sweep=sweep)
    return min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id), default=None)


def open_sweep_run(tracking: Tracking, sweep: str, params: dict[str, object], launching: bool = False) -> str:
    """The sweep's parent run, created if the sweep has none. Its ``launching`` process (before any
    job) also marks it RUNNING and records itself on it, so that a digest written meanwhile
    (``evaluate.py``) knows the sweep is not over.

    Two launching processes of one sweep (several machines sharing a search) may race: each that
    created a run keeps the earliest and deletes its own; SQLite serialises them with a lock.
    """
    client, experiment_id = tracking.experiment()
    with _store_lock(tracking.uri):
        found = find_sweep_run(client, experiment_id, sweep)
        if found is None:
            mine = client.create_run(
                experiment_id, run_name=sweep, tags={Tag.SWEEP_ID: sweep, Tag.KIND: Kind.SWEEP, **provenance_tags()}
            )
            TrackedRun(client, mine.info.run_id).log_params(params)
            found = find_sweep_run(client, experiment_id, sweep)
            if found.info.run_id != mine.info.run_id:
                client.delete_run(mine.info.run_id)
    if launching:
        client.update_run(found.info.run_id, status="RUNNING")
        TrackedRun(client, found.info.run_id).log_tags(
            {Tag.LAUNCHER_HOST: os.uname().nodename, Tag.LAUNCHER_PID: os.getpid()}
        )
    return found.info.run_id


@cache
def _git_commit(folder: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def provenance_tags() -> dict[str, str]:
    """MLflow's source tags: the command that ran (entry point and its Hydra overrides) and its git
    commit; inside a SLURM job, which job and attempt (``tinyvmaf.runs.slurm_tags``)."""
    script = Path(sys.argv[0]).resolve()
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    tags = {
        Tag.SOURCE_NAME: script.name,
        Tag.SOURCE_TYPE: "LOCAL",
        Tag.COMMAND: without_passwords(shlex.join(["python", script.name, *overrides])),
    }
    commit = _git_commit(script.parent)
    if commit:
        tags[Tag.GIT_COMMIT] = commit
    return {**tags, **slurm_tags()}


def retire_earlier_attempts(client: MlflowClient, experiment_id: str) -> None:
    """In a requeued SLURM job: the runs its earlier attempts left RUNNING (their node died, or
    they were preempted) end FAILED, saying so; they would otherwise stay RUNNING for ever."""
    mine = slurm_tags()
    restart = int(mine.get(Tag.SLURM_RESTART, "0"))
    if restart == 0:
        return
    job = {Tag.SLURM_JOB_ID: mine[Tag.SLURM_JOB_ID]}
    for run in search_runs(client, experiment_id, status="RUNNING", tags=job):
        attempt = run.data.tags.get(Tag.SLURM_RESTART, "0")
        if attempt.isdigit() and int(attempt) < restart:
            said = f"SLURM job {mine[Tag.SLURM_JOB]} was requeued: attempt {int(attempt) + 1} ended without a word"
            client.set_tag(run.info.run_id, Tag.ERROR, said)
            client.set_terminated(run.info.run_id, "FAILED")


def log_dataset(client: MlflowClient, run_id: str, name: str, digest: str, source: str, context: str) -> None:
    """The corpus as the run's MLflow dataset input (the UI's Datasets column): name, content hash, where it lives."""
    dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": source}))
    inputs = [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])]
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException:
        # Two runs logging a dataset new to the experiment at the same instant (parallel workers): MLflow's
        # store inserts it twice and the second insert fails on its unique key. It exists now; the retry links it.
        client.log_inputs(run_id, datasets=inputs)


def onnx_signature(n_features: int) -> ModelSignature:
    """The contract of every tinyvmaf ONNX model: ``features`` float32 [N, F] (6 for v0, 4 for v1)
    -> ``vmaf`` float32 [N]."""
    return ModelSignature(
        Schema([TensorSpec(np.dtype(np.float32), (-1, n_features), "features")]),
        Schema([TensorSpec(np.dtype(np.float32), (-1,), "vmaf")]),
    )


@contextmanager
def _fluent_store(uri: str, experiment_id: str) -> Iterator[None]:
    """MLflow's model-logging calls take the store and experiment from the process's state (the
    tracking URI, ``MLFLOW_EXPERIMENT_ID``): point them at the run's for the block."""
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    experiment_before = os.environ.get("MLFLOW_EXPERIMENT_ID")
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if experiment_before is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_before


def log_onnx_model(
    client: MlflowClient,
    experiment_id: str,
    run_id: str,
    model: onnx.ModelProto,
    example: np.ndarray,
    registered_name: str | None = None,
    step: int = 0,
) -> ModelInfo:
    """``model`` as the run's MLflow model ``model`` (flavor ``onnx``, signature, ``example`` rows as
    the input example), carrying the run's metrics of ``step`` (a fold's last epoch: what the
    model scored); with ``registered_name``, also a new version of that registered model."""
    with _fluent_store(client.tracking_uri, experiment_id):
        return mlflow.onnx.log_model(
            model, name="model", run_id=run_id, signature=onnx_signature(example.shape[1]), step=step,
            input_example=example.astype(np.float32), registered_model_name=registered_name,
            # pinned here: inferring them costs a Python subprocess (~1.5 s) per fold run
            pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
            onnx_execution_providers=ONNX_PROVIDERS, save_as_external_data=False,
        )  # fmt: skip


class TrackedRun:
    """One MLflow run; params, metrics and tags go out in batches to keep per-run overhead small."""

    def __init__(self, client: MlflowClient, run_id: str, artifact_uri: str | None = None) -> None:
        self.client, self.run_id = client, run_id
        self.end_status = "FINISHED"  # how the run ends when its block does not raise (KILLED: a pruned trial's)
        self._artifact_uri = artifact_uri  # checked before the first artifact is written

    def _artifacts_checked(self) -> None:
        if self._artifact_uri is None:
            self._artifact_uri = self.client.get_run(self.run_id).info.artifact_uri
        check_artifact_location(self.client.tracking_uri, self._artifact_uri, f"run {self.run_id}")

    def log_params(self, params: dict[str, object]) -> None:
        self.client.log_batch(self.run_id, params=[entities.Param(k, str(v)) for k, v in params.items()])

    def log_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[entities.RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, rows: list[dict[str, float]], step_key: str = "epoch") -> None:
        """Each row is one step; every other key of the row is a metric."""
        now = int(time.time() * 1000)
        metrics = [
            entities.Metric(k, float(v), now, int(row[step_key]))
            for row in rows
            for k, v in row.items()
            if k != step_key
        ]
        for start in range(0, len(metrics), 1000):  # MLflow's per-batch limit
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def log_artifact(self, path: Path) -> None:
        self._artifacts_checked()
        self.client.log_artifact(self.run_id, str(path))

    def log_artifacts(self, folder: Path) -> None:
        """Every file in ``folder``, in one call."""
        self._artifacts_checked()
        self.client.log_artifacts(self.run_id, str(folder))


@contextmanager
def tracked_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, object] | None = None,
) -> Iterator[TrackedRun]:
    """A run that ends FINISHED (or its ``end_status``), FAILED (with the error as a tag) if the
    block raises, or KILLED if it is interrupted (SIGTERM, Ctrl-C); it records the command and commit it ran from, and ``params``."""
    run = client.create_run(experiment_id, run_name=run_name, tags={**provenance_tags(), **tags})
    tracked = TrackedRun(client, run.info.run_id, run.info.artifact_uri)
    if params:
        tracked.log_params(params)
    try:
        yield tracked
    except (Interrupted, KeyboardInterrupt) as exc:  # stopped from outside: not a failure of the run's own
        said = f"interrupted ({exc})" if str(exc) else "interrupted"
        client.log_batch(run.info.run_id, tags=[entities.RunTag(Tag.ERROR, said)])
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as exc:
        client.log_batch(run.info.run_id, tags=[entities.RunTag(Tag.ERROR, " ".join(str(exc).split())[:4000])])
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run.info.run_id, tracked.end_status)
