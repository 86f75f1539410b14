"""What several test modules share that is not a fixture: files to feed the code under test, and
the commands that run it."""

from __future__ import annotations

import json
import resource
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from mlflow.tracking import MlflowClient
from onnx import TensorProto, helper, numpy_helper

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.teacher import FEATURE_NAMES
from tinyvmaf.tracking import Tracking

FEATURES = json.dumps(list(FEATURE_NAMES))


def onnx_file(path: Path, nodes, outputs, initializers=(), feed=None, opset: int = 17) -> Path:
    """An ONNX file built with the onnx package, with the tiny models' feature_names metadata."""
    feed = feed or helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 6])
    graph = helper.make_graph(nodes, "g", [feed], outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    model.metadata_props.add(key="feature_names", value=FEATURES)
    onnx.save_model(model, str(path))
    return path


def mean_of_features(path: Path, then: list | None = None, out=None) -> Path:
    """A model that scores the mean of the six features (times 100), then whatever ``then`` does."""
    nodes = [
        helper.make_node("ReduceMean", ["features"], ["m"], keepdims=0, axes=[1]),
        helper.make_node("Mul", ["m", "hundred"], ["vmaf" if not then else "s"]),
        *(then or []),
    ]
    out = out or helper.make_tensor_value_info("vmaf", TensorProto.FLOAT, ["batch"])
    return onnx_file(path, nodes, [out], [numpy_helper.from_array(np.array(100.0, np.float32), "hundred")], opset=13)


def max_rss_kib(command: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Run a command; its exit and the peak memory of its process (ru_maxrss of children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300)
    return proc, max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)


def score_command(repo: Path, tmp_path: Path, model: Path, log: Path, fmt: str = "csv") -> list[str]:
    return [
        sys.executable, str(repo / "score.py"), f"onnx={model}", f"log={log}", f"format={fmt}",
        f"hydra.run.dir={tmp_path}/hydra",
    ]  # fmt: skip


def set_artifact_uri(folder: Path, run_id: str, uri: str) -> None:
    with sqlite3.connect(folder / "mlruns" / "mlflow.db") as db:
        db.execute("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", (uri, run_id))


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


def store_runs(uri: str, query: str = "") -> list:
    """The runs, or none while a running command has yet to make its store: a bare MlflowClient
    polling a store another process is creating runs MLflow's migrations alongside it (or creates
    the store itself), and the command then finds a half-migrated store and stops."""
    try:
        client, experiment = Tracking(uri, "tinyvmaf-loso").existing_experiment()
    except TinyVmafError:
        return []
    return client.search_runs([experiment], query, max_results=1000)
