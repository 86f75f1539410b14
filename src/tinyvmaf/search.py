"""Hyperparameter search over the LOSO objective, on Optuna's ask-and-tell API.

``python train.py -m hparams_search=mlp_small_optuna``: the search (space, sampler, pruner,
trials, study storage) is a file in ``configs/hparams_search/``; Hydra's sweeper plugin
(``hydra_plugins.tinyvmaf_optuna_sweeper``) calls ``run_search`` in the launching process. Each
trial is one whole-configuration job (``fold.heldout=all``) launched by whichever Hydra launcher
is configured (basic, joblib, submitit); the job reports the mean held-out RMSE over its folds to
the study as it trains (``SearchTrial``: at ``search.report_percent`` of the epochs of its stacked
folds, or after each fold of ``stack_folds=false``; Optuna's step is the percent of the trial
done), so the pruner can stop a bad trial early, and tells the study its
objective (the LOSO mean RMSE) itself, wherever it ran. The study lives in a database (SQLite in
``mlruns/`` by default, PostgreSQL beside a team server), so several launching processes on
several machines share it, and rerunning the command resumes it.

MLflow: the study is the sweep's run (``sweep_id`` = the study's name), each trial a
configuration run under it, each fold a run under its trial; when the search ends the study's
run gets the best trial's params (as tags: they change as the study grows) and Optuna's
optimisation-history and parameter-importance figures.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.runs import BEST_PREFIX, LOSO_DOMAIN_MAX_ERROR, Metric
from tinyvmaf.sweep.status import process_alive
from tinyvmaf.tracking import TrackedRun, Tracking, find_sweep_run

DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
OWNER_HOST, OWNER_PID = "launcher_host", "launcher_pid"  # the launching process that asked for a trial
UNOWNED_AFTER = timedelta(minutes=1)  # an owner-less RUNNING trial this old lost its launching process
CREATION_TRIES = 5  # a fresh database's tables being made by several launching processes at once
DOMAIN_GUARD = "domain_max_error_over_limit"  # the trial's constraint (search.domain_limit): feasible when <= 0


def distribution(key: str, spec: str) -> optuna.distributions.BaseDistribution:
    """An Optuna distribution from Hydra's sweep syntax, as in Hydra's own Optuna sweeper:
    ``choice(a, b)``, ``range(lo, hi[, step])`` (integers, ``hi`` excluded), ``interval(lo, hi)``
    (floats), ``int(interval(lo, hi))`` (integers) and ``tag(log, ...)`` around an interval."""
    try:
        value = OverridesParser.create().parse_override(f"{key}={spec}").value()
    except Exception as exc:
        raise TinyVmafError(
            f"hydra.sweeper.params.{key}={spec!r}: not a sweep ({' '.join(str(exc).split())})"
        ) from None
    if isinstance(value, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(value.list)
    if isinstance(value, RangeSweep):
        step = int(value.step)
        return optuna.distributions.IntDistribution(int(value.start), int(value.stop) - step, step=step)
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return optuna.distributions.IntDistribution(value.start, value.end, log=log)
        return optuna.distributions.FloatDistribution(float(value.start), float(value.end), log=log)
    raise TinyVmafError(
        f"hydra.sweeper.params.{key}={spec!r}: use choice(), range(), interval() or tag(log, interval())"
    )


def open_study(name: str, storage: str, direction: str, sampler: Any = None, pruner: Any = None) -> optuna.study.Study:
    """The study, created on first use. Launching processes that share a study may start at once
    on a fresh database, where Optuna creates its tables with no lock: here, of two processes
    starting together on a fresh SQLite file, one failed in each of 12 rounds ("table studies
    already exists"), and of three on a fresh PostgreSQL database, 14 of 24 failed (a duplicate
    pg_type key). The losers try again and find the tables made; for the study itself Optuna's
    storage takes the first creator's."""
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)

    def create() -> optuna.study.Study:
        return optuna.create_study(
            study_name=name, storage=storage, direction=direction, sampler=sampler, pruner=pruner, load_if_exists=True
        )

    for attempt in range(CREATION_TRIES - 1):
        try:
            return create()
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            if not _lost_creation_race(exc):
                raise
            time.sleep(0.1 * (attempt + 1))
    return create()


