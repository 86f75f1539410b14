"""What tinyvmaf adds to hydra-submitit-launcher's launchers (``hydra/launcher=slurm``; the plugin
classes are in ``src/hydra_plugins/tinyvmaf_sweeps/``). In the job: a failed command fails the
job, so SLURM shows FAILED, not COMPLETED. In the launching process: only the jobs the sweep lacks
are submitted, every job is waited for through its requeues, and every failure, the job's own or
SLURM's (a submission sbatch refused, a job cancelled, its node dead, its time limit, a
preemption), becomes the job's verdict naming its overrides, its SLURM job and its log. If the
launching process ends first (Ctrl-C, SIGTERM, an error), the jobs still pending or running are
cancelled, unless ``cancel_jobs_on_exit=false``.

Hydra imports the plugin, hence this module, at every start: the stages (MLflow among them) and
submitit are imported inside the methods that use them.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

from tinyvmaf.cli import interrupt, or_exit
from tinyvmaf.errors import Interrupted
from tinyvmaf.slurm import cancel, job_states
from tinyvmaf.sweep.verdicts import failure_of, mark_failed_job, mark_interrupted

REQUEUE_POLL_S = 2  # s between asking SLURM about a requeued job


class JobFailed(Exception):
    """Raised at the end of a submitit job whose command failed (its verdict says why), so that
    submitit records it and the job's exit status, hence SLURM's state, is a failure."""


class SubmititVerdict:
    """The mixin: ``class TinyvmafSlurmLauncher(SubmititVerdict, SlurmLauncher)``."""

    def __init__(self, cancel_jobs_on_exit: bool = True, **params: Any) -> None:
        super().__init__(**params)
        self.cancel_jobs_on_exit = cancel_jobs_on_exit

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        returned = super().__call__(*args, **kwargs)
        failure = failure_of(Path(str(returned.hydra_cfg.hydra.runtime.output_dir)))
        if failure is not None:
            raise JobFailed(failure)
        if returned.status == JobStatus.FAILED:  # not a user's error: a bug, its traceback in the job's log
            raise JobFailed(f"{type(returned._return_value).__name__}: {returned._return_value}")
        return returned

    def launch(self, job_overrides: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        """Submit the jobs the sweep lacks (its plan says which it finished with this recipe: a
        rerun submits only the others), one array per run of consecutive job numbers, and wait."""
        from tinyvmaf.sweep.ledger import PlannedJob, planned_jobs

        planned = planned_jobs(self._sweep_dir())
        todo = [
            PlannedJob(index, list(overrides), "", [])
            for index, overrides in enumerate(job_overrides, start=initial_job_idx)
            if not planned.get(index, {}).get("done")
        ]
        if len(todo) < len(job_overrides):
            print(
                f"submitting {len(todo)} of {len(job_overrides)} jobs: the sweep finished the others with this recipe"
            )
        for group in _contiguous(todo):
            self._submit_and_wait(group)
        return [JobReturn(overrides=list(o), status=JobStatus.COMPLETED) for o in job_overrides]

    def _sweep_dir(self) -> Path:
        return Path(str(self.config.hydra.sweep.dir))

    def _submit_and_wait(self, group: list) -> None:
        from submitit.core.utils import FailedJobError, FailedSubmissionError, UncompletedJobError

        from tinyvmaf.sweep.ledger import job_folder

        overrides = [j.overrides for j in group]
        folders = [job_folder(self.config, self.hydra_context.config_loader, j) for j in group]
        params = [
            (j.overrides, "hydra.sweep.dir", j.index, f"job_id_for_{j.index}", Singleton.get_state()) for j in group
        ]
        for j in group:
            print(f"  #{j.index} : {' '.join(filter_overrides(j.overrides))}")
        try:
            jobs = self._executor().map_array(self, *zip(*params))
        except (FailedJobError, FailedSubmissionError, subprocess.CalledProcessError, OSError) as exc:  # sbatch refused
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
                except FailedJobError:  # the job's own command failed: its verdict says why
                    mark_failed_job(folder, o, f"{failure_of(folder) or 'the job raised'} ({where})")
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
            cancel([str(j.job_id) for j in waiting])
            for job in waiting:
                k = jobs.index(job)
                mark_failed_job(
                    folders[k], overrides[k], f"cancelled: the launching process was {what} (SLURM job {job.job_id})"
                )
            fate = f"{len(waiting)} unfinished job(s) cancelled"
        else:
            fate = f"{len(waiting)} job(s) left running unwatched (cancel_jobs_on_exit=false): rerun the same command for their results"
        mark_interrupted(self._sweep_dir(), f"the launching process was {what}: {fate}")

    def _record(self, indices: list[int], jobs: list) -> None:
        """Each job's SLURM id and log into the sweep's ledger."""
        from tinyvmaf.sweep.ledger import planned_jobs, record_jobs, submitted

        planned = planned_jobs(self._sweep_dir())
        taken = [
            submitted(planned[index], str(job.job_id), str(job.paths.stderr))
            for index, job in zip(indices, jobs)
            if index in planned
        ]
        if taken:
            or_exit(lambda: record_jobs(self.config, taken))

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
        self._sweep_dir().mkdir(parents=True, exist_ok=True)
        return executor


def _contiguous(jobs: list) -> list[list]:
    groups: list[list] = []
    for job in jobs:
        if groups and groups[-1][-1].index == job.index - 1:
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


def _outcome(job: Any) -> Any:
    """A submitted job's result, waiting through its requeues: submitit takes an attempt's end
    (NODE_FAIL, PREEMPTED) for the job's, while SLURM has queued it again."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

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


def _first_line(text: Any) -> str:
    text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no reason given"
