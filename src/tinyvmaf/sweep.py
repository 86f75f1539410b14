"""A sweep's life in the launching process, whatever the launcher runs its jobs on: the teacher
cache built before any job, the sweep's MLflow run, the plan of its jobs (what each trains, which
the sweep already finished: a SLURM launch does not submit those again), the verdict on every job
that failed, whether in its own code or on the scheduler's side, and the digest at the end.

Hydra calls these as callbacks (``configs/train.yaml``, ``configs/hydra/default.yaml``) and as
launchers (``tinyvmaf_slurm``, ``tinyvmaf_submitit_local``: thin classes in ``src/hydra_plugins``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from tinyvmaf.cli import FAILED_MARKER, interrupt, mark_failed_job, quiet_libraries
from tinyvmaf.errors import Interrupted, instantiate_checked, user_error, without_passwords

# tinyvmaf.tracking and the stages are imported where used: MLflow must not load before its telemetry
# switch is set (tinyvmaf.cli), and Hydra imports the plugins that use this module at every start.
PLAN = "plan.json"  # in the sweep folder: this launch's jobs, by job number, for its launcher

INTERRUPTED_MARKER = "INTERRUPTED"  # in the sweep folder: the launching process was stopped
REQUEUE_POLL_S = 2  # s between asking SLURM about a requeued job


@dataclass
class PlannedJob:
    """One job of a sweep as the launching process sees it before launching it."""

    index: int  # Hydra's job number: its folder under the sweep folder
    overrides: list[str]
    arch: str
    folds: list[str]  # the held-out sources it trains (every one of the corpus for fold.heldout=all)
    done: bool = False  # the sweep finished all of them earlier with this recipe: not launched again
    slurm_job: str | None = None  # once submitted to SLURM: ``<array id>_<task>``
    log: str | None = None  # the job's log, once it has one


def job_folder(config: DictConfig, config_loader: Any, job: PlannedJob) -> Path:
    """Where Hydra puts a job's outputs (``hydra.sweep.dir``/``hydra.sweep.subdir``), FAILED file included."""
    sweep_config = config_loader.load_sweep_config(config, list(job.overrides))
    with open_dict(sweep_config.hydra.job):
        sweep_config.hydra.job.num = job.index
    return Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)


def plan_jobs(config: DictConfig, config_loader: Any, batch: list[list[str]], first: int) -> list[PlannedJob]:
    """What each job of ``batch`` (numbered from ``first``) trains, and whether the sweep finished
    it already with the same recipe (every fold's ``recipe_hash`` on a finished run of the sweep)."""
    quiet_libraries()
    from tinyvmaf.tracking import sweep_id
    from tinyvmaf.training import ALL_FOLDS, finished_runs, fold_config, recipe_hash

    tracking = instantiate_checked(config.tracking)
    client, experiment_id = tracking.experiment()
    sweep = sweep_id(config)
    sources: dict[str, tuple] = {}
    finished: dict[str, dict] = {}
    jobs = []
    for offset, overrides in enumerate(batch):
        cfg = config_loader.load_sweep_config(config, list(overrides))
        arch, heldout = str(cfg.arch.name), str(cfg.fold.heldout)
        if heldout == ALL_FOLDS:
            key = OmegaConf.to_yaml(cfg.corpus) + OmegaConf.to_yaml(cfg.cache)
            if key not in sources:
                corpus = instantiate_checked(cfg.corpus)
                sources[key] = (corpus, list(instantiate_checked(cfg.cache).ready(corpus).sources))
            corpus, folds = sources[key]
            recipes = {s: recipe_hash(fold_config(cfg, corpus, s)) for s in folds}
        else:
            folds, recipes = [heldout], {heldout: recipe_hash(cfg)}
        if arch not in finished:
            finished[arch] = finished_runs(client, experiment_id, sweep, arch)
        done = all(f in finished[arch] and finished[arch][f].data.tags.get("recipe_hash") == recipes[f] for f in folds)
        jobs.append(PlannedJob(first + offset, list(overrides), arch, folds, done))
    return jobs