def _lost_creation_race(exc: BaseException | None) -> bool:
    """Another process created a table or row first, whatever the database calls that, or held
    SQLite's lock while it did; Optuna wraps some of these in its StorageInternalError (the
    database's error is its cause: two of three threads on one fresh SQLite file under load)."""
    while exc is not None:
        text = str(exc)
        if isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in text or "database is locked" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def abandoned(trial: optuna.trial.FrozenTrial, unowned_after: timedelta) -> bool:
    """Whether a RUNNING trial's launching process is known to be gone: a process of this host
    that no longer exists, or no owner at all ``unowned_after`` its start. A launching process
    names itself within milliseconds of asking (``run_search``), so an owner-less trial that old
    was asked by a process killed in between, whichever host it ran on (start times are Optuna's
    local clock readings: hosts sharing a study share a time zone)."""
    host, pid = trial.user_attrs.get(OWNER_HOST), trial.user_attrs.get(OWNER_PID)
    if host is None and pid is None:
        started = trial.datetime_start
        return started is not None and datetime.now() - started >= unowned_after
    return process_alive(host, pid) is False  # alive, or another host's to decide


def requeue_abandoned(study: optuna.study.Study, unowned_after: timedelta = UNOWNED_AFTER) -> int:
    """Trials left RUNNING by a launching process that is gone (a Ctrl-C, a kill: ``abandoned``)
    are marked FAIL and asked again with the same params; trials of live processes, or of other
    hosts, are left to them."""
    count = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not abandoned(trial, unowned_after):
            continue
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        count += 1
    return count


def run_search(
    study: optuna.study.Study,
    space: dict[str, optuna.distributions.BaseDistribution],
    n_trials: int,
    trials_at_once: int,
    fixed: Sequence[str],
    launch: Callable[[list[list[str]], int], Sequence[Any]],
) -> None:
    """Ask the study for trials, ``trials_at_once`` at a time, until it holds ``n_trials`` finished
    or running ones (counting those of other launching processes), and launch each as a job with
    ``fixed`` overrides plus its sampled params and ``search.trial``. A trial whose job failed
    before telling the study is told FAIL here."""
    requeued = requeue_abandoned(study)
    if requeued:
        print(f"study {study.study_name}: {requeued} trial(s) of an interrupted search asked again")
    job_index = 0
    while True:
        states = [t.state for t in study.get_trials(deepcopy=False)]
        taken = sum(s in DONE or s == optuna.trial.TrialState.RUNNING for s in states)
        batch = min(trials_at_once, n_trials - taken)
        if batch <= 0:
            break
        trials = [study.ask(space) for _ in range(batch)]
        for trial in trials:
            trial.set_user_attr(OWNER_HOST, os.uname().nodename)
            trial.set_user_attr(OWNER_PID, os.getpid())
        jobs = [
            [*fixed, *(f"{k}={_override_value(v)}" for k, v in t.params.items()), f"search.trial={t.number}"]
            for t in trials
        ]
        launch(jobs, job_index)
        job_index += len(jobs)
        still_running = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
        for trial in trials:
            if trial.number in still_running:  # its job failed before telling the study anything
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    done = [t for t in study.get_trials(deepcopy=False) if t.state in DONE]
    print(f"study {study.study_name}: {len(done)} trial(s) finished or pruned of {n_trials}")


def best_trial(study: optuna.study.Study) -> optuna.trial.FrozenTrial | None:
    """The study's best completed trial, among those within its guard (``search.domain_limit``); None if there is none."""
    try:
        return study.best_trial
    except ValueError:  # no completed trial, or none feasible
        return None


def fresh_seed_values(
    study: optuna.study.Study,
    seeds: Sequence[int],
    fixed: Sequence[str],
    launch: Callable[[list[list[str]], int], Sequence[Any]],
) -> list[float]:
    """The best trial's recipe trained again with each of ``seeds`` (sweep ``<study>-fresh-seed-<seed>``),
    its LOSO mean RMSE from each. The best trial's own value is the minimum of the study's noisy
    estimates, chosen on the very folds it reports, so it is biased low; these values were not
    chosen on, so they are the estimate to report."""
    best = best_trial(study)
    if not seeds or best is None:
        return []
    kept = [o for o in fixed if o.split("=", 1)[0].lstrip("+~") not in ("seed", "sweep_id")]
    sampled = [f"{k}={_override_value(v)}" for k, v in best.params.items()]
    # A sweep per seed: a sweep holds one run per (arch, fold), and the seed is part of the recipe.
    jobs = [[*kept, *sampled, f"seed={s}", f"sweep_id={study.study_name}-fresh-seed-{s}"] for s in seeds]
    values = []
    for seed, job in zip(seeds, launch(jobs, len(study.get_trials(deepcopy=False)))):
        try:
            values.append(float(job.return_value))
        except Exception as exc:  # a failed job: said, and left out of the estimate
            print(f"study {study.study_name}: best trial's recipe with seed {seed} failed ({type(exc).__name__})")
    return values


def _override_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


