"""LOSO training: one fold (train on every source but one, score the held-out one), or every fold of
a configuration in one job (``fold.heldout=all``), stacked into one network or one after the
other; each fold is logged to MLflow as its own run.

``train`` is lightning-hydra-template's shape: it builds the job's objects once (``Job``: the
corpus, its teacher cache, the MLflow store, the factories of each fold's data module, module and
Trainer) and hands them down; nothing below it reads the configuration.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.environments import LightningEnvironment
from mlflow.entities import Run
from omegaconf import DictConfig, OmegaConf

from tinyvmaf.cache import TeacherCache
from tinyvmaf.corpus import Corpus
from tinyvmaf.data import LosoDataModule
from tinyvmaf.errors import TinyVmafError, boolean_option, finite_number, instantiate_checked, seed_option
from tinyvmaf.features import chroma_correction
from tinyvmaf.fused import usable_cores
from tinyvmaf.metrics import HeldoutHistory, clip_metrics, domain_max_error
from tinyvmaf.model import TinyVmafModule, VmafNet, count_params
from tinyvmaf.onnx_io import check_graph, onnx_graph
from tinyvmaf.runs import (
    ALL_FOLDS,
    CLIP,
    DOMAIN_MAX_ERROR,
    HELDOUT,
    HELDOUT_CLIP,
    LOSO_MEAN,
    METRIC_NAMES,
    Kind,
    Metric,
    Param,
    Tag,
    by_metric_name,
    dataset_digest,
    finished_folds,
    fold_config,
    fold_run_tags,
    latest_per_fold,
    loso_figures,
    recipe_hash,
    run_params,
)
from tinyvmaf.stacked import StackedLosoDataModule, StackedTinyVmafModule, stacks
from tinyvmaf.teacher.function import load_teacher, student_inputs
from tinyvmaf.tracking import (
    TrackedRun,
    Tracking,
    find_sweep_run,
    log_dataset,
    log_onnx_model,
    retire_earlier_attempts,
    sweep_id,
    tracked_run,
)

if TYPE_CHECKING:
    from tinyvmaf.search import SearchTrial


def _positive_int(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TinyVmafError(f"{key}={value!r}: must be an integer >= 1")


def _finite(cfg: DictConfig, key: str, low: float, low_included: bool) -> None:
    value = OmegaConf.select(cfg, key)
    if not finite_number(value) or value < low or (value == low and not low_included):
        raise TinyVmafError(f"{key}={value!r}: must be a finite number {'>=' if low_included else '>'} {low:g}")


# Options read as true or false: a string (stack_folds=no) would be true to Python.
BOOLEAN_OPTIONS = ("stack_folds", "tracking.log_models", "data.build_cache", "data.augment.enabled")


def check_options(cfg: DictConfig) -> None:
    """The training options a typo can break, checked before anything is logged: one line naming the option."""
    for key in ("trainer.max_epochs", "data.batch_size", "data.minibatches_per_step", "torch_threads"):
        _positive_int(cfg, key)
    _finite(cfg, "model.optimizer.lr", 0.0, low_included=False)
    _finite(cfg, "model.optimizer.weight_decay", 0.0, low_included=True)
    if OmegaConf.select(cfg, "fold_threads") is not None:
        _positive_int(cfg, "fold_threads")
    seed_option(cfg.seed, "seed")
    for key in BOOLEAN_OPTIONS:
        if (value := OmegaConf.select(cfg, key)) is not None:
            boolean_option(value, key)
    if OmegaConf.select(cfg, "search.domain_limit") is not None:
        _finite(cfg, "search.domain_limit", 0.0, low_included=False)
    instantiate_checked(cfg.data.augment)
    chroma_correction(cfg.teacher.model, cfg.teacher.get("chroma_correction", False))


@dataclass(frozen=True)
class FoldRecipe:
    """One fold as its MLflow run records it: what it was asked (params, the resolved config) and
    its recipe's hash, by which a rerun sweep resumes and export finds its evidence."""

    arch: str
    heldout: str
    params: dict[str, object]
    hash: str
    config_yaml: str
    arch_config: dict  # the arch's resolved config, saved beside the weights

    @classmethod
    def of(cls, cfg: DictConfig) -> FoldRecipe:
        params = run_params(cfg)
        yaml, arch = OmegaConf.to_yaml(cfg, resolve=True), OmegaConf.to_container(cfg.arch, resolve=True)
        return cls(cfg.arch.name, str(cfg.fold.heldout), params, recipe_hash(cfg), yaml, arch)


