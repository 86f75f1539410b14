"""LOSO training: config groups, no leakage, determinism, an end-to-end multirun into MLflow."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from hydra.utils import get_object, instantiate
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from tinyvmaf.cache import TeacherCache
from tinyvmaf.corpus.directory import DirectoryCorpus
from tinyvmaf.data import LosoDataModule
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.export import with_arch
from tinyvmaf.files import config_key
from tinyvmaf.model import CensoredMSELoss, count_params
from tinyvmaf.teacher.ffmpeg_filter import FfmpegLibvmaf
from tinyvmaf.training import run_params, train


def options(repo: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (repo / "configs" / group).glob("*.yaml"))


def targets(node, key: str = ""):
    """Every (key, dict) below ``node`` (plain containers) that has a ``_target_``."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield key, node
        for k, v in node.items():
            yield from targets(v, f"{key}.{k}".strip("."))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from targets(item, f"{key}[{i}]")


@pytest.mark.parametrize(
    "group",
    [
        "arch",
        "fold",
        "teacher",
        "trainer",
        "corpus",
        "libvmaf",
        "data",
        "model",
        "model/loss",
        "tracking",
        "experiment",
    ],
)
def test_every_option_of_every_group_composes_and_names_real_targets(group, compose, repo):
    """Each ``_target_`` imports, and its options are parameters it takes: a typo in either fails here."""
    for option in options(repo, group):
        extra = {
            "corpus": {"directory": ["corpus.root=/x"], "dataset_file": ["corpus.path=/x"]},
            "libvmaf": {"cli": ["libvmaf.path=/x"]},
        }
        cfg = compose("train", f"{group}={option}", *extra.get(group, {}).get(option, []))
        if group != "experiment":
            assert OmegaConf.select(cfg, group.replace("/", ".")) is not None
        found = list(targets(OmegaConf.to_container(cfg, resolve=True)))
        assert len(found) >= 8  # corpus, libvmaf, cache, data, augment, model, loss, optimizer, trainer, tracking...
        for key, node in found:
            target = get_object(node["_target_"])
            options_given = {k: None for k in node if not str(k).startswith("_")}
            try:
                inspect.signature(target).bind_partial(**options_given)
            except TypeError as exc:
                pytest.fail(
                    f"{group}={option}: {key} ({node['_target_']}) does not take {sorted(options_given)}: {exc}"
                )


def test_fold_options_are_the_default_corpus_sources(repo):
    sources = yaml.safe_load((repo / "configs" / "corpus" / "default.yaml").read_text())["sources"]
    assert options(repo, "fold") == sorted(sources)


def test_the_shipped_recipe_is_each_archs_own_in_training_and_export(compose):
    """experiment=shipped: each arch trains with its own search's values, an arch without them with
    the default's, the command line still wins, and export.py trains each model with its arch's."""
    recipe = compose("train", "experiment=shipped").recipe
    assert recipe.mlp_small.lr != recipe.mlp_medium.lr and recipe.mlp_small.epochs != recipe.mlp_medium.epochs
    for arch, values in (
        ("mlp_small", recipe.mlp_small),
        ("mlp_medium", recipe.mlp_medium),
        ("linear", recipe.default),
    ):
        cfg = compose("train", "experiment=shipped", f"arch={arch}")
        assert (cfg.model.optimizer.lr, cfg.model.optimizer.weight_decay, cfg.trainer.max_epochs) == (
            values.lr,
            values.weight_decay,
            values.epochs,
        )
        assert cfg.model.scheduler.max_lr == values.lr and cfg.data.augment.amount == values.augment.amount
    assert compose("train", "experiment=shipped", "arch=mlp_medium", "trainer.max_epochs=7").trainer.max_epochs == 7
    export = compose("export")
    for name, arch in (("vmaf_tiny_v1", "mlp_small"), ("vmaf_tiny_v1_medium", "mlp_medium")):
        cfg = with_arch(export, export.exports[name].arch)
        assert cfg.arch.name == arch and cfg.trainer.max_epochs == recipe[arch].epochs
        assert cfg.model.optimizer.lr == recipe[arch].lr and instantiate(cfg.model.net)[0].out_features == (
            16 if arch == "mlp_small" else 64
        )


@pytest.mark.parametrize("arch, n_params", [("mlp_small", 257), ("mlp_medium", 2561), ("linear", 7)])
def test_parameter_counts(arch, n_params, compose):
    cfg = compose("train", f"arch={arch}")
    assert count_params(instantiate(cfg.model).model) == n_params


