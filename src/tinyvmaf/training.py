"""LOSO training: one fold (train on every source but one, score the held-out one), or every fold of
a configuration in one job (``fold.heldout=all``), stacked into one network or one after the
other; each fold is logged to MLflow as its own run."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.environments import LightningEnvironment
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from tinyvmaf.cache import TeacherCache
from tinyvmaf.corpus import Corpus
from tinyvmaf.data import LosoDataModule
from tinyvmaf.errors import TinyVmafError, finite_number, instantiate_checked
from tinyvmaf.files import config_literal
from tinyvmaf.metrics import METRIC_NAMES, HeldoutHistory
from tinyvmaf.model import TinyVmafModule, VmafNet, count_params
from tinyvmaf.onnx_io import check_graph, onnx_graph
from tinyvmaf.stacked import StackedLosoDataModule, StackedTinyVmafModule
from tinyvmaf.tracking import (
    FOLD,
    KIND,
    LOSO,
    PARENT,
    TrackedRun,
    Tracking,
    find_sweep_run,
    log_dataset,
    log_onnx_model,
    quoted,
    retire_earlier_attempts,
    sweep_id,
    tracked_run,
)

if TYPE_CHECKING:
    from tinyvmaf.search import SearchTrial


def target_name(node: DictConfig | None) -> str:
    """The class a config node instantiates, for MLflow params: ``OneCycleLR``, or ``none``."""
    return (node or {}).get("_target_", "none").rsplit(".", 1)[-1]


def fold_data(cfg: DictConfig, corpus: Corpus, cache: TeacherCache, heldout: str | None) -> LosoDataModule:
    """The configured data module of one fold (``heldout=None``: every source). The source's name
    is data, handed to the constructor itself: through instantiate's options Hydra would resolve
    a name such as ``${oc.env:HOME}`` as an interpolation."""
    make = instantiate_checked(
        cfg.data, _partial_=True, corpus=corpus, cache=cache, teacher=cfg.teacher.model, seed=cfg.seed
    )
    return make(heldout=heldout)


def prepare_fit(
    cfg: DictConfig, corpus: Corpus, cache: TeacherCache, heldout: str | None, **trainer_options: Any
) -> tuple[LosoDataModule, TinyVmafModule, L.Trainer]:
    """Data (cache built if needed), seeded model and Trainer, as configured; ``heldout=None``
    trains on every source."""
    datamodule = fold_data(cfg, corpus, cache, heldout)
    datamodule.prepare_data()
    datamodule.setup("fit")
    L.seed_everything(cfg.seed, verbose=False)
    module: TinyVmafModule = instantiate_checked(cfg.model)
    return datamodule, module, make_trainer(cfg, **trainer_options)


def make_trainer(cfg: DictConfig, **options: Any) -> L.Trainer:
    """The configured Trainer, in one process whatever the machine: on a SLURM node Lightning would
    otherwise take the job for a multi-process one of its own, requeue it itself on SIGUSR1 (the
    launcher's business) and warn that ``srun`` is not used."""
    return instantiate_checked(cfg.trainer, plugins=[LightningEnvironment()], **options)


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


def finished_runs(client: MlflowClient, experiment_id: str, sweep: str, arch: str) -> dict[str, Run]:
    """The latest finished fold run of each fold of ``arch`` in the sweep: a rerun sweep skips those folds."""
    query = f"tags.sweep_id = {quoted(sweep, 'sweep_id')} and tags.{KIND} = '{FOLD}' and attributes.status = 'FINISHED'"
    runs = client.search_runs([experiment_id], query, max_results=50000, order_by=["attributes.start_time DESC"])
    found: dict[str, Run] = {}
    for r in runs:
        if r.data.params.get("arch") == arch:
            found.setdefault(r.data.params.get("fold"), r)
    return found


def resumed(cfg: DictConfig, done: Run) -> dict[str, float]:
    """A fold the sweep finished earlier, with this recipe: its held-out metrics, without training it again."""
    arch, heldout, sweep = cfg.arch.name, str(cfg.fold.heldout), sweep_id(cfg)
    if done.data.tags.get("recipe_hash") != recipe_hash(cfg):
        raise TinyVmafError(
            f"sweep_id={sweep}: {arch} fold={heldout} already finished there with another recipe (run {done.info.run_id}); "
            "give a new sweep_id to train this one"
        )
    print(f"{arch} fold={heldout}: finished earlier in sweep {sweep} (run {done.info.run_id}); not trained again")
    return {k: done.data.metrics[k] for k in (*(f"heldout_{m}" for m in METRIC_NAMES), "train_loss")}


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
    The folds of such a job train at once as one stacked network (``stack_folds=true``, the
    default) or one after the other exactly as separate runs (``stack_folds=false``).

    A fold that the sweep (``sweep_id``) already finished with the same recipe is not trained
    again: an interrupted or preempted sweep is resumed by running the same command.
    """
    check_options(cfg)
    torch.set_num_threads(cfg.torch_threads)
    tracking: Tracking = instantiate_checked(cfg.tracking)
    retire_earlier_attempts(*tracking.experiment())
    sweep_run = find_sweep_run(*tracking.experiment(), sweep_id(cfg))  # opened by the launching process
    parent = sweep_run.info.run_id if sweep_run is not None else None
    trial = search_trial(cfg)
    if str(cfg.fold.heldout) == ALL_FOLDS:
        return train_every_fold(cfg, tracking, parent, trial)
    if trial is not None:
        raise TinyVmafError(
            f"search.trial={trial.number}: a search trial is a whole-configuration job (fold.heldout=all)"
        )
    client, experiment_id = tracking.experiment()
    done = finished_runs(client, experiment_id, sweep_id(cfg), cfg.arch.name).get(str(cfg.fold.heldout))
    return resumed(cfg, done) if done is not None else train_fold(cfg, tracking, parent)


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


def fold_config(cfg: DictConfig, corpus: Corpus, source: str) -> DictConfig:
    """The configuration of one fold of a whole-configuration job: what its separate run is given."""
    names = {"heldout": config_literal(source), "corpus": config_literal(corpus.name)}  # data, never interpolations
    return OmegaConf.merge(cfg, {"fold": names})  # a new config each


def train_every_fold(
    cfg: DictConfig, tracking: Tracking, parent_run_id: str | None, trial: SearchTrial | None
) -> float | None:
    """One run for the configuration (under the sweep's run), one child run per held-out source;
    the configuration's run carries the LOSO means and the worst fold. As a search trial it reports
    the mean held-out RMSE to the study as training goes (``search.report_percent``), stops when
    the pruner says so (returning None) and tells the study its objective."""
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
        # A search trial is never resumed: a rerun of the search asks the study for the trial again.
        done = {} if trial is not None else finished_runs(client, experiment_id, sweep, arch)
        per_fold = {s: resumed(fold_config(cfg, corpus, s), done[s]) for s in sources if s in done}
        todo = [s for s in sources if s not in done]
        stacked = bool(todo) and cfg.stack_folds
        train_folds = train_stacked if stacked else train_one_after_another
        trained, pruned = train_folds(cfg, tracking, parent.run_id, corpus, todo, trial)
        per_fold.update(trained)
        rmse = [m["heldout_rmse"] for m in per_fold.values()]
        summary = {
            "loso_rmse_mean": float(np.mean(rmse)),
            "loso_rmse_worst": float(np.max(rmse)),
            "loso_plcc_mean": float(np.mean([m["heldout_plcc"] for m in per_fold.values()])),
            "loso_srocc_mean": float(np.mean([m["heldout_srocc"] for m in per_fold.values()])),
            "folds_done": 0 if pruned and stacked else len(per_fold),  # trained to their last epoch
        }
        parent.log_metrics([{"step": 0, **summary}], step_key="step")
        if pruned is not None:
            parent.log_tags({"pruned": pruned})
            trial.pruned()
            print(f"{name}: pruned {pruned} (mean held-out RMSE then {summary['loso_rmse_mean']:.4f})")
            return None
        if trial is not None:
            trial.complete(summary["loso_rmse_mean"], summary)
    print(f"{name} fold=all: " + " ".join(f"{k}={v:.4f}" for k, v in summary.items()))
    return summary["loso_rmse_mean"]


def train_one_after_another(
    cfg: DictConfig,
    tracking: Tracking,
    parent_run_id: str,
    corpus: Corpus,
    sources: list[str],
    trial: SearchTrial | None,
) -> tuple[dict[str, dict[str, float]], str | None]:
    """``stack_folds=false``: each fold exactly as its separate run trains it. A trial reports the
    mean RMSE of the folds so far after each fold, at the percent of its folds done."""
    per_fold: dict[str, dict[str, float]] = {}
    for i, source in enumerate(sources):
        per_fold[source] = train_fold(fold_config(cfg, corpus, source), tracking, parent_run_id)
        mean = float(np.mean([m["heldout_rmse"] for m in per_fold.values()]))
        if trial is not None and i + 1 < len(sources) and trial.report(round(100 * (i + 1) / len(sources)), mean):
            return per_fold, f"after {i + 1} of {len(sources)} folds"
    return per_fold, None


class ReportToTrial(L.Callback):
    """A search trial's stacked job: the mean held-out RMSE over its folds goes to the study at
    ``percents`` of its epochs (Optuna's step = that percent), and training stops when the pruner says so."""

    def __init__(self, trial: SearchTrial, history: HeldoutHistory, max_epochs: int, percents: list[int]) -> None:
        self.trial, self.history, self.max_epochs = trial, history, max_epochs
        self.at: dict[int, int] = {}  # epoch index -> percent; with few epochs, the first percent that lands on it
        for p in sorted(percents):
            if 0 < p < 100:
                self.at.setdefault(max(1, round(max_epochs * p / 100)) - 1, int(p))
        self.pruned: str | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch not in self.at:
            return
        mean = float(np.mean([h[-1]["heldout_rmse"] for h in self.history.histories]))
        if self.trial.report(self.at[epoch], mean):
            self.pruned = f"at epoch {epoch + 1} of {self.max_epochs}"
            trainer.should_stop = True


def train_stacked(
    cfg: DictConfig,
    tracking: Tracking,
    parent_run_id: str,
    corpus: Corpus,
    sources: list[str],
    trial: SearchTrial | None,
) -> tuple[dict[str, dict[str, float]], str | None]:
    """``stack_folds=true``: every fold in ``sources`` trained at once as one stacked network, each
    fold with the data, standardization, augmentation, initialization and shuffling of its
    separate run; then each fold logged as its own run, as a separate run logs it."""
    client, experiment_id = tracking.experiment()
    cache: TeacherCache = instantiate_checked(cfg.cache)
    configs = [fold_config(cfg, corpus, s) for s in sources]
    with ExitStack() as runs:
        fold_runs = [runs.enter_context(open_fold_run(client, experiment_id, c, parent_run_id)) for c in configs]
        folds = [fold_data(cfg, corpus, cache, s) for s in sources]
        datamodule = StackedLosoDataModule(folds)
        datamodule.prepare_data()
        datamodule.setup("fit")
        L.seed_everything(cfg.seed, verbose=False)  # every fold starts from the init of its separate run
        single: TinyVmafModule = instantiate_checked(cfg.model)
        module = StackedTinyVmafModule(single, len(sources))
        history = HeldoutHistory()
        report = (
            ReportToTrial(trial, history, cfg.trainer.max_epochs, list(cfg.search.report_percent)) if trial else None
        )
        trainer = make_trainer(cfg, callbacks=[history, *([report] if report else [])])
        for run, fold in zip(fold_runs, folds):
            log_fold_inputs(run, client, corpus, fold, single.n_params, single.activation)
        trainer.fit(module, datamodule=datamodule)
        if not history.histories:
            raise TinyVmafError(f"{cfg.arch.name} fold=all: training ended without a single held-out evaluation")
        pruned = report.pruned if report else None
        per_fold = {}
        for k, (run, fold_cfg, fold) in enumerate(zip(fold_runs, configs, folds)):
            log_fold_result(run, tracking, fold_cfg, module.model.fold(k), fold, history.histories[k])
            if pruned is not None:
                run.log_tags({"pruned": pruned})
                run.end_status = "KILLED"
            per_fold[fold.heldout] = history.final(k)
            print_fold(cfg.arch.name, fold.heldout, per_fold[fold.heldout])
    return per_fold, pruned


def open_fold_run(client: MlflowClient, experiment_id: str, cfg: DictConfig, parent_run_id: str | None):
    """A fold's MLflow run (a child of ``parent_run_id`` when given), opened with its tags and params."""
    tags = {
        "sweep_id": sweep_id(cfg), KIND: FOLD, "recipe_hash": recipe_hash(cfg),
        # Where the run's process lives: evaluate.py tells a killed run from one still going.
        "host": os.uname().nodename, "pid": str(os.getpid()),
        **({PARENT: parent_run_id} if parent_run_id is not None else {}),
    }  # fmt: skip
    return tracked_run(client, experiment_id, f"{cfg.arch.name}-{cfg.fold.heldout}", tags, run_params(cfg))


def check_fold_corpus(cfg: DictConfig, corpus: Corpus) -> None:
    if cfg.fold.get("corpus") not in (None, corpus.name):
        raise TinyVmafError(
            f"fold={cfg.fold.heldout} belongs to corpus {cfg.fold.corpus!r}, not {corpus.name!r}: "
            f"run python make_folds.py with the same corpus options first"
        )


def log_fold_inputs(
    run: TrackedRun, client: MlflowClient, corpus: Corpus, data: LosoDataModule, n_params: int, activation: str
) -> None:
    """What a fold trains on, before it trains: corpus (as the run's dataset), frame counts, held-out statistics."""
    table = data.table
    run.log_tags({"corpus_sources": json.dumps(table.sources), "libvmaf_version": table.libvmaf_version})
    run.log_params({"activation": activation})
    log_dataset(
        client,
        run.run_id,
        corpus.name,
        table.manifest[:12],
        str(corpus.location),
        f"training; held out: {data.heldout}",
    )
    run.log_metrics(
        [
            {
                "step": 0,
                "n_params": n_params,
                "n_train_frames": len(data.train_x),
                "n_heldout_frames": len(data.test_x),
                "heldout_teacher_mean": float(data.test_y.double().mean()),
                "heldout_teacher_std": float(data.test_y.double().std(correction=0)),
            }
        ],
        step_key="step",
    )


def log_fold_result(
    run: TrackedRun, tracking: Tracking, cfg: DictConfig, model: VmafNet, data: LosoDataModule, history: list[dict]
) -> None:
    """What a fold trained: its per-epoch metrics, config, weights, held-out predictions and (with
    ``tracking.log_models``) its ONNX model, checked against torch on its held-out frames."""
    run.log_metrics(history)
    model = model.cpu().eval()
    with torch.no_grad():
        predicted = model.predict(data.test_x)
    with tempfile.TemporaryDirectory(prefix="tinyvmaf-run-") as tmp:
        (Path(tmp) / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        arch = OmegaConf.to_container(cfg.arch, resolve=True)
        torch.save(
            {"state_dict": model.state_dict(), "arch": arch, "log_motion": model.log_motion}, Path(tmp) / "model.pt"
        )
        np.savez(Path(tmp) / "heldout.npz", teacher=data.test_y.numpy(), predicted=predicted.numpy())
        run.log_artifacts(Path(tmp))
    if tracking.log_models:
        client, experiment_id = tracking.experiment()
        proto = onnx_graph(model)
        check_graph(proto, model, data.test_x.numpy())
        log_onnx_model(
            client, experiment_id, run.run_id, proto, data.test_x[:5].numpy(), step=int(history[-1]["epoch"])
        )


def print_fold(arch: str, heldout: str, final: dict[str, float]) -> None:
    print(f"{arch} fold={heldout}: " + " ".join(f"{k}={v:.4f}" for k, v in final.items()))


def train_fold(cfg: DictConfig, tracking: Tracking, parent_run_id: str | None) -> dict[str, float]:
    """One LOSO fold, as its own MLflow run (a child of ``parent_run_id`` when given)."""
    client, experiment_id = tracking.experiment()
    arch, heldout = cfg.arch.name, str(cfg.fold.heldout)
    with open_fold_run(client, experiment_id, cfg, parent_run_id) as run:
        corpus = instantiate_checked(cfg.corpus)
        check_fold_corpus(cfg, corpus)
        cache: TeacherCache = instantiate_checked(cfg.cache)
        history = HeldoutHistory()
        datamodule, module, trainer = prepare_fit(cfg, corpus, cache, heldout, callbacks=[history])
        log_fold_inputs(run, client, corpus, datamodule, module.n_params, module.activation)
        trainer.fit(module, datamodule=datamodule)
        if not history.history:
            raise TinyVmafError(f"{arch} fold={heldout}: training ended without a single held-out evaluation")
        log_fold_result(run, tracking, cfg, module.model, datamodule, history.history)
    final = history.final()
    print_fold(arch, heldout, final)
    return final