def record_jobs(config: DictConfig, jobs: list[PlannedJob]) -> None:
    """The sweep's ledger: every job its commands planned, by overrides (a rerun's entries replace
    the earlier ones), in the sweep folder and as the sweep run's ``jobs.json``; the digest reads it
    for what the sweep was asked to train, and which SLURM job each is."""
    from tinyvmaf.tracking import LEDGER, TrackedRun, find_sweep_run, ledger_of_run, read_ledger_file, sweep_id

    folder = Path(str(config.hydra.sweep.dir))
    folder.mkdir(parents=True, exist_ok=True)
    client, experiment_id = instantiate_checked(config.tracking).experiment()
    sweep_run = find_sweep_run(client, experiment_id, sweep_id(config))
    # every launch of the sweep, whatever its folder (a rerun's is a new one by default)
    earlier = ledger_of_run(client, sweep_run.info.run_id) if sweep_run is not None else []
    ledger = {json.dumps(j["overrides"]): j for j in [*earlier, *read_ledger_file(folder / LEDGER)]}
    ledger.update({json.dumps(j.overrides): asdict(j) for j in jobs})
    (folder / LEDGER).write_text(json.dumps(list(ledger.values()), indent=1))
    if not any(j.slurm_job for j in jobs):  # a plan, not a launcher's update: this launch's jobs, by number
        (folder / PLAN).write_text(json.dumps([asdict(j) for j in jobs], indent=1))
    if sweep_run is not None:
        TrackedRun(client, sweep_run.info.run_id, sweep_run.info.artifact_uri).log_artifact(folder / LEDGER)


class FailedJobsExit(Callback):
    """After a multirun: list the jobs that failed and exit 1 if any did (130 if the launching process
    was interrupted), or if the sweep planned no job at all (``x=glob(*)`` on a misspelled group).

    It reads the ``FAILED`` files in the job folders under the sweep folder, because a job may run
    in another process (joblib) or on another machine (SLURM), where this object is not; a launcher
    writes one for a job that failed on the scheduler's side.
    """

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """A rerun into the same sweep folder: the earlier verdicts are not this run's."""
        sweep_dir = Path(config.hydra.sweep.dir)
        for marker in [sweep_dir / INTERRUPTED_MARKER, *sweep_dir.glob(f"*/{FAILED_MARKER}")]:
            marker.unlink(missing_ok=True)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = (
            [d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir() or (d / FAILED_MARKER).is_file()]
            if sweep_dir.is_dir()
            else []
        )
        failed = sorted((d / FAILED_MARKER).read_text().strip() for d in jobs if (d / FAILED_MARKER).is_file())
        from tinyvmaf.tracking import LEDGER, read_ledger_file

        planned = read_ledger_file(sweep_dir / LEDGER)
        if not jobs and not planned:
            print("error: the sweep launched no job: check the swept groups and values", file=sys.stderr)
            sys.exit(1)
        if failed:
            print(f"error: {len(failed)} of {len(jobs)} jobs failed: " + "; ".join(failed), file=sys.stderr)
        if (sweep_dir / INTERRUPTED_MARKER).is_file():
            print(f"error: {(sweep_dir / INTERRUPTED_MARKER).read_text().strip()}", file=sys.stderr)
            sys.exit(130)
        if failed:
            sys.exit(1)


# Overrides of these keys change which corpus, and which teacher cache, the jobs train on.
_CACHE_KEYS = ("corpus", "cache", "libvmaf", "paths", "n_jobs")