class Job:
    """What one job builds once from its configuration (its options checked: ``check_options``) and
    hands down: the corpus, its teacher cache, the MLflow store, and the factories of a fold's data
    module, module and Trainer."""

    def __init__(self, cfg: DictConfig, corpus: Corpus, cache: TeacherCache, tracking: Tracking) -> None:
        self.corpus, self.cache, self.tracking = corpus, cache, tracking
        # export's configuration has no fold of its own: its folds are those of its LOSO (``loso``)
        self.heldout = str(cfg.fold.heldout) if cfg.get("fold") is not None else None
        self.arch, self.sweep, self.teacher = cfg.arch.name, sweep_id(cfg), cfg.teacher.model
        self.seed, self.max_epochs, self.stack_folds = cfg.seed, cfg.trainer.max_epochs, bool(cfg.stack_folds)
        self.fold_threads = cfg.get("fold_threads") or usable_cores()
        self.trial = search_trial(cfg)
        self.report_percent = list(cfg.search.report_percent) if self.trial else []
        self.max_params = (cfg.get("search") or {}).get("max_params")
        self.domain_limit = (cfg.get("search") or {}).get("domain_limit")
        correct_chroma = cfg.teacher.get("chroma_correction", False)
        self.chroma = chroma_correction(self.teacher, correct_chroma)
        # Instantiated per call: each fold's module starts from its own seeded init, each Trainer is fresh.
        self._cfg = cfg
        self._make_data: Callable[..., LosoDataModule] = instantiate_checked(
            cfg.data,
            _partial_=True,
            corpus=corpus,
            cache=cache,
            teacher=cfg.teacher.model,
            seed=cfg.seed,
            chroma_correction=correct_chroma,
        )

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Job:
        check_options(cfg)  # before the corpus is made or the store opened
        torch.set_num_threads(cfg.torch_threads)
        corpus, cache = instantiate_checked(cfg.corpus), instantiate_checked(cfg.cache)
        check_fold_corpus(cfg, corpus)
        return cls(cfg, corpus, cache, instantiate_checked(cfg.tracking))

    def loso(self, sweep: str) -> Job:
        """This recipe as a whole-configuration job (every fold of the corpus) of sweep ``sweep``."""
        cfg = OmegaConf.merge(fold_config(self._cfg, self.corpus, ALL_FOLDS), {"sweep_id": sweep})
        return Job(cfg, self.corpus, self.cache, self.tracking)

    def with_seed(self, seed: int) -> Job:
        """This recipe with another seed: its initial weights, batches and augmentation."""
        return Job(OmegaConf.merge(self._cfg, {"seed": seed}), self.corpus, self.cache, self.tracking)

    def recipe(self, source: str | None = None) -> FoldRecipe:
        """The recipe of this job's fold, or of fold ``source`` of a whole-configuration job."""
        return FoldRecipe.of(self._cfg if source is None else fold_config(self._cfg, self.corpus, source))

    def data(self, heldout: str | None) -> LosoDataModule:
        """A fold's data module (``heldout=None``: every source). The source's name is data, handed
        to the constructor itself: through instantiate's options Hydra would resolve a name such as
        ``${oc.env:HOME}`` as an interpolation."""
        return self._make_data(heldout=heldout)

    def module(self) -> TinyVmafModule:
        """The configured module, seeded as every fold's separate run seeds it, its net as wide as
        its teacher's inputs and clipped to its teacher's range."""
        L.seed_everything(self.seed, verbose=False)
        inputs = student_inputs(self.teacher)
        return instantiate_checked(
            self._cfg.model,
            net={"n_features": len(inputs)},
            inputs=inputs,
            score_range=load_teacher(self.teacher).clip,
            chroma=self.chroma,
        )

    def n_params(self) -> int:
        return count_params(instantiate_checked(self._cfg.arch.net, n_features=len(student_inputs(self.teacher))))

    def trainer(self, **options: Any) -> L.Trainer:
        """The configured Trainer, in one process whatever the machine: on a SLURM node Lightning would
        otherwise take the job for a multi-process one of its own, requeue it itself on SIGUSR1 (the
        launcher's business) and warn that ``srun`` is not used."""
        return instantiate_checked(self._cfg.trainer, plugins=[LightningEnvironment()], **options)

    def fit_objects(
        self, heldout: str | None, **trainer_options: Any
    ) -> tuple[LosoDataModule, TinyVmafModule, L.Trainer]:
        """Data (cache built if needed), seeded module and Trainer of one fold; ``heldout=None``
        trains on every source."""
        datamodule = self.data(heldout)
        datamodule.prepare_data()
        datamodule.setup("fit")
        return datamodule, self.module(), self.trainer(**trainer_options)