class SearchTrial:
    """The job's side of a trial: report each fold, ask whether to stop, tell the study the objective."""

    def __init__(self, study: str, storage: str, number: int, pruner: optuna.pruners.BasePruner | None) -> None:
        # The search's own pruner decides here, in the job: a study loaded without one gets Optuna's default.
        self.study = optuna.load_study(study_name=study, storage=storage, pruner=pruner)
        found = [t for t in self.study.get_trials(deepcopy=False) if t.number == number]
        if not found:
            raise TinyVmafError(f"search.trial={number}: no such trial in study {study!r} of {storage}")
        self.number = number
        # Optuna's way to take up, in another process, a trial the launching process asked for
        self.trial = optuna.trial.Trial(self.study, found[0]._trial_id)

    def report(self, step: int, rmse: float) -> bool:
        """Report the mean held-out RMSE at ``step`` (the percent of the trial's training done); True when the pruner says stop."""
        self.trial.report(rmse, step)
        return self.trial.should_prune()

    def pruned(self) -> None:
        self.study.tell(self.number, state=optuna.trial.TrialState.PRUNED)

    def complete(self, objective: float, summary: dict[str, float], domain_limit: float | None = None) -> None:
        """Tell the study the objective, with the LOSO's figures (``summary``) as user attributes.
        With ``domain_limit``, the trial is feasible only if no fold model strays further from the
        teacher over its box of valid features: Optuna's constraint, so TPE samples away from
        infeasible trials and the study's best trial is its best feasible one."""
        for key, value in summary.items():
            self.trial.set_user_attr(key, value)
        if domain_limit is not None:
            self.trial.set_constraint(DOMAIN_GUARD, summary[LOSO_DOMAIN_MAX_ERROR] - domain_limit)
        self.study.tell(self.number, objective)


def log_study(tracking: Tracking, sweep: str, study: optuna.study.Study, fresh: Sequence[float] = ()) -> None:
    """The study's MLflow run (the sweep's): best trial (value, number, params as tags), its
    recipe's value over fresh seeds (``fresh``) and Optuna's figures."""
    client, experiment_id = tracking.experiment()
    run = find_sweep_run(client, experiment_id, sweep)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    infeasible = sum(any(v > 0 for v in t.constraints.values()) for t in complete)
    best = best_trial(study)
    if run is None or best is None:
        print(f"study {study.study_name}: no completed trial to log ({infeasible} beyond search.domain_limit)")
        return
    logged = TrackedRun(client, run.info.run_id)
    logged.log_tags(
        {f"{BEST_PREFIX}{k}": str(v) for k, v in best.params.items()} | {f"{BEST_PREFIX}trial": str(best.number)}
    )
    unselected = {Metric.FRESH_SEEDS_VALUE: float(np.mean(fresh))} if fresh else {}
    domain = best.user_attrs.get(LOSO_DOMAIN_MAX_ERROR)
    guard = {Metric.BEST_DOMAIN_MAX_ERROR: float(domain)} if domain is not None else {}
    counts = {Metric.TRIALS_COMPLETE: len(complete), Metric.TRIALS_INFEASIBLE: infeasible}
    logged.log_metrics(
        [{"step": len(complete), Metric.BEST_VALUE: best.value, **counts, **guard, **unselected}], step_key="step"
    )
    # pyplot (Optuna's figures need it), imported in the launching process only, at the end of a search
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    with tempfile.TemporaryDirectory() as tmp:
        figures = {"optimization_history.png": optuna_plots.plot_optimization_history}
        if len(complete) >= 2 and len(best.params) >= 2:
            figures["param_importances.png"] = optuna_plots.plot_param_importances
        for name, plot in figures.items():
            with warnings.catch_warnings():  # "experimental since v2.2": stable for years, one line per figure
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
            axes.figure.set_size_inches(8, 5)
            axes.figure.tight_layout()
            axes.figure.savefig(Path(tmp) / name, dpi=110)
            plt.close(axes.figure)
            logged.log_artifact(Path(tmp) / name)
    client.set_terminated(run.info.run_id, "FINISHED")
    within = f" (largest domain error {domain:.3f})" if domain is not None else ""
    beyond = f"; {infeasible} trial(s) beyond search.domain_limit left out" if infeasible else ""
    print(
        f"study {study.study_name}: best trial {best.number}, LOSO mean RMSE {best.value:.4f}{within}, "
        f"{best.params}{beyond}"
    )
    if fresh:
        print(
            f"study {study.study_name}: that recipe over {len(fresh)} fresh seed(s): LOSO mean RMSE {np.mean(fresh):.4f} "
            f"({', '.join(f'{v:.4f}' for v in fresh)}); {best.value:.4f} is the best of {len(complete)} trials, "
            "chosen on the folds it reports (biased low): report the fresh-seed figure"
        )