class CacheBeforeJobs(Callback):
    """Build or validate the configured corpus's teacher cache once, before any job starts, so
    parallel jobs (joblib workers, SLURM array tasks) never run libvmaf on the same clips twice.
    Skipped when the sweep varies the corpus or the cache."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if any(key.split("/")[0].split(".")[0] in _CACHE_KEYS for key in _swept_keys(config)):
            return
        corpus, cache = _or_exit(lambda: (instantiate_checked(config.corpus), instantiate_checked(config.cache)))
        report = _or_exit(lambda: cache.build(corpus))
        report.warn_left_out()
        print(
            f"teacher cache of corpus {corpus.name!r}: {len(report.built)} clip(s) computed, {len(report.reused)} reused"
        )


class ConsolidateShards(Callback):
    """After a sweep over ``cache.shard``, write the corpus's ``frames.npz`` and ``summary.json``
    from the entries the shards wrote (no libvmaf). It runs after ``FailedJobsExit``, so only when
    every shard succeeded."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if "cache.shard" not in _swept_keys(config):
            return
        corpus, cache = _or_exit(
            lambda: (instantiate_checked(config.corpus), instantiate_checked(config.cache, shard=None))
        )
        report = _or_exit(lambda: cache.build(corpus, compute=False))
        for failure in report.failures:
            print(f"error: {failure.asset}: {failure.error}", file=sys.stderr)
        if report.failures:
            sys.exit(1)
        print(
            f"consolidated {len(report.reused)} clip(s) of corpus {corpus.name!r} into {cache.folder(corpus) / 'frames.npz'}"
        )


