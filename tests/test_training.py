"""LOSO training: config groups, no leakage, determinism, an end-to-end multirun into MLflow."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from helpers import LAUNCHERS, experiment_runs
from mlflow.tracking import MlflowClient

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.runs import run_params
from tinyvmaf.training import train


def test_same_seed_same_metrics(tiny_corpus, tmp_path, tiny_overrides, compose):
    cfg = compose("train", *tiny_overrides, "fold.heldout=Bars", "sweep_id=a")
    first = train(cfg)
    second = train(compose("train", *tiny_overrides, "fold.heldout=Bars", "sweep_id=b"))  # another sweep: trained again
    for name in ("heldout_plcc", "heldout_srocc", "heldout_rmse", "train_loss"):
        assert abs(first[name] - second[name]) <= 1e-6


def test_bad_fold_lists_valid_sources_and_marks_the_run_failed(tiny_corpus, tmp_path, tiny_overrides, compose):
    cfg = compose("train", *tiny_overrides, "fold.heldout=Nope", "sweep_id=bad")
    with pytest.raises(TinyVmafError, match="fold=Nope: no such source in corpus 'tiny'; valid: Bars, Mandel"):
        train(cfg)
    runs = MlflowClient(cfg.tracking.uri).search_runs([experiment_id(cfg)])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "no such source" in runs[0].data.tags["error"]


def test_fold_whose_every_clip_failed_says_so(tiny_corpus, tmp_path, capsys, tiny_overrides, compose):
    for clip in (tiny_corpus / "dis").glob("Mandel__*.mp4"):
        clip.write_bytes(b"not a video")
    cfg = compose("train", *tiny_overrides, "fold.heldout=Mandel", "sweep_id=failed-source")
    with pytest.raises(
        TinyVmafError, match="fold=Mandel: every clip of this source failed to build.*; cached sources: Bars$"
    ):
        train(cfg)
    assert capsys.readouterr().out.count("warning: Mandel__") == 3  # the build's own one-line reasons


def test_missing_cache_without_build_is_an_error(tiny_corpus, tmp_path, tiny_overrides, compose):
    cfg = compose("train", *tiny_overrides, "fold.heldout=Bars", "data.build_cache=false")
    with pytest.raises(
        TinyVmafError, match="frames.npz: the teacher cache of corpus 'tiny' is missing or empty; build it first"
    ):
        train(cfg)


def test_nan_loss_is_an_error(tiny_corpus, tmp_path, tiny_overrides, compose):
    cfg = compose("train", *tiny_overrides, "fold.heldout=Bars", "model.optimizer.lr=1e30", "model.scheduler=null")
    with pytest.raises(TinyVmafError, match="the training loss became (nan|inf)"):
        train(cfg)


def experiment_id(cfg) -> str:
    return MlflowClient(cfg.tracking.uri).get_experiment_by_name(cfg.tracking.experiment).experiment_id


@pytest.mark.slow
def test_tiny_multirun_end_to_end_with_one_bad_fold(
    tiny_corpus, tmp_path, tiny_overrides, compose, run_entry, repo, monkeypatch
):
    overrides = tiny_overrides
    proc = run_entry("train.py", "-m", "arch=mlp_small,linear", "fold.heldout=Bars,Mandel,Ghost", *overrides)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: fold=Ghost: no such source in corpus 'tiny'; valid: Bars, Mandel" in proc.stderr
    assert "2 of 6 jobs failed" in proc.stderr
    cfg = compose("train", *overrides)
    client = MlflowClient(cfg.tracking.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking.uri)  # for mlflow.models.get_model_info
    everything = client.search_runs([experiment_id(cfg)])
    (sweep,) = [r for r in everything if r.data.tags["kind"] == "sweep"]
    runs = [r for r in everything if r.data.tags["kind"] == "fold"]
    assert len(runs) == 6 and {r.data.tags["sweep_id"] for r in everything} == {sweep.info.run_name}
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted((r.data.params["arch"], r.data.params["fold"]) for r in finished) == [
        ("linear", "Bars"),
        ("linear", "Mandel"),
        ("mlp_small", "Bars"),
        ("mlp_small", "Mandel"),
    ]
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    for r in runs:  # every fold under the sweep's run, with where it came from
        assert r.data.tags["mlflow.parentRunId"] == sweep.info.run_id and "nested_by" not in r.data.tags
        assert r.data.tags["mlflow.source.git.commit"] == commit and r.data.tags["mlflow.source.name"] == "train.py"
        assert (
            r.data.tags["command"].startswith("python train.py ")
            and f"fold.heldout={r.data.params['fold']}" in r.data.tags["command"]
        )
    for r in finished:
        p, m = r.data.params, r.data.metrics
        # params are configuration only, each logged once (not also as a tag); measurements are metrics
        assert set(p) == set(run_params(cfg)) | {"activation"} and not set(p) & set(r.data.tags)
        assert m["n_params"] == {"mlp_small": 257, "linear": 7}[p["arch"]] and m["n_heldout_frames"] == 24
        assert p["epochs"] == "3" and p["corpus"] == "tiny" and r.data.tags["libvmaf_version"]
        assert {"heldout_plcc", "heldout_srocc", "heldout_rmse", "train_loss", "heldout_teacher_mean"} <= set(m)
        assert -1 <= m["heldout_plcc"] <= 1 and m["heldout_rmse"] >= 0
        history = client.get_metric_history(r.info.run_id, "heldout_rmse")
        assert [h.step for h in history] == [0, 1, 2] and history[-1].value == m["heldout_rmse"]
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert artifacts == {"config.yaml", "model.pt", "heldout.npz"}
        (dataset,) = r.inputs.dataset_inputs  # the corpus, as MLflow's dataset input
        assert dataset.dataset.name == "tiny" and len(dataset.dataset.digest) == 12
        assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == f"training; held out: {p['fold']}"
        (logged,) = r.outputs.model_outputs  # the fold's model, logged as an MLflow model, not registered
        model = mlflow.models.get_model_info(f"models:/{logged.model_id}")
        (spec,) = model.signature.inputs.inputs
        assert (spec.name, str(spec.type), spec.shape) == ("features", "float32", (-1, 6))
    assert client.search_registered_models() == []
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert {r.data.params["fold"] for r in failed} == {"Ghost"}
    # the sweep's run carries its digest: per-arch aggregates, completeness, the files
    small = [r.data.metrics["heldout_rmse"] for r in finished if r.data.params["arch"] == "mlp_small"]
    assert sweep.data.metrics["mlp_small/rmse_mean"] == pytest.approx(np.mean(small))
    assert sweep.data.metrics["mlp_small/rmse_worst"] == max(small)
    assert (sweep.data.metrics["folds_finished"], sweep.data.metrics["folds_failed"]) == (4, 2)
    assert sweep.info.status == "FAILED" and "incomplete" in sweep.data.tags["error"]
    assert {a.path for a in client.list_artifacts(sweep.info.run_id)} == {
        "digest.md", "digest.json", "scatter.png", "rmse_per_fold.png", "jobs.json",
    }  # fmt: skip


def test_unknown_arch_is_refused_before_any_run(tmp_path, run_entry):
    proc = run_entry("train.py", "-m", "arch=mlp_huge", f"tracking.uri=sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert proc.returncode == 1
    assert "Could not find 'arch/mlp_huge'" in proc.stderr
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_one_fold_on_the_gpu_matches_the_cpu(tiny_overrides, compose):
    cpu = train(compose("train", *tiny_overrides, "fold.heldout=Bars", "sweep_id=cpu"))
    gpu = train(compose("train", *tiny_overrides, "fold.heldout=Bars", "sweep_id=gpu", "trainer=gpu"))
    assert set(gpu) == set(cpu) and abs(gpu["heldout_rmse"] - cpu["heldout_rmse"]) <= 0.05 * cpu["heldout_rmse"] + 1e-3


@pytest.mark.slow
def test_a_source_named_like_an_interpolation_is_trained_under_its_own_name(
    tiny_corpus_master, tmp_path, repo, run_entry
):
    name = "${oc.env:HOME}"
    root = Path(shutil.copytree(tiny_corpus_master, tmp_path / "corpus"))
    (root / "ref" / "Mandel.y4m").rename(root / "ref" / f"{name}.y4m")
    for clip in (root / "dis").glob("Mandel__*"):
        clip.rename(clip.with_name(clip.name.replace("Mandel", name)))
    corpus = ["corpus=directory", f"corpus.root={root}", "corpus.name=interpolated"]
    store = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    common = [*corpus, f"paths.data_dir={tmp_path}/data", f"tracking.uri={store}", "trainer.max_epochs=1",
              "data.batch_size=8", "cache.models=[vmaf_v0.6.1]", "arch=linear"]  # fmt: skip
    group = repo / "configs" / "fold" / "interpolated"
    try:
        assert run_entry("make_folds.py", *corpus, f"paths.data_dir={tmp_path}/data").returncode == 0
        proc = run_entry("train.py", "-m", *common, "+fold/interpolated=glob(*)", "sweep_id=by-fold")
        assert proc.returncode == 0, proc.stderr
    finally:
        shutil.rmtree(group, ignore_errors=True)
    assert f"linear fold={name}: " in proc.stdout and os.environ["HOME"] not in proc.stdout.replace(str(tmp_path), "")
    proc = run_entry("train.py", *common, "fold.heldout=all", "fold.corpus=interpolated", "sweep_id=stacked")
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("tinyvmaf-loso").experiment_id
    for sweep in ("by-fold", "stacked"):
        runs = client.search_runs([experiment], f"tags.sweep_id = '{sweep}' and tags.kind = 'fold'")
        assert sorted(r.data.params["fold"] for r in runs) == sorted(["Bars", name])
        assert all(r.info.status == "FINISHED" for r in runs)


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
        for name in ("heldout_rmse", "heldout_plcc", "heldout_srocc", "train_loss", "domain_max_error"):
            assert abs(child.data.metrics[name] - alone[name]) <= 1e-6
    for arch, parent in parents.items():
        rmse = [c.data.metrics["heldout_rmse"] for c in children if c.data.params["arch"] == arch]
        assert parent.data.metrics["loso_rmse_mean"] == pytest.approx(sum(rmse) / 2) and parent.data.metrics[
            "loso_rmse_worst"
        ] == max(rmse)
        domain = [c.data.metrics["domain_max_error"] for c in children if c.data.params["arch"] == arch]
        assert parent.data.metrics["loso_domain_max_error"] == max(domain)


@pytest.mark.parametrize(
    "option, message",
    [
        ("trainer.max_epochs=0", "trainer.max_epochs=0: must be an integer >= 1"),
        ("trainer.max_epochs=-1", "trainer.max_epochs=-1: must be an integer >= 1"),
        ("data.batch_size=0", "data.batch_size=0: must be an integer >= 1"),
        ("data.batch_size=-5", "data.batch_size=-5: must be an integer >= 1"),
        ("model.optimizer.lr=nan", "model.optimizer.lr=nan: must be a finite number > 0"),
        ("model.optimizer.lr=0", "model.optimizer.lr=0: must be a finite number > 0"),
        ("data.augment.edge=1.5", r"data.augment.edge=1.5: must be in \[0, 1\]"),
        ("data.augment.amount=-1", "data.augment.amount=-1: must be a finite number >= 0"),
        ("search.domain_limit=0", "search.domain_limit=0: must be a finite number > 0"),
        ("search.domain_limit=inf", "search.domain_limit=inf: must be a finite number > 0"),
        ("+teacher.chroma_correction=yes", "teacher.chroma_correction='yes': must be true or false"),
        ("stack_folds=no", "stack_folds='no': must be true or false"),  # "no" is true to Python
        ("tracking.log_models=0", "tracking.log_models=0: must be true or false"),
        ("data.augment.enabled=off", "data.augment.enabled='off': must be true or false"),
        ("seed=-1", r"seed=-1: must be an integer from 0 to 2\*\*32 - 1"),
        ("seed=4294967296", r"seed=4294967296: must be an integer from 0 to 2\*\*32 - 1"),
        (
            "+teacher.chroma_correction=true",
            "teacher.chroma_correction=true: teacher vmaf_v0.6.1 has no chroma correction",
        ),
    ],
)
def test_training_options_are_checked_before_anything_is_logged(tiny_overrides, compose, tmp_path, option, message):
    cfg = compose("train", *tiny_overrides, "fold.heldout=Bars", "model.scheduler=null", option)
    with pytest.raises(TinyVmafError, match=f"^{message}$"):
        train(cfg)
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_a_bad_option_is_one_line_from_the_command_line(tiny_overrides, run_entry):
    proc = run_entry("train.py", *tiny_overrides, "trainer.max_epochs=0")
    assert proc.returncode == 1 and proc.stderr.strip() == "error: trainer.max_epochs=0: must be an integer >= 1"


def test_a_loso_of_a_one_source_corpus_is_one_line(make_clip, training_overrides, compose, tmp_path):
    root = tmp_path / "solo"
    make_clip(root / "ref" / "Solo.y4m", "testsrc2", frames=4)
    make_clip(root / "dis" / "Solo__crf40.mp4", "testsrc2", frames=4, codec=["-c:v", "libx264", "-crf", "40"])
    cfg = compose("train", *training_overrides(root, tmp_path), "fold.heldout=all")
    with pytest.raises(
        TinyVmafError, match=r"^fold.heldout=all: leave-one-source-out needs two sources or more; corpus "
    ):
        train(cfg)
