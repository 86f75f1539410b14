"""What SLURM knows of a job, from anywhere with SLURM's commands: whether it is pending, running
or over (``squeue``, then ``sacct``, which needs SLURM's accounting); and ``scancel``. tinyvmaf
schedules nothing itself: this only asks. Which job a process is, from its environment, is a run's
tags: ``tinyvmaf.runs.slurm_tags``.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

# States in which a job's current attempt may still run (or run again); every other one is over.
LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
               "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"}  # fmt: skip
QUERY_TIMEOUT = 30  # s: a controller that does not answer is "unknown", never a hang


@dataclass(frozen=True)
class JobState:
    state: str  # SLURM's word for the job's latest attempt: PENDING, RUNNING, COMPLETED, CANCELLED, NODE_FAIL...
    attempts: int  # attempts SLURM has started or queued (1 + requeues), as far as accounting lists them

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


def _ask(*command: str) -> list[list[str]] | None:
    """Rows of a SLURM command's ``|``-separated output, or None when it cannot be asked."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=QUERY_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return [line.split("|") for line in done.stdout.splitlines() if line.strip()]


def job_states(jobs: list[str]) -> dict[str, JobState] | None:
    """The state of each job (``<id>`` or ``<array id>_<task>``) SLURM knows, or None where its
    commands are absent or do not answer. The queue first (it lists pending array tasks one by
    one), then accounting for what has left the queue (each requeued attempt a row of its own)."""
    jobs = sorted({j for j in jobs if j})
    if not jobs:
        return {}
    queued = _ask("squeue", "-h", "-r", "-j", ",".join(jobs), "-o", "%i|%T")
    accounted = _ask("sacct", "-n", "-P", "-X", "-D", "-j", ",".join(jobs), "-o", "JobID,State")
    if queued is None and accounted is None:
        return None
    attempts: dict[str, int] = {}
    states: dict[str, str] = {}
    for row in accounted or []:
        if len(row) >= 2 and "[" not in row[0]:  # "24_[2-5]": pending tasks, listed one by one by squeue
            attempts[row[0]] = attempts.get(row[0], 0) + 1
            states[row[0]] = row[1].split()[0]  # "CANCELLED by 0" -> CANCELLED; the latest attempt last
    for row in queued or []:
        if len(row) >= 2:
            states[row[0]] = row[1]
            attempts.setdefault(row[0], 1)
    return {j: JobState(states[j], attempts[j]) for j in jobs if j in states}


def cancel(jobs: list[str]) -> None:
    """``scancel`` the jobs (their array tasks included); SLURM ignores those already over."""
    if jobs and shutil.which("scancel"):
        subprocess.run(["scancel", *sorted(set(jobs))], capture_output=True, timeout=QUERY_TIMEOUT)