def test_censored_loss_ignores_only_errors_the_clip_removes():
    loss = CensoredMSELoss()
    target = torch.tensor([0.0, 100.0, 0.0, 100.0, 50.0, 50.0])
    prediction = torch.tensor([-7.0, 130.0, 2.0, 97.0, 120.0, -5.0], requires_grad=True)
    value = loss(prediction, target)
    value.backward()
    # beyond the bound the teacher sits on: no error; short of it, or off an interior score: plain MSE
    assert value.item() == pytest.approx((0 + 0 + 2**2 + 3**2 + 70**2 + 55**2) / 6)
    assert prediction.grad[:2].tolist() == [0.0, 0.0] and (prediction.grad[2:] != 0).all()


@pytest.fixture
def tiny_cache(tiny_corpus, tmp_path):
    corpus = DirectoryCorpus(tiny_corpus)
    cache = TeacherCache(tmp_path / "data" / "cache", FfmpegLibvmaf(), ["vmaf_v0.6.1"], n_jobs=2)
    cache.build(corpus)
    return corpus, cache


def test_standardization_is_fitted_on_the_training_sources_only(tiny_cache):
    corpus, cache = tiny_cache
    dm = LosoDataModule(corpus, cache, "vmaf_v0.6.1", heldout="Mandel")
    dm.setup()
    table = cache.load(corpus)
    train_rows = table.source_of_frame == table.sources.index("Bars")
    np.testing.assert_allclose(dm.standardization.feature_mean, table.features[train_rows].mean(axis=0))
    np.testing.assert_allclose(
        dm.standardization.feature_std,
        np.where(table.features[train_rows].std(axis=0) > 0, table.features[train_rows].std(axis=0), 1),
    )
    assert dm.standardization.target_mean == pytest.approx(table.scores["vmaf_v0.6.1"][train_rows].mean())
    assert len(dm.train_x) == 24 and len(dm.test_x) == 24
    all_mean = table.features.mean(axis=0)
    assert not np.allclose(dm.standardization.feature_mean, all_mean)


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


@pytest.mark.slow
def test_make_folds_options_sweep_exactly_the_corpus_and_leave_the_repository_clean(tiny_overrides, run_entry, repo):
    configs = repo / "configs"
    name = f"tiny make-folds {os.getpid()}"
    group = configs / "fold" / config_key(name)
    corpus = [o for o in tiny_overrides if o.startswith("corpus")] + [f"corpus.name='{name}'"]
    git_status = ["git", "status", "--porcelain", "--untracked-files=all", "--", str(configs)]
    before = subprocess.run(git_status, capture_output=True, text=True, cwd=configs)
    try:
        proc = run_entry("make_folds.py", *corpus)
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in group.iterdir()) == ["Bars.yaml", "Mandel.yaml"]
        assert f"'+fold/{group.name}=glob(*)'" in proc.stdout
        after = subprocess.run(git_status, capture_output=True, text=True, cwd=configs)
        assert before.returncode == after.returncode == 0 and after.stdout == before.stdout  # nothing tracked or new
        overrides = [o for o in tiny_overrides if not o.startswith(("corpus", "fold."))]
        proc = run_entry(
            "train.py", "-m", *overrides, *corpus, f"+fold/{group.name}=glob(*)", "arch=linear", "trainer.max_epochs=1"
        )
        assert proc.returncode == 0, proc.stderr
        assert (
            "linear fold=Bars: " in proc.stdout
            and "linear fold=Mandel: " in proc.stdout
            and proc.stdout.count("linear fold=") == 2
        )
    finally:
        shutil.rmtree(group, ignore_errors=True)


def test_module_state_follows_the_module_to_its_device(compose):
    """What trainer=gpu needs: no tensor of the module is left behind when Lightning moves it."""
    module = instantiate(compose("train").model)
    module.to("meta")
    stray = [name for name, value in vars(module).items() if isinstance(value, torch.Tensor)]
    assert not stray, f"tensors outside the module's state: {stray}"
    assert {t.device.type for t in (*module.parameters(), *module.buffers())} == {"meta"}
    assert all(
        state.device.type == "meta"
        for m in module.heldout_metrics.values()
        for state in m.metric_state.values()
        if isinstance(state, torch.Tensor)
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_one_fold_on_the_gpu_matches_the_cpu(tiny_overrides, compose):
    cpu = train(compose("train", *tiny_overrides, "fold.heldout=Bars", "sweep_id=cpu"))
    gpu = train(compose("train", *tiny_overrides, "fold.heldout=Bars", "sweep_id=gpu", "trainer=gpu"))
    assert set(gpu) == set(cpu) and abs(gpu["heldout_rmse"] - cpu["heldout_rmse"]) <= 0.05 * cpu["heldout_rmse"] + 1e-3