def check_fold_corpus(cfg: DictConfig, corpus: Corpus) -> None:
    if str(cfg.fold.heldout) != ALL_FOLDS and cfg.fold.get("corpus") not in (None, corpus.name):
        raise TinyVmafError(
            f"fold={cfg.fold.heldout} belongs to corpus {cfg.fold.corpus!r}, not {corpus.name!r}: "
            f"run python make_folds.py with the same corpus options first"
        )


def search_trial(cfg: DictConfig) -> SearchTrial | None:
    """The search trial this job is (``search.trial``, set by the sweeper), or None outside a search."""
    search = cfg.get("search") or {}
    if search.get("trial") is None:
        return None
    from tinyvmaf.search import SearchTrial  # optuna sets up its own logger on import: only a trial pays for it

    pruner = instantiate_checked(search.pruner) if search.get("pruner") else None
    return SearchTrial(search.study, search.storage, int(search.trial), pruner)


def resumed(recipe: FoldRecipe, sweep: str, done: Run, data: str) -> dict[str, float]:
    """A fold the sweep finished earlier, with this recipe on this data (``data``: the digest of
    the corpus cache now): its held-out metrics, without training it again."""
    if done.data.tags.get(Tag.RECIPE_HASH) != recipe.hash:
        raise TinyVmafError(
            f"sweep_id={sweep}: {recipe.arch} fold={recipe.heldout} already finished there with another recipe "
            f"(run {done.info.run_id}); give a new sweep_id to train this one"
        )
    if dataset_digest(done) != data:  # same names, other clips: folds of two corpora must not mix
        raise TinyVmafError(
            f"sweep_id={sweep}: {recipe.arch} fold={recipe.heldout} already finished there on other data (corpus cache "
            f"{dataset_digest(done)}, now {data}: its clips changed); give a new sweep_id to train on these"
        )
    print(
        f"{recipe.arch} fold={recipe.heldout}: finished earlier in sweep {sweep} (run {done.info.run_id}); not trained again"
    )
    keys = (*HELDOUT.values(), *HELDOUT_CLIP.values(), DOMAIN_MAX_ERROR, Metric.TRAIN_LOSS)
    return {key: done.data.metrics[key] for key in keys if key in done.data.metrics}