class SweepRun(Callback):
    """Open the sweep's parent MLflow run before any job (the jobs nest their runs under it,
    wherever they run), and when the sweep ends write its digest there (``evaluate.py`` for this
    sweep_id)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        quiet_libraries()  # before MLflow is imported: its telemetry switch is read then
        from tinyvmaf.tracking import open_sweep_run, sweep_id

        self.sweep = sweep_id(config)  # resolved now: it may read the Hydra config, gone at the end
        self.search = bool(config.get("search", {}).get("study"))
        tracking = _or_exit(lambda: instantiate_checked(config.tracking))
        overrides = without_passwords(" ".join(command_line(config)))
        params = {"experiment": config.get("experiment_name", "default"), "teacher": config.teacher.model}
        self.run_id = _or_exit(lambda: open_sweep_run(tracking, self.sweep, {**params, "sweep": overrides}))
        if not self.search:  # a search's trials are the study's to choose
            self.plan(config)

    def plan(self, config: DictConfig) -> None:
        """The sweep's jobs, what each trains and which the sweep already finished, in its ledger."""
        from hydra.core.global_hydra import GlobalHydra

        loader = GlobalHydra.instance().config_loader()
        jobs = _or_exit(lambda: plan_jobs(config, loader, sweep_jobs(config), 0))
        _or_exit(lambda: record_jobs(config, jobs))
        done = sum(j.done for j in jobs)
        if done:
            print(
                f"{done} of {len(jobs)} jobs already finished in sweep {self.sweep} with this recipe: not trained again"
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from tinyvmaf.digest import write_digest

        quiet_libraries()
        # A search's digest is its best trial's; the study's run has Optuna's figures instead.
        options = config.copy()
        OmegaConf.set_struct(options, False)
        options.sweep_id, options.trial = self.sweep, "best" if self.search else None
        try:
            write_digest(options)
        except Exception as exc:
            message = user_error(exc)
            if message is None:
                raise
            print(f"error: no digest for this sweep: {message}", file=sys.stderr)
            client, _ = instantiate_checked(config.tracking).experiment()
            client.set_tag(self.run_id, "error", f"no digest: {message}")  # not left RUNNING: nothing will finish it
            client.set_terminated(self.run_id, "FAILED")


def command_line(config: DictConfig) -> list[str]:
    """The multirun's task overrides as typed: read through OmegaConf, an override holding an
    interpolation (``x='${y}'``) would come back resolved against the launching config."""
    return [str(o) for o in OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]


def _swept_keys(config: DictConfig) -> list[str]:
    """The keys (or groups) a multirun sweeps over, from its command line."""
    overrides = OverridesParser.create().parse_overrides(command_line(config))
    return [o.key_or_group for o in overrides if o.is_sweep_override()]


def _or_exit(step: Any) -> Any:
    """A launching-process step: a user error ends the sweep with its one line."""
    quiet_libraries()
    try:
        return step()
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


def _contiguous(jobs: list[PlannedJob]) -> list[list[PlannedJob]]:
    groups: list[list[PlannedJob]] = []
    for job in jobs:
        if groups and groups[-1][-1].index == job.index - 1:
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of this multirun's command line, in its order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra

    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    batches = BasicSweeper.split_arguments(parser.parse_overrides(command_line(config)), None)
    return [list(job) for batch in batches for job in batch]


class JobFailed(Exception):
    """Raised at the end of a submitit job whose command failed (its FAILED file says why), so
    that submitit records it and the job's exit status, hence SLURM's state, is a failure."""


class SubmititVerdict:
    """What tinyvmaf adds to hydra-submitit-launcher's launchers. In the job: a failed command
    fails the job (SLURM shows FAILED, not COMPLETED). In the launching process: every job is waited
    for, and every failure, the job's own or SLURM's (a submission sbatch refused, a job cancelled,
    its node dead, its time limit, a preemption), becomes the job's FAILED file naming its
    overrides, its SLURM job and its log, so the sweep ends with one list, its digest and its run's
    verdict. If the launching process ends first (Ctrl-C, SIGTERM, an error), the jobs still
    pending or running are cancelled, unless ``cancel_jobs_on_exit=false``."""

    def __init__(self, cancel_jobs_on_exit: bool = True, **params: Any) -> None:
        super().__init__(**params)
        self.cancel_jobs_on_exit = cancel_jobs_on_exit

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        returned = super().__call__(*args, **kwargs)
        marker = Path(str(returned.hydra_cfg.hydra.runtime.output_dir)) / FAILED_MARKER
        if marker.is_file():
            raise JobFailed(marker.read_text().strip())
        if returned.status == JobStatus.FAILED:  # not a user's error: a bug, its traceback in the job's log
            raise JobFailed(f"{type(returned._return_value).__name__}: {returned._return_value}")
        return returned

    def launch(self, job_overrides: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        """Submit the jobs the sweep lacks (its ledger says which it finished with this recipe: a
        rerun submits only the others), one array per run of consecutive job numbers, and wait."""
        from tinyvmaf.tracking import read_ledger_file

        planned = {j["index"]: j for j in read_ledger_file(self._plan())}
        todo = []
        for index, overrides in enumerate(job_overrides, start=initial_job_idx):
            entry = planned.get(index)
            if not (entry and entry.get("done")):
                todo.append(_job(index, list(overrides)))
        if len(todo) < len(job_overrides):
            print(
                f"submitting {len(todo)} of {len(job_overrides)} jobs: the sweep finished the others with this recipe"
            )
        for group in _contiguous(todo):
            self._submit_and_wait(group)
        return [JobReturn(overrides=list(o), status=JobStatus.COMPLETED) for o in job_overrides]

    def _plan(self) -> Path:
        return Path(str(self.config.hydra.sweep.dir)) / PLAN

    def _submit_and_wait(self, group: list[PlannedJob]) -> None:
        from submitit.core.utils import FailedJobError, FailedSubmissionError, UncompletedJobError

        overrides = [j.overrides for j in group]
        folders = [job_folder(self.config, self.hydra_context.config_loader, j) for j in group]
        params = [
            (j.overrides, "hydra.sweep.dir", j.index, f"job_id_for_{j.index}", Singleton.get_state()) for j in group
        ]
        for j in group:
            print(f"  #{j.index} : {' '.join(filter_overrides(j.overrides))}")
        try:
            jobs = self._executor().map_array(self, *zip(*params))
        except (
            FailedJobError,
            FailedSubmissionError,
            subprocess.CalledProcessError,
            OSError,
        ) as exc:  # sbatch refused it
            said = _first_line(getattr(exc, "stderr", None) or getattr(exc, "output", None) or str(exc))
            for folder, o in zip(folders, overrides):
                mark_failed_job(folder, o, f"not submitted: {said}")
            return
        self._record([j.index for j in group], jobs)
        waiting = list(jobs)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, interrupt)
        try:
            for job, folder, o in zip(jobs, folders, overrides):
                where = f"SLURM job {job.job_id}, log {job.paths.stderr}"
                try:
                    _outcome(job)
                except FailedJobError:  # the job's own command failed: its FAILED file says why
                    marker = folder / FAILED_MARKER
                    said = marker.read_text().strip().split(": ", 1)[-1] if marker.is_file() else "the job raised"
                    mark_failed_job(folder, o, f"{said} ({where})")
                except UncompletedJobError:  # SLURM ended it without a result
                    mark_failed_job(folder, o, f"{job.state} ({where})")
                waiting.remove(job)
        except (KeyboardInterrupt, Interrupted, Exception) as exc:
            self._left_behind(waiting, jobs, folders, overrides, exc)
            if not isinstance(exc, (KeyboardInterrupt, Interrupted)):
                raise

    def _left_behind(self, waiting: list, jobs: list, folders: list[Path], overrides: list, exc: BaseException) -> None:
        """The launching process ends before these jobs do: cancel them (or not), and say so."""
        what = "interrupted" if isinstance(exc, (KeyboardInterrupt, Interrupted)) else f"ended by an error ({exc})"
        waiting = [j for j in waiting if not j.paths.result_pickle.exists()]  # those done have their result
        if self.cancel_jobs_on_exit:
            from tinyvmaf.slurm import cancel

            cancel([str(j.job_id) for j in waiting])
            for job in waiting:
                k = jobs.index(job)
                mark_failed_job(
                    folders[k], overrides[k], f"cancelled: the launching process was {what} (SLURM job {job.job_id})"
                )
            fate = f"{len(waiting)} unfinished job(s) cancelled"
        else:
            fate = f"{len(waiting)} job(s) left running unwatched (cancel_jobs_on_exit=false): rerun the same command for their results"
        Path(str(self.config.hydra.sweep.dir), INTERRUPTED_MARKER).write_text(
            f"the launching process was {what}: {fate}\n"
        )

    def _record(self, indices: list[int], jobs: list) -> None:
        """Each job's SLURM id and log into the sweep's ledger."""
        from tinyvmaf.tracking import read_ledger_file

        known = {j["index"]: j for j in read_ledger_file(self._plan())}
        submitted = []
        for index, job in zip(indices, jobs):
            entry = known.get(index)
            if entry is not None:
                fields = {k: entry[k] for k in ("index", "overrides", "arch", "folds", "done") if k in entry}
                submitted.append(PlannedJob(**fields, slurm_job=str(job.job_id), log=str(job.paths.stderr)))
        if submitted:
            _or_exit(lambda: record_jobs(self.config, submitted))

    def _executor(self) -> Any:
        """The submitit executor with this launcher's parameters, as hydra-submitit-launcher builds it."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        kind = self._EXECUTOR
        init = {"folder": self.params["submitit_folder"]}
        init.update({f"{kind}_{k}": v for k, v in self.params.items() if k == "max_num_timeout"})
        executor = submitit.AutoExecutor(cluster=kind, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in base else f"{kind}_{k}": v
                for k, v in self.params.items()
                if k not in ("submitit_folder", "max_num_timeout")
            }
        )
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        return executor


def _outcome(job: Any) -> Any:
    """A submitted job's result, waiting through its requeues: submitit takes an attempt's end
    (NODE_FAIL, PREEMPTED) for the job's, while SLURM has queued it again."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from tinyvmaf.slurm import job_states

    while True:
        try:
            return job.result()
        except FailedJobError:
            raise
        except UncompletedJobError:
            states = job_states([str(job.job_id)]) if job.paths.folder.is_dir() else None
            state = (states or {}).get(str(job.job_id))
            if state is None or not state.live or type(job).__name__ != "SlurmJob":
                raise
            time.sleep(REQUEUE_POLL_S)


def _job(index: int, overrides: list[str]) -> PlannedJob:
    return PlannedJob(index, overrides, "", [])


def _first_line(text: Any) -> str:
    text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no reason given"
