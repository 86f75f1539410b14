"""MLflow: one experiment, one run per fold, everything written in a few batched calls.

The default store is an SQLite database inside ``mlruns/`` (MLflow 3 refuses a bare file
store); ``tracking.uri`` points a team at a shared server instead. The database and the
experiment are created under a file lock, since several processes creating a fresh SQLite
store at once corrupt it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from filelock import FileLock
from mlflow.entities import Experiment, Metric, Param, Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tinyvmaf.errors import TinyVmafError


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db) + ".lock"):
            yield
    else:
        yield


LOSO_PARENT_TAG = "tinyvmaf.loso_parent"  # a whole-configuration run (fold.heldout=all): its children are fold runs


class Tracking:
    """The MLflow store and experiment of ``configs/tracking/``: runs are written with
    ``experiment()``, which creates store and experiment on first use; commands that only read
    use ``existing_experiment()``, which never creates either."""

    def __init__(self, uri: str, experiment: str, artifact_root: str | Path | None = None) -> None:
        self.uri, self.name, self.artifact_root = uri, experiment, artifact_root

    def experiment(self) -> tuple[MlflowClient, str]:
        """Client and experiment id, creating store and experiment once.

        Many processes may start at the same instant (joblib workers, a SLURM array): SQLite's
        creation is serialised by a file lock, and against a server the loser of the race to
        create the experiment takes the winner's.
        """
        self._check_server()
        with _store_lock(self.uri):
            client = MlflowClient(tracking_uri=self.uri)
            found = self._find(client)
            if found is not None:
                return client, found.experiment_id
            try:
                return client, client.create_experiment(self.name, artifact_location=self._artifact_location())
            except MlflowException as exc:
                found = self._find(client) if exc.error_code == "RESOURCE_ALREADY_EXISTS" else None
                if found is None:
                    raise
                return client, found.experiment_id

    def _artifact_location(self) -> str | None:
        """A local store keeps artifacts in ``artifact_root``; a server decides itself (``--serve-artifacts``
        gives ``mlflow-artifacts:``), so no client's disk is ever named to it."""
        if self.artifact_root and not self.uri.startswith(("http://", "https://")):
            return Path(self.artifact_root).resolve().as_uri()
        return None

    def _check_server(self) -> None:
        """One line within seconds for a server that is down, instead of minutes of MLflow's retries."""
        if not self.uri.startswith(("http://", "https://")):
            return
        try:
            requests.get(f"{self.uri.rstrip('/')}/health", timeout=5).raise_for_status()
        except requests.RequestException as exc:
            raise TinyVmafError(
                f"tracking.uri={self.uri}: no MLflow server answers there ({type(exc).__name__})"
            ) from None

    def existing_experiment(self) -> tuple[MlflowClient, str]:
        self._check_server()
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri.removeprefix("sqlite:///"))
            if not db.is_file():
                raise TinyVmafError(f"tracking.uri={self.uri}: no MLflow store at {db}")
        client = MlflowClient(tracking_uri=self.uri)
        found = self._find(client)
        if found is None:
            raise TinyVmafError(
                f"tracking.experiment={self.name}: no such experiment in {self.uri}; run train.py first"
            )
        return client, found.experiment_id

    def _find(self, client: MlflowClient) -> Experiment | None:
        try:
            return client.get_experiment_by_name(self.name)
        except Exception as exc:
            raise TinyVmafError(
                f"tracking.uri={self.uri}: cannot open the MLflow store ({type(exc).__name__}: {exc})"
            ) from None


def quoted(value: str, what: str) -> str:
    """``value`` as a string literal of MLflow's search syntax, which has no escape character."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise TinyVmafError(f"{what}={value!r}: cannot hold both ' and \" (MLflow cannot search for it)")


def run_by_id(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise TinyVmafError(f"run_id={run_id}: no such run in {client.tracking_uri}") from None


class TrackedRun:
    """One MLflow run; params, metrics and tags go out in batches to keep per-run overhead small."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict[str, object]) -> None:
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, rows: list[dict[str, float]], step_key: str = "epoch") -> None:
        """Each row is one step; every other key of the row is a metric."""
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, int(row[step_key])) for row in rows for k, v in row.items() if k != step_key
        ]
        for start in range(0, len(metrics), 1000):  # MLflow's per-batch limit
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))


@contextmanager
def tracked_run(client: MlflowClient, experiment_id: str, run_name: str, tags: dict[str, str]) -> Iterator[TrackedRun]:
    """A run that ends FINISHED, or FAILED (with the error as a tag) if the block raises."""
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    tracked = TrackedRun(client, run.info.run_id)
    try:
        yield tracked
    except BaseException as exc:
        client.log_batch(run.info.run_id, tags=[RunTag("error", " ".join(str(exc).split())[:4000])])
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