def train(cfg: DictConfig) -> dict[str, float] | float | None:
    """``train.py``: one fold as configured, returning its final held-out metrics; or, with
    ``fold.heldout=all``, every fold of the corpus in this one process (imports and set-up paid
    once: the unit for a cluster job or a search trial), returning the LOSO mean held-out RMSE.
    The folds of such a job train at once as one stacked network (``stack_folds=true``, the
    default) or one after the other exactly as separate runs (``stack_folds=false``).

    A fold that the sweep (``sweep_id``) already finished with the same recipe is not trained
    again: an interrupted or preempted sweep is resumed by running the same command.
    """
    job = Job.from_config(cfg)
    client, experiment_id = job.tracking.experiment()
    retire_earlier_attempts(client, experiment_id)
    sweep_run = find_sweep_run(client, experiment_id, job.sweep)  # opened by the launching process
    parent = sweep_run.info.run_id if sweep_run is not None else None
    if job.heldout == ALL_FOLDS:
        return train_every_fold(job, parent)
    if job.trial is not None:
        raise TinyVmafError(
            f"search.trial={job.trial.number}: a search trial is a whole-configuration job (fold.heldout=all)"
        )
    done = latest_per_fold(finished_folds(client, experiment_id, sweep=job.sweep, arch=job.arch)).get(job.heldout)
    recipe = job.recipe()
    if done is None:
        return train_fold(job, recipe, parent)
    return resumed(recipe, job.sweep, done, job.cache.ready(job.corpus).manifest[:12])


def train_every_fold(job: Job, parent_run_id: str | None) -> float | None:
    """One run for the configuration (under the sweep's run), one child run per held-out source;
    the configuration's run carries the LOSO figures. As a search trial it reports the mean
    held-out RMSE to the study as training goes (``search.report_percent``), stops when the pruner
    says so (returning None) and tells the study its objective."""
    client, experiment_id = job.tracking.experiment()
    trial = job.trial
    table = job.cache.ready(job.corpus)
    sources = table.sources
    if len(sources) < 2:
        raise TinyVmafError(
            f"fold.heldout={ALL_FOLDS}: leave-one-source-out needs two sources or more; corpus {job.corpus.name!r} "
            f"has {len(sources)} ({', '.join(sources)})"
        )
    tags = {Tag.SWEEP_ID: job.sweep, Tag.KIND: Kind.LOSO, **({Tag.PARENT: parent_run_id} if parent_run_id else {})}
    name = f"trial-{trial.number}" if trial else f"{job.arch}-{ALL_FOLDS}"
    with tracked_run(client, experiment_id, name, tags) as parent:
        params = {Param.FOLD: ALL_FOLDS, Param.FOLDS: len(sources), **({Param.TRIAL: trial.number} if trial else {})}
        parent.log_params({**job.recipe().params, **params})
        size, cap = job.n_params(), job.max_params
        parent.log_metrics([{"step": 0, Metric.N_PARAMS: size}], step_key="step")
        if trial is not None and cap is not None and size > cap:
            parent.log_tags({Tag.PRUNED: f"{size} parameters > search.max_params={cap}"})
            trial.pruned()
            print(f"{name}: {size} parameters > search.max_params={cap}: pruned before training")
            return None
        # A search trial is never resumed: a rerun of the search asks the study for the trial again.
        done = (
            {}
            if trial is not None
            else latest_per_fold(finished_folds(client, experiment_id, sweep=job.sweep, arch=job.arch))
        )
        per_fold = {s: resumed(job.recipe(s), job.sweep, done[s], table.manifest[:12]) for s in sources if s in done}
        todo = [s for s in sources if s not in done]
        stacked = bool(todo) and job.stack_folds
        train_folds = train_stacked if stacked else train_one_after_another
        trained, pruned = train_folds(job, parent.run_id, todo)
        per_fold.update(trained)
        summary = loso_figures([by_metric_name(f) for f in per_fold.values()])
        summary[Metric.FOLDS_DONE] = 0 if pruned and stacked else len(per_fold)  # trained to their last epoch
        parent.log_metrics([{"step": 0, **summary}], step_key="step")
        objective = summary[LOSO_MEAN["rmse"]]
        if pruned is not None:
            parent.log_tags({Tag.PRUNED: pruned})
            trial.pruned()
            print(f"{name}: pruned {pruned} (mean held-out RMSE then {objective:.4f})")
            return None
        if trial is not None:
            trial.complete(objective, summary, job.domain_limit)
    print(f"{name} fold={ALL_FOLDS}: " + " ".join(f"{k}={v:.4f}" for k, v in summary.items()))
    return objective


