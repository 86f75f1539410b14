"""MLflow as its users meet it: a store that can be moved, the UI's link, models that load by name."""

from __future__ import annotations

import json
import shutil

import mlflow
import numpy as np
import pytest
import requests
from mlflow.tracking import MlflowClient
from servers import mlflow_ui

from tinyvmaf.tracking import RUNS_VIEW, VIEW_KEY, runs_table_url


def runs_by_kind(client: MlflowClient) -> dict[str, list]:
    experiment = client.get_experiment_by_name("tinyvmaf-loso")
    found: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        found.setdefault(run.data.tags["kind"], []).append(run)
    return found


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
