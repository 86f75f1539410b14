"""The run record: every key a tinyvmaf MLflow run carries, how a recipe is hashed, and the one
query for runs. Training writes through it; the digest, export, search and sweep read through it.

The run tree (``Tag.KIND``): a sweep run (``Kind.SWEEP``, named after the sweep, holding its
digest), under it the fold runs (``Kind.FOLD``), or the configuration runs of ``fold.heldout=all``
jobs and search trials (``Kind.LOSO``) with their fold runs under them; export runs
(``Kind.EXPORT``) stand alone. The names are part of tinyvmaf's interface (the MLflow UI's
columns, users' queries): keep them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from tinyvmaf.corpus import Corpus
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.files import config_literal


class Kind:
    """What a run is in the tree (its ``Tag.KIND``). These classes are namespaces of plain strings:
    MLflow and its database drivers get ``str``, never an enum."""

    SWEEP = "sweep"
    LOSO = "loso"
    FOLD = "fold"
    EXPORT = "export"


class Tag:
    KIND = "kind"
    PARENT = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under its parent
    SOURCE_NAME = "mlflow.source.name"  # MLflow's own: the entry point that ran
    SOURCE_TYPE = "mlflow.source.type"
    GIT_COMMIT = "mlflow.source.git.commit"
    COMMAND = "command"  # the entry point and its Hydra overrides, passwords hidden
    SWEEP_ID = "sweep_id"  # ties the runs of one multirun together
    RECIPE_HASH = "recipe_hash"  # a fold run's recipe (``recipe_hash``): what a rerun resumes by
    HOST = "host"  # where a fold run's process lives: the digest tells a killed run from a live one
    PID = "pid"
    CORPUS_SOURCES = "corpus_sources"  # JSON list: the sources the fold's corpus holds
    LIBVMAF_VERSION = "libvmaf_version"
    ERROR = "error"  # why a run FAILED or was KILLED, one line
    PRUNED = "pruned"  # a search trial (and its folds) stopped by the pruner, and when
    NESTED_BY = "nested_by"  # a run nested under its sweep run by evaluate.py, not by its job
    SLURM_JOB = "slurm_job"  # ``<array job>_<task>``, as squeue and sacct name it
    SLURM_JOB_ID = "slurm_job_id"  # the task's own id
    SLURM_RESTART = "slurm_restart"  # 0 for the first attempt, n after n requeues
    LAUNCHER_HOST = "launcher_host"  # a sweep run: the host and process of its latest launch, while it goes on
    LAUNCHER_PID = "launcher_pid"
    LOSO_SWEEP_ID = "loso_sweep_id"  # an export run: the sweep of its LOSO evidence
    LOSO_RUN_ID = "loso_run_id"  # ... and the run its folds sit under


class Param:
    EXPERIMENT = "experiment"  # the recipe's name (experiment_name: default, shipped...)
    ARCH = "arch"
    HIDDEN = "hidden"
    ACTIVATION = "activation"
    FOLD = "fold"  # the held-out source, or ALL_FOLDS for a configuration run
    FOLDS = "folds"
    TEACHER = "teacher"
    CORPUS = "corpus"
    EPOCHS = "epochs"
    LR = "lr"
    WEIGHT_DECAY = "weight_decay"
    SCHEDULER = "scheduler"
    LOSS = "loss"
    LOG_MOTION = "log_motion"
    AUGMENT = "augment"
    AUGMENT_AMOUNT = "augment_amount"
    BATCH_SIZE = "batch_size"
    SEED = "seed"
    TRIAL = "trial"  # a search trial's number
    SWEEP = "sweep"  # a sweep run: its command line
    ARCHS = "archs"  # a sweep run: the archs its digest covers


class Metric:
    TRAIN_LOSS = "train_loss"
    N_PARAMS = "n_params"
    N_TRAIN_FRAMES = "n_train_frames"
    N_HELDOUT_FRAMES = "n_heldout_frames"
    HELDOUT_TEACHER_MEAN = "heldout_teacher_mean"
    HELDOUT_TEACHER_STD = "heldout_teacher_std"
    FOLDS_DONE = "folds_done"  # a configuration run: folds trained to their last epoch
    FOLDS_EXPECTED = "folds_expected"  # a sweep run: its completeness
    FOLDS_FINISHED = "folds_finished"
    FOLDS_FAILED = "folds_failed"
    FOLDS_RUNNING = "folds_running"
    FOLDS_MISSING = "folds_missing"
    BEST_VALUE = "best_value"  # a search's sweep run: its best trial's objective
    FRESH_SEEDS_VALUE = "best_value_fresh_seeds"  # ... its recipe's LOSO mean RMSE over fresh seeds: unselected
    TRIALS_COMPLETE = "trials_complete"
    TRIALS_INFEASIBLE = "trials_infeasible"  # ... of them, beyond search.domain_limit
    BEST_DOMAIN_MAX_ERROR = "best_loso_domain_max_error"  # ... the best trial's guard figure


# The held-out metrics every fold is scored by (tinyvmaf.metrics computes them), in the order the
# digest shows them.
METRIC_NAMES = ("plcc", "srocc", "rmse")
# A fold run's held-out metrics, per epoch: metric name -> run key.
HELDOUT = {m: f"heldout_{m}" for m in METRIC_NAMES}
# The same metrics per clip: each clip's frames pooled as libvmaf pools them (their mean), then
# scored over the held-out source's clips (logged once, at a fold's last epoch).
HELDOUT_CLIP = {m: f"heldout_clip_{m}" for m in METRIC_NAMES}
CLIP = {m: f"clip_{m}" for m in METRIC_NAMES}  # a fold's per-clip metric, by metric name
# A fold's largest |model - teacher| over its teacher's box of valid feature values (metrics.DOMAIN_PROBE's
# points): how far it strays where no training frame lies. Logged at a fold's last epoch, under this
# name, and in a fold's dict by metric name.
DOMAIN_MAX_ERROR = "domain_max_error"
# A LOSO's figures over its folds (a configuration run's metrics, a shipped model's metadata):
# mean and sample std of each held-out metric, and the worst fold's RMSE and PLCC.
LOSO_MEAN = {m: f"loso_{m}_mean" for m in METRIC_NAMES}
LOSO_STD = {m: f"loso_{m}_std" for m in METRIC_NAMES}
LOSO_CLIP_MEAN = {m: f"loso_clip_{m}_mean" for m in METRIC_NAMES}
LOSO_CLIP_STD = {m: f"loso_clip_{m}_std" for m in METRIC_NAMES}
# Split-conformal radii from a LOSO's held-out residuals: |tiny - libvmaf| is within the radius
# for that share of held-out frames (or clips) of unseen sources.
COVERAGES = (90, 95)
INTERVAL = {(unit, c): f"interval_{unit}_{c}" for unit in ("frame", "clip") for c in COVERAGES}
# ... and per source: the radius within which a share c of a new source's frames fall, for at
# least SOURCE_CONFIDENCE of sources (conformal over the held-out sources' own c-quantiles).
SOURCE_CONFIDENCE = 0.9
INTERVAL |= {("source", c): f"interval_source_{c}" for c in COVERAGES}
# A shipped model on the check corpus (unseen sources and codecs, never trained or searched on):
# per frame and per clip, and the share of its frames and clips within each conformal radius.
CHECK = {m: f"check_{m}" for m in METRIC_NAMES}
CHECK_CLIP = {m: f"check_clip_{m}" for m in METRIC_NAMES}
CHECK_COVERAGE = {(unit, c): f"check_coverage_{unit}_{c}" for unit, c in INTERVAL}
CHECK_CORPUS = "check_corpus"
LOSO_WORST = {"rmse": "loso_rmse_worst", "plcc": "loso_plcc_worst"}
LOSO_DOMAIN_MAX_ERROR = "loso_domain_max_error"  # the largest DOMAIN_MAX_ERROR of a LOSO's folds: a search's guard
LOSO_FOLDS = "loso_folds"
# A shipped model's recipe trained again, LOSO and all, with seeds its search never saw (export's
# fresh_seeds): the mean over those seeds of each LOSO's mean RMSE. A searched recipe's own LOSO is
# the lowest of the search's noisy estimates, on the very folds it reports; this one was not chosen on.
LOSO_FRESH_SEEDS = "loso_fresh_seeds"
LOSO_FRESH_MEAN = "loso_fresh_seeds_rmse_mean"
LOSO_EXPERIMENT_ID = "loso_experiment_id"
BEST_PREFIX = "best."  # a search's sweep run: its best trial's params as tags ``best.<key>``, and ``best.trial``
# The sweep run's per-arch digest figures: ``<arch>/rmse_mean``...
DIGEST_SUFFIXES = ("mean", "std")
DIGEST_WORST = "rmse_worst"

ALL_FOLDS = "all"  # fold.heldout=all: every fold of the corpus in one job

# What makes two runs of one (arch, fold) the same experiment: the recipe, not where it ran.
RECIPE_KEYS = ("arch", "fold", "teacher", "trainer", "data", "model", "seed", "experiment_name")


def recipe_hash(cfg: DictConfig) -> str:
    values = {k: cfg.get(k) for k in RECIPE_KEYS}
    recipe = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in values.items()}
    recipe["corpus"] = cfg.corpus.get("name")
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dataset_digest(run: Run) -> str | None:
    """The digest of the corpus cache a run trained on (its MLflow dataset input: the first 12
    characters of the cache's manifest, ``FrameTable.label``)."""
    inputs = run.inputs.dataset_inputs if run.inputs else []
    return inputs[0].dataset.digest if inputs else None


def fold_config(cfg: DictConfig, corpus: Corpus, source: str) -> DictConfig:
    """The configuration of one fold of a whole-configuration job: what its separate run is given."""
    names = {"heldout": config_literal(source), "corpus": config_literal(corpus.name)}  # data, never interpolations
    return OmegaConf.merge(cfg, {"fold": names})  # a new config each


def _target_name(node: DictConfig | None) -> str:
    """The class a config node instantiates: ``OneCycleLR``, or ``none``."""
    return (node or {}).get("_target_", "none").rsplit(".", 1)[-1]


def run_params(cfg: DictConfig) -> dict[str, object]:
    """The configuration a fold run records as MLflow params (what it was asked to do, nothing measured)."""
    return {
        Param.EXPERIMENT: cfg.get("experiment_name", "default"),
        Param.ARCH: cfg.arch.name,
        Param.HIDDEN: json.dumps(OmegaConf.to_container(cfg.arch.net, resolve=True).get("hidden")),
        Param.FOLD: str(cfg.fold.heldout),
        Param.TEACHER: cfg.teacher.model,
        Param.CORPUS: cfg.corpus.get("name"),
        Param.EPOCHS: cfg.trainer.max_epochs,
        Param.LR: cfg.model.optimizer.lr,
        Param.WEIGHT_DECAY: cfg.model.optimizer.get("weight_decay", 0.0),
        Param.SCHEDULER: _target_name(cfg.model.get("scheduler")),
        Param.LOSS: _target_name(cfg.model.get("loss")),
        Param.LOG_MOTION: cfg.model.get("log_motion", False),
        Param.AUGMENT: cfg.data.augment.enabled,
        Param.AUGMENT_AMOUNT: cfg.data.augment.amount if cfg.data.augment.enabled else 0,
        Param.BATCH_SIZE: cfg.data.batch_size,
        Param.SEED: cfg.seed,
    }


def fold_run_tags(sweep: str, recipe: str, parent_run_id: str | None) -> dict[str, str]:
    """A fold run's own tags: its sweep, its recipe, and where its process lives."""
    return {
        Tag.SWEEP_ID: sweep, Tag.KIND: Kind.FOLD, Tag.RECIPE_HASH: recipe,
        Tag.HOST: os.uname().nodename, Tag.PID: str(os.getpid()),
        **({Tag.PARENT: parent_run_id} if parent_run_id is not None else {}),
    }  # fmt: skip


def slurm_tags() -> dict[str, str]:
    """This process's SLURM job as run tags (``Tag.SLURM_*``); none outside SLURM."""
    env = os.environ
    if not env.get("SLURM_JOB_ID"):
        return {}
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    return {
        Tag.SLURM_JOB: f"{array}_{task}" if array and task else env["SLURM_JOB_ID"],
        Tag.SLURM_JOB_ID: env["SLURM_JOB_ID"],
        Tag.SLURM_RESTART: env.get("SLURM_RESTART_COUNT", "0"),
    }


def heldout(run: Run) -> dict[str, float]:
    """A finished fold run's held-out metrics, by metric name (per clip too where logged)."""
    return by_metric_name(run.data.metrics)


def heldout_problem(run: Run) -> str | None:
    """Why a finished run's held-out metrics cannot be counted, or None when they can."""
    metrics = run.data.metrics
    bad = [f"{key}={metrics.get(key)}" for key in HELDOUT.values() if not math.isfinite(metrics.get(key, math.nan))]
    return f"held-out metrics missing or not finite ({', '.join(bad)})" if bad else None


def has_heldout(run: Run) -> bool:
    """Whether the run holds every held-out metric, each a finite number: what a LOSO counts."""
    return heldout_problem(run) is None


def loso_figures(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """A LOSO's figures from its folds' held-out metrics (by metric name): ``LOSO_MEAN``,
    ``LOSO_STD`` (sample std; 0 for one fold), ``LOSO_WORST`` and, where every fold has it,
    ``LOSO_CLIP_*`` and ``LOSO_DOMAIN_MAX_ERROR``."""
    figures = _mean_and_std(per_fold, dict(zip(METRIC_NAMES, METRIC_NAMES)), LOSO_MEAN, LOSO_STD)
    figures[LOSO_WORST["rmse"]] = max(float(f["rmse"]) for f in per_fold)
    figures[LOSO_WORST["plcc"]] = min(float(f["plcc"]) for f in per_fold)
    if all(CLIP["rmse"] in f for f in per_fold):  # runs from before per-clip figures lack them
        figures |= _mean_and_std(per_fold, CLIP, LOSO_CLIP_MEAN, LOSO_CLIP_STD)
    if all(DOMAIN_MAX_ERROR in f for f in per_fold):
        figures[LOSO_DOMAIN_MAX_ERROR] = max(float(f[DOMAIN_MAX_ERROR]) for f in per_fold)
    return figures


def _mean_and_std(
    per_fold: list[dict[str, float]], named: dict[str, str], means: dict[str, str], stds: dict[str, str]
) -> dict[str, float]:
    """Mean and sample std (0 for one fold) over the folds of each metric (``named[m]`` in a fold's dict)."""
    values = {m: np.array([f[named[m]] for f in per_fold], dtype=np.float64) for m in METRIC_NAMES}
    return {means[m]: float(v.mean()) for m, v in values.items()} | {
        stds[m]: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()
    }


def by_metric_name(metrics: dict[str, float]) -> dict[str, float]:
    """A fold's final held-out metrics (run keys) by metric name, per clip and its domain error too where logged."""
    named = {m: metrics[key] for m, key in HELDOUT.items()}
    if all(key in metrics for key in HELDOUT_CLIP.values()):
        named |= {CLIP[m]: metrics[key] for m, key in HELDOUT_CLIP.items()}
    if DOMAIN_MAX_ERROR in metrics:
        named[DOMAIN_MAX_ERROR] = metrics[DOMAIN_MAX_ERROR]
    return named


def quoted(value: str, what: str) -> str:
    """``value`` as a string literal of MLflow's search syntax, which has no escape character."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise TinyVmafError(f"{what}={value!r}: cannot hold both ' and \" (MLflow cannot search for it)")


def search_runs(
    client: MlflowClient,
    experiment_id: str,
    kind: str | None = None,
    *,
    sweep: str | None = None,
    arch: str | None = None,
    status: str | None = None,
    tags: dict[str, str] | None = None,
) -> list[Run]:
    """The runs of ``kind`` (any, when None), latest first; only those of ``sweep``, of ``arch``,
    in ``status`` and carrying ``tags``, where given."""
    clauses = [f"tags.{Tag.KIND} = '{kind}'"] if kind else []
    clauses += [f"tags.{Tag.SWEEP_ID} = {quoted(sweep, 'sweep_id')}"] if sweep is not None else []
    clauses += [f"params.{Param.ARCH} = {quoted(arch, 'arch')}"] if arch is not None else []
    clauses += [f"attributes.status = '{status}'"] if status else []
    clauses += [f"tags.{k} = {quoted(v, k)}" for k, v in (tags or {}).items()]
    found = client.search_runs(
        [experiment_id], " and ".join(clauses), max_results=50000, order_by=["attributes.start_time DESC"]
    )
    return list(found)


def finished_folds(
    client: MlflowClient, experiment_id: str, *, sweep: str | None = None, arch: str | None = None
) -> list[Run]:
    """The finished fold runs that hold every held-out metric, latest first: what a LOSO counts."""
    runs = search_runs(client, experiment_id, Kind.FOLD, sweep=sweep, arch=arch, status="FINISHED")
    return [r for r in runs if has_heldout(r)]


def latest_per_fold(runs: list[Run]) -> dict[str, Run]:
    """The first run (the latest, in ``search_runs``'s order) of each held-out fold."""
    found: dict[str, Run] = {}
    for r in runs:
        found.setdefault(r.data.params.get(Param.FOLD), r)
    return found
