"""A portable local MLflow store: ``mlflow-artifacts:`` URIs resolved beside the SQLite file.

MLflow records an absolute ``file://`` artifact location for each run of a SQLite store, so a
store that is moved or copied loses every artifact. tinyvmaf's local experiments record
``mlflow-artifacts:/...`` locations instead, the scheme of a server that serves artifacts: a
store opened with ``mlflow ui --backend-store-uri sqlite:///X/mlflow.db --artifacts-destination
X/artifacts`` shows them wherever ``X`` now lives. This module lets a process that writes to or
reads from the SQLite file directly (training, export, ``mlflow.pyfunc.load_model``) resolve the
same URIs to ``X/artifacts`` without a server. It is registered through MLflow's plugin entry
point ``mlflow.artifact_repository`` (``pyproject.toml``); against a server (``http(s)://``) it
is MLflow's own ``mlflow-artifacts`` repository, unchanged.

Imports are inside the function: MLflow loads this module while ``mlflow`` itself is importing.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

SQLITE_PREFIX = "sqlite:///"
ARTIFACTS_FOLDER = "artifacts"  # beside mlflow.db: where `mlflow ui --artifacts-destination` must point


def local_artifact_root(tracking_uri: str) -> Path | None:
    """``X/artifacts`` for the SQLite store ``sqlite:///X/mlflow.db``; None for any other store."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    return Path(tracking_uri.removeprefix(SQLITE_PREFIX)).parent / ARTIFACTS_FOLDER


def store_path(root: Path, artifact_uri: str) -> Path:
    """Where ``mlflow-artifacts:/<path>`` lies under a local store's artifact folder ``root``
    (resolved: a ``..`` in it shows as a path outside ``root``)."""
    return (root / unquote(urlparse(artifact_uri).path).lstrip("/")).resolve()


def artifact_repository(artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None):
    """MLflow's ``mlflow-artifacts`` repository factory, with the local SQLite store as above."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    root = local_artifact_root(tracking_uri or mlflow.get_tracking_uri())
    if root is None:
        return MlflowArtifactsRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
    path = store_path(root, artifact_uri)
    if not path.is_relative_to(root.resolve()):
        raise MlflowException(f"{artifact_uri}: reaches outside the store's artifact folder {root}")
    return LocalArtifactRepository(path.as_uri(), tracking_uri=tracking_uri, registry_uri=registry_uri)