def train_one_after_another(
    job: Job, parent_run_id: str, sources: list[str]
) -> tuple[dict[str, dict[str, float]], str | None]:
    """``stack_folds=false``: each fold exactly as its separate run trains it. A trial reports the
    mean RMSE of the folds so far after each fold, at the percent of its folds done."""
    per_fold: dict[str, dict[str, float]] = {}
    for i, source in enumerate(sources):
        per_fold[source] = train_fold(job, job.recipe(source), parent_run_id)
        mean = float(np.mean([m[HELDOUT["rmse"]] for m in per_fold.values()]))
        if (
            job.trial is not None
            and i + 1 < len(sources)
            and job.trial.report(round(100 * (i + 1) / len(sources)), mean)
        ):
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
        mean = float(np.mean([h[-1][HELDOUT["rmse"]] for h in self.history.histories]))
        if self.trial.report(self.at[epoch], mean):
            self.pruned = f"at epoch {epoch + 1} of {self.max_epochs}"
            trainer.should_stop = True


def train_stacked(job: Job, parent_run_id: str, sources: list[str]) -> tuple[dict[str, dict[str, float]], str | None]:
    """``stack_folds=true``: every fold in ``sources`` trained at once as one stacked network, each
    fold with the data, standardization, augmentation, initialization and shuffling of its
    separate run; then each fold logged as its own run, as a separate run logs it."""
    client, experiment_id = job.tracking.experiment()
    recipes = [job.recipe(s) for s in sources]
    with ExitStack() as runs:
        fold_runs = [runs.enter_context(open_fold_run(job, r, parent_run_id)) for r in recipes]
        folds = [job.data(s) for s in sources]
        datamodule = StackedLosoDataModule(folds)
        datamodule.prepare_data()
        datamodule.setup("fit")
        single = job.module()  # every fold starts from the init of its separate run
        module = StackedTinyVmafModule(single, len(sources), threads=job.fold_threads)
        history = HeldoutHistory()
        report = ReportToTrial(job.trial, history, job.max_epochs, job.report_percent) if job.trial else None
        trainer = job.trainer(callbacks=[history, *([report] if report else [])])
        for run, fold in zip(fold_runs, folds):
            log_fold_inputs(run, job, fold, single.n_params, single.activation)
        trainer.fit(module, datamodule=datamodule)
        if not history.histories:
            raise TinyVmafError(f"{job.arch} fold={ALL_FOLDS}: training ended without a single held-out evaluation")
        pruned = report.pruned if report else None
        per_fold = {}
        for k, (run, recipe, fold) in enumerate(zip(fold_runs, recipes, folds)):
            log_fold_result(run, job, recipe, module.model.fold(k), fold, history.histories[k])
            if pruned is not None:
                run.log_tags({Tag.PRUNED: pruned})
                run.end_status = "KILLED"
            per_fold[fold.heldout] = history.final(k)
            print_fold(job.arch, fold.heldout, per_fold[fold.heldout])
    return per_fold, pruned


def open_fold_run(job: Job, recipe: FoldRecipe, parent_run_id: str | None):
    """A fold's MLflow run (a child of ``parent_run_id`` when given), opened with its tags and params."""
    client, experiment_id = job.tracking.experiment()
    tags = fold_run_tags(job.sweep, recipe.hash, parent_run_id)
    return tracked_run(client, experiment_id, f"{recipe.arch}-{recipe.heldout}", tags, recipe.params)


