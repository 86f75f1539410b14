"""One LOSO fold: train on every source but one, score the held-out one, log it all to MLflow."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from tinyvmaf.cache import TeacherCache
from tinyvmaf.corpus import Corpus
from tinyvmaf.data import LosoDataModule
from tinyvmaf.errors import TinyVmafError, finite_number, instantiate_checked
from tinyvmaf.metrics import METRIC_NAMES, HeldoutHistory
from tinyvmaf.model import TinyVmafModule, count_params, onnx_graph
from tinyvmaf.tracking import (
    FOLD,
    KIND,
    LOSO,
    PARENT,
    Tracking,
    find_sweep_run,
    log_dataset,
    log_onnx_model,
    quoted,
    sweep_id,
    tracked_run,
)

if TYPE_CHECKING:
    from tinyvmaf.search import SearchTrial


def target_name(node: DictConfig | None) -> str:
    """The class a config node instantiates, for MLflow params: ``OneCycleLR``, or ``none``."""
    return (node or {}).get("_target_", "none").rsplit(".", 1)[-1]


def prepare_fit(
    cfg: DictConfig,
    corpus: Corpus,
    cache: TeacherCache,
    heldout: str | None,
    net: DictConfig | None = None,
    **trainer_options: Any,
) -> tuple[LosoDataModule, TinyVmafModule, L.Trainer]:
    """Data (cache built if needed), seeded model and Trainer, as configured; ``heldout=None``
    trains on every source. ``net`` overrides the arch's network (export builds several)."""
    datamodule: LosoDataModule = instantiate_checked(
        cfg.data, corpus=corpus, cache=cache, teacher=cfg.teacher.model, heldout=heldout, seed=cfg.seed
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    L.seed_everything(cfg.seed, verbose=False)
    module: TinyVmafModule = instantiate_checked(
        cfg.model, **({"net": instantiate_checked(net)} if net is not None else {})
    )
    trainer: L.Trainer = instantiate_checked(cfg.trainer, **trainer_options)
    return datamodule, module, trainer


def _positive_int(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TinyVmafError(f"{key}={value!r}: must be an integer >= 1")


def _finite(cfg: DictConfig, key: str, low: float, low_included: bool) -> None:
    value = OmegaConf.select(cfg, key)
    if not finite_number(value) or value < low or (value == low and not low_included):
        raise TinyVmafError(f"{key}={value!r}: must be a finite number {'>=' if low_included else '>'} {low:g}")


def check_options(cfg: DictConfig) -> None:
    """The training options a typo can break, checked before anything is logged: one line naming the option."""
    for key in ("trainer.max_epochs", "data.batch_size", "data.minibatches_per_step", "torch_threads"):
        _positive_int(cfg, key)
    _finite(cfg, "model.optimizer.lr", 0.0, low_included=False)
    _finite(cfg, "model.optimizer.weight_decay", 0.0, low_included=True)
    instantiate_checked(cfg.data.augment)


# What makes two runs of one (arch, fold) the same experiment: the recipe, not where it ran.
RECIPE_KEYS = ("arch", "fold", "teacher", "trainer", "data", "model", "seed", "experiment_name")


def recipe_hash(cfg: DictConfig) -> str:
    values = {k: cfg.get(k) for k in RECIPE_KEYS}
    recipe = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in values.items()}
    recipe["corpus"] = cfg.corpus.get("name")
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finished_run(client: MlflowClient, experiment_id: str, sweep: str, arch: str, heldout: str) -> Run | None:
    """The latest finished run of (arch, fold) in the sweep, if there is one: a rerun sweep skips it."""
    query = f"tags.sweep_id = {quoted(sweep, 'sweep_id')} and attributes.status = 'FINISHED'"
    runs = client.search_runs([experiment_id], query, max_results=50000, order_by=["attributes.start_time DESC"])
    return next((r for r in runs if r.data.params.get("arch") == arch and r.data.params.get("fold") == heldout), None)


ALL_FOLDS = "all"


def search_trial(cfg: DictConfig) -> SearchTrial | None:
    """The search trial this job is (``search.trial``, set by the sweeper), or None outside a search."""
    search = cfg.get("search") or {}
    if search.get("trial") is None:
        return None
    from tinyvmaf.search import SearchTrial  # optuna sets up its own logger on import: only a trial pays for it

    pruner = instantiate_checked(search.pruner) if search.get("pruner") else None
    return SearchTrial(search.study, search.storage, int(search.trial), pruner)


def train(cfg: DictConfig) -> dict[str, float] | float:
    """``train.py``: one fold as configured, returning its final held-out metrics; or, with
    ``fold.heldout=all``, every fold of the corpus in this one process (imports and set-up paid
    once: the unit for a cluster job or a search trial), returning the LOSO mean held-out RMSE.

    A fold that the sweep (``sweep_id``) already finished with the same recipe is not trained
    again: an interrupted or preempted sweep is resumed by running the same command.
    """
    check_options(cfg)
    torch.set_num_threads(cfg.torch_threads)
    tracking: Tracking = instantiate_checked(cfg.tracking)
    sweep_run = find_sweep_run(*tracking.experiment(), sweep_id(cfg))  # opened by the launching process
    parent = sweep_run.info.run_id if sweep_run is not None else None
    trial = search_trial(cfg)
    if str(cfg.fold.heldout) == ALL_FOLDS:
        return train_every_fold(cfg, tracking, parent, trial)
    if trial is not None:
        raise TinyVmafError(
            f"search.trial={trial.number}: a search trial is a whole-configuration job (fold.heldout=all)"
        )
    return train_fold(cfg, tracking, parent)


def run_params(cfg: DictConfig) -> dict[str, object]:
    """The configuration a run records as MLflow params (what it was asked to do, nothing measured)."""
    return {
        "experiment": cfg.get("experiment_name", "default"),
        "arch": cfg.arch.name,
        "hidden": json.dumps(OmegaConf.to_container(cfg.arch.net, resolve=True).get("hidden")),
        "fold": str(cfg.fold.heldout),
        "teacher": cfg.teacher.model,
        "corpus": cfg.corpus.get("name"),
        "epochs": cfg.trainer.max_epochs,
        "lr": cfg.model.optimizer.lr,
        "weight_decay": cfg.model.optimizer.get("weight_decay", 0.0),
        "scheduler": target_name(cfg.model.get("scheduler")),
        "loss": target_name(cfg.model.get("loss")),
        "log_motion": cfg.model.get("log_motion", False),
        "augment": cfg.data.augment.enabled,
        "augment_amount": cfg.data.augment.amount if cfg.data.augment.enabled else 0,
        "batch_size": cfg.data.batch_size,
        "seed": cfg.seed,
    }


def train_every_fold(
    cfg: DictConfig, tracking: Tracking, parent_run_id: str | None, trial: SearchTrial | None
) -> float | None:
    """One run for the configuration (under the sweep's run), one child run per held-out source;
    the configuration's run carries the LOSO means and the worst fold. As a search trial it reports
    each fold to the study, stops when the pruner says so (returning None) and tells the study its
    objective."""
    client, experiment_id = tracking.experiment()
    corpus, cache = instantiate_checked(cfg.corpus), instantiate_checked(cfg.cache)
    sources = cache.ready(corpus).sources
    arch, sweep = cfg.arch.name, sweep_id(cfg)
    tags = {"sweep_id": sweep, KIND: LOSO, **({PARENT: parent_run_id} if parent_run_id else {})}
    name = f"trial-{trial.number}" if trial else f"{arch}-{ALL_FOLDS}"
    with tracked_run(client, experiment_id, name, tags) as parent:
        parent.log_params(
            {**run_params(cfg), "fold": ALL_FOLDS, "folds": len(sources), **({"trial": trial.number} if trial else {})}
        )
        size, cap = count_params(instantiate_checked(cfg.arch.net)), cfg.get("search", {}).get("max_params")
        parent.log_metrics([{"step": 0, "n_params": size}], step_key="step")
        if trial is not None and cap is not None and size > cap:
            parent.log_tags({"pruned": f"{size} parameters > search.max_params={cap}"})
            trial.pruned()
            print(f"{name}: {size} parameters > search.max_params={cap}: pruned before training")
            return None
        per_fold = {}
        for step, source in enumerate(sources):
            fold_cfg = OmegaConf.merge(cfg, {"fold": {"heldout": source, "corpus": corpus.name}})  # a new config each
            per_fold[source] = train_fold(fold_cfg, tracking, parent.run_id)
            if (
                trial is not None
                and trial.fold_done(step, per_fold[source]["heldout_rmse"])
                and step + 1 < len(sources)
            ):
                break
        rmse = [m["heldout_rmse"] for m in per_fold.values()]
        summary = {
            "loso_rmse_mean": float(np.mean(rmse)),
            "loso_rmse_worst": float(np.max(rmse)),
            "loso_plcc_mean": float(np.mean([m["heldout_plcc"] for m in per_fold.values()])),
            "loso_srocc_mean": float(np.mean([m["heldout_srocc"] for m in per_fold.values()])),
            "folds_done": len(per_fold),
        }
        parent.log_metrics([{"step": 0, **summary}], step_key="step")
        if len(per_fold) < len(sources):
            parent.log_tags({"pruned": f"after {len(per_fold)} of {len(sources)} folds"})
            trial.pruned()
            print(
                f"{name}: pruned after {len(per_fold)} of {len(sources)} folds (mean RMSE so far {summary['loso_rmse_mean']:.4f})"
            )
            return None
        if trial is not None:
            trial.complete(summary["loso_rmse_mean"], summary)
    print(f"{name} fold=all: " + " ".join(f"{k}={v:.4f}" for k, v in summary.items()))
    return summary["loso_rmse_mean"]


def train_fold(cfg: DictConfig, tracking: Tracking, parent_run_id: str | None) -> dict[str, float]:
    """One LOSO fold, as its own MLflow run (a child of ``parent_run_id`` when given)."""
    client, experiment_id = tracking.experiment()
    arch, heldout, sweep, recipe = cfg.arch.name, str(cfg.fold.heldout), sweep_id(cfg), recipe_hash(cfg)
    # A search trial is never resumed: a rerun of the search asks the study for the trial again.
    done = (
        None
        if cfg.get("search", {}).get("trial") is not None
        else finished_run(client, experiment_id, sweep, arch, heldout)
    )
    if done is not None:
        if done.data.tags.get("recipe_hash") != recipe:
            raise TinyVmafError(
                f"sweep_id={sweep}: {arch} fold={heldout} already finished there with another recipe (run {done.info.run_id}); "
                "give a new sweep_id to train this one"
            )
        print(f"{arch} fold={heldout}: finished earlier in sweep {sweep} (run {done.info.run_id}); not trained again")
        return {k: done.data.metrics[k] for k in (*(f"heldout_{m}" for m in METRIC_NAMES), "train_loss")}
    tags = {
        "sweep_id": sweep, KIND: FOLD, "recipe_hash": recipe,
        # Where the run's process lives: evaluate.py tells a killed run from one still going.
        "host": os.uname().nodename, "pid": str(os.getpid()),
    }  # fmt: skip
    if parent_run_id is not None:
        tags[PARENT] = parent_run_id
    with tracked_run(client, experiment_id, f"{arch}-{heldout}", tags) as run:
        run.log_params(run_params(cfg))
        corpus = instantiate_checked(cfg.corpus)
        if cfg.fold.get("corpus") not in (None, corpus.name):
            raise TinyVmafError(
                f"fold={heldout} belongs to corpus {cfg.fold.corpus!r}, not {corpus.name!r}: "
                f"run python make_folds.py with the same corpus options first"
            )
        cache: TeacherCache = instantiate_checked(cfg.cache)
        history = HeldoutHistory()
        datamodule, module, trainer = prepare_fit(cfg, corpus, cache, heldout, callbacks=[history])
        table = datamodule.table
        run.log_tags({"corpus_sources": json.dumps(table.sources), "libvmaf_version": table.libvmaf_version})
        run.log_params({"activation": module.activation})
        log_dataset(
            client, run.run_id, corpus.name, table.manifest[:12], str(corpus.location), f"training; held out: {heldout}"
        )
        run.log_metrics(
            [
                {
                    "step": 0,
                    "n_params": module.n_params,
                    "n_train_frames": len(datamodule.train_x),
                    "n_heldout_frames": len(datamodule.test_x),
                    "heldout_teacher_mean": float(datamodule.test_y.double().mean()),
                    "heldout_teacher_std": float(datamodule.test_y.double().std(correction=0)),
                }
            ],
            step_key="step",
        )
        trainer.fit(module, datamodule=datamodule)
        if not history.history:
            raise TinyVmafError(f"{arch} fold={heldout}: training ended without a single held-out evaluation")
        run.log_metrics(history.history)
        with tempfile.TemporaryDirectory(prefix="tinyvmaf-run-") as tmp:
            (Path(tmp) / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            torch.save(
                {
                    "state_dict": module.model.state_dict(),
                    "arch": OmegaConf.to_container(cfg.arch, resolve=True),
                    "log_motion": module.model.log_motion,
                },
                Path(tmp) / "model.pt",
            )
            with torch.no_grad():
                predicted = module.model.predict(datamodule.test_x)
            np.savez(Path(tmp) / "heldout.npz", teacher=datamodule.test_y.numpy(), predicted=predicted.numpy())
            for name in ("config.yaml", "model.pt", "heldout.npz"):
                run.log_artifact(Path(tmp) / name)
        if tracking.log_models:
            log_onnx_model(client, experiment_id, run.run_id, onnx_graph(module.model), datamodule.test_x[:5].numpy())
    final = history.final
    print(f"{arch} fold={heldout}: " + " ".join(f"{k}={v:.4f}" for k, v in final.items()))
    return final