def log_fold_inputs(run: TrackedRun, job: Job, data: LosoDataModule, n_params: int, activation: str) -> None:
    """What a fold trains on, before it trains: corpus (as the run's dataset), frame counts, held-out statistics."""
    table = data.table
    run.log_tags({Tag.CORPUS_SOURCES: json.dumps(table.sources), Tag.LIBVMAF_VERSION: table.libvmaf_version})
    run.log_params({Param.ACTIVATION: activation})
    client, _ = job.tracking.experiment()
    context = f"training; held out: {data.heldout}"
    log_dataset(client, run.run_id, job.corpus.name, table.manifest[:12], str(job.corpus.location), context)
    run.log_metrics(
        [
            {
                "step": 0,
                Metric.N_PARAMS: n_params,
                Metric.N_TRAIN_FRAMES: len(data.train_x),
                Metric.N_HELDOUT_FRAMES: len(data.test_x),
                Metric.HELDOUT_TEACHER_MEAN: float(data.test_y.double().mean()),
                Metric.HELDOUT_TEACHER_STD: float(data.test_y.double().std(correction=0)),
            }
        ],
        step_key="step",
    )


def log_fold_result(
    run: TrackedRun, job: Job, recipe: FoldRecipe, model: VmafNet, data: LosoDataModule, history: list[dict]
) -> None:
    """What a fold trained: its per-epoch metrics (per clip and its domain error too, at its last
    epoch), config, weights, held-out predictions and (with ``tracking.log_models``) its ONNX
    model, checked against torch on its held-out frames."""
    model = model.cpu().eval()
    with torch.no_grad():
        predicted = model.predict(data.test_x)
    per_clip = clip_metrics(predicted.numpy(), data.test_y.numpy(), data.test_clip)
    history[-1].update({HELDOUT_CLIP[m]: per_clip[CLIP[m]] for m in METRIC_NAMES if CLIP[m] in per_clip})
    history[-1][DOMAIN_MAX_ERROR] = domain_max_error(model, job.teacher)
    run.log_metrics(history)
    with tempfile.TemporaryDirectory(prefix="tinyvmaf-run-") as tmp:
        (Path(tmp) / "config.yaml").write_text(recipe.config_yaml)
        saved = {
            "state_dict": model.state_dict(),
            "arch": recipe.arch_config,
            "log_motion": model.log_motion,
            "chroma_correction": model.chroma is not None,
        }
        torch.save(saved, Path(tmp) / "model.pt")
        np.savez(
            Path(tmp) / "heldout.npz", teacher=data.test_y.numpy(), predicted=predicted.numpy(), clip=data.test_clip
        )
        run.log_artifacts(Path(tmp))
    if job.tracking.log_models:
        client, experiment_id = job.tracking.experiment()
        proto = onnx_graph(model)
        check_graph(proto, model, data.test_x.numpy())
        log_onnx_model(
            client, experiment_id, run.run_id, proto, data.test_x[:5].numpy(), step=int(history[-1]["epoch"])
        )


def print_fold(arch: str, heldout: str, final: dict[str, float]) -> None:
    print(f"{arch} fold={heldout}: " + " ".join(f"{k}={v:.4f}" for k, v in final.items()))


def train_fold(job: Job, recipe: FoldRecipe, parent_run_id: str | None) -> dict[str, float]:
    """One LOSO fold, as its own MLflow run (a child of ``parent_run_id`` when given). A module
    that stacks trains as a stack of one fold, through the step every stacked LOSO takes (so a
    fold trains the same alone or beside others); any other through its own autograd step."""
    with open_fold_run(job, recipe, parent_run_id) as run:
        history = HeldoutHistory()
        datamodule, module, trainer = job.fit_objects(recipe.heldout, callbacks=[history])
        log_fold_inputs(run, job, datamodule, module.n_params, module.activation)
        if stacks(module):
            stack = StackedTinyVmafModule(module, 1)
            trainer.fit(stack, datamodule=StackedLosoDataModule([datamodule]))
            model = stack.model.fold(0)
        else:
            trainer.fit(module, datamodule=datamodule)
            model = module.model
        if not history.history:
            raise TinyVmafError(
                f"{recipe.arch} fold={recipe.heldout}: training ended without a single held-out evaluation"
            )
        log_fold_result(run, job, recipe, model, datamodule, history.history)
    final = history.final()
    print_fold(recipe.arch, recipe.heldout, final)
    return final
