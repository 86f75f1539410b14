"""What a sweep's runs say of it, against what it was asked (its ledger): each (arch, fold) pair
finished, failed, still running (its process or SLURM job alive, dead or unknown) or missing
(pending, or never started); and the verdicts on runs that can never finish. The digest reports
it; ``evaluate.py fail_running=true`` acts on it.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tinyvmaf.runs import Param, Tag, has_heldout, heldout_problem
from tinyvmaf.slurm import job_states


def process_alive(host: str | None, pid: object) -> bool | None:
    """Whether process ``pid`` of ``host`` still exists (a run's, a sweep's or a search's launching
    process): None where this host cannot tell (the process is another host's, or none is named)."""
    if host != os.uname().nodename or not str(pid).isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True


@dataclass
class SweepStatus:
    """What a sweep holds against what it was asked: the (arch, fold) pairs its commands planned
    (its job ledger), else every arch seen x every source of the corpus its runs trained on."""

    finished: dict[tuple[str, str], Run]  # (arch, fold) -> the latest finished run
    failed: list[dict]  # pairs with no finished run whose latest run FAILED or was KILLED
    running: list[dict]  # ... whose latest run is still RUNNING (its process or job alive, dead or unknown)
    missing: list[dict]  # pairs expected that no run of the sweep ever started (pending, or never submitted)
    duplicates: list[dict]  # pairs finished more than once: only the latest counts
    archs: list[str]
    folds: list[str]
    pairs: list[tuple[str, str]]  # every pair expected
    stale: list[dict]  # RUNNING runs of pairs finished since: attempts whose job or process is gone
    mixed: list[dict]  # archs whose finished runs differ in their hidden widths: not averaged, not counted

    @property
    def expected(self) -> int:
        return len(self.pairs)

    @property
    def complete(self) -> bool:
        return all(p in self.finished for p in self.pairs)


def sweep_status(runs: list[Run], ledger: list[dict] | None = None) -> SweepStatus:
    """Group a sweep's runs by (arch, fold) against the pairs the sweep was asked for: its
    ``ledger``'s jobs when it has one, else every arch seen x every source of the runs' corpus.
    RUNNING runs and missing pairs are told apart by what SLURM says of their jobs, where it can
    be asked, or by their process on this host."""
    oldest_first = sorted(runs, key=lambda r: r.info.start_time or 0)
    by_pair: dict[tuple[str, str], list[Run]] = defaultdict(list)  # each pair's runs, latest first
    sources: dict[str, None] = {}
    for r in reversed(oldest_first):
        by_pair[(r.data.params.get(Param.ARCH, "?"), r.data.params.get(Param.FOLD, "?"))].append(r)
        sources.update(dict.fromkeys(json.loads(r.data.tags.get(Tag.CORPUS_SOURCES, "[]"))))
    jobs = {(j["arch"], f): j for j in ledger or [] for f in j["folds"]}
    if jobs:
        pairs = list(dict.fromkeys([*jobs, *((a, f) for a, f in sorted(by_pair, key=lambda p: p[1]))]))
    else:  # in the order the sweep started them: the user's order on the command line
        archs = list(dict.fromkeys(r.data.params.get(Param.ARCH, "?") for r in oldest_first))
        pairs = [(a, f) for a in archs for f in sorted(set(sources) | {f for _, f in by_pair})]
    states = _slurm_states([*by_pair.values()], jobs.values())
    finished, failed, running, duplicates, stale = {}, [], [], [], []
    for (arch, fold), pair_runs in by_pair.items():
        done = [r for r in pair_runs if r.info.status == "FINISHED" and has_heldout(r)]
        live = [r for r in pair_runs if r.info.status == "RUNNING"]
        if done:
            finished[(arch, fold)] = done[0]
            if len(done) > 1:
                duplicates.append({"arch": arch, "fold": fold, "runs": len(done), "counted": done[0].info.run_id})
            stale += [_row(arch, fold, r, states) for r in live if run_liveness(r, states)[0] != "alive"]
            continue
        latest = pair_runs[0]
        if latest.info.status == "RUNNING":
            running.append(_row(arch, fold, latest, states))
        else:
            failed.append(_row(arch, fold, latest, states))
    mixed = _mixed_widths(finished)
    missing = [
        {"arch": a, "fold": f, "why": never_started(jobs.get((a, f)), states)}
        for a, f in pairs
        if (a, f) not in by_pair
    ]
    archs = list(dict.fromkeys(a for a, _ in pairs))
    folds = list(dict.fromkeys(f for _, f in sorted(pairs, key=lambda p: p[1])))
    return SweepStatus(finished, failed, running, missing, duplicates, archs, folds, pairs, stale, mixed)


def _mixed_widths(finished: dict[tuple[str, str], Run]) -> list[dict]:
    """An arch whose finished runs have different hidden widths is several models under one name:
    their folds are taken out of ``finished`` (nothing of them is averaged) and listed."""
    widths: dict[str, set[str]] = defaultdict(set)
    for (arch, _), run in finished.items():
        widths[arch].add(run.data.params.get(Param.HIDDEN, "?"))
    mixed = [{"arch": arch, "widths": sorted(w)} for arch, w in widths.items() if len(w) > 1]
    for pair in [p for p in finished if p[0] in {m["arch"] for m in mixed}]:
        del finished[pair]
    return mixed


def _row(arch: str, fold: str, run: Run, states: dict) -> dict:
    error = run.data.tags.get(Tag.ERROR, "") if run.info.status != "FINISHED" else heldout_problem(run)
    row = {"arch": arch, "fold": fold, "status": run.info.status, "run_id": run.info.run_id, "error": error}
    if run.info.status == "RUNNING":
        row["alive"], row["process"] = run_liveness(run, states)
    return row


def _slurm_states(pair_runs: list[list[Run]], jobs: Any) -> dict:
    """SLURM's word on every job the sweep's RUNNING runs and planned jobs name (one query)."""
    names = [r.data.tags.get(Tag.SLURM_JOB) for runs in pair_runs for r in runs if r.info.status == "RUNNING"]
    names += [j.get("slurm_job") for j in jobs]
    names = [n for n in names if isinstance(n, str) and n]
    return (job_states(names) or {}) if names else {}


def run_liveness(run: Run, states: dict) -> tuple[str, str]:
    """Whether a RUNNING run's attempt can still finish: ``alive``, ``dead`` or ``unknown``, and why.
    A SLURM job's run asks SLURM (its attempt is dead once the job is over or was requeued past
    it); any other run asks this host for its process."""
    job = run.data.tags.get(Tag.SLURM_JOB)
    if job:
        state = states.get(job)
        attempt = int(run.data.tags.get(Tag.SLURM_RESTART, "0") or 0)
        if state is None:
            return "unknown", f"SLURM job {job}: SLURM cannot be asked from here, or has forgotten it"
        if state.attempts > attempt + 1:
            return "dead", f"SLURM job {job} was requeued: this attempt ({attempt + 1}) is gone"
        if state.live:
            return "alive", f"SLURM job {job} is {state.state}"
        return "dead", f"SLURM job {job} ended {state.state}: this run will never finish"
    host, pid = run.data.tags.get(Tag.HOST), run.data.tags.get(Tag.PID, "")
    alive = process_alive(host, pid)
    if alive is None:
        return "unknown", f"on host {host or 'unknown'}: cannot tell from here"
    if not alive:
        return "dead", f"process {pid} is gone (killed): it will never finish"
    return "alive", f"process {pid} is still alive"


def never_started(job: dict | None, states: dict) -> str:
    rerun = "rerun the sweep with the same sweep_id to train only what is missing"
    if job is None or not job.get("slurm_job"):
        return f"never started; {rerun}"
    state = states.get(job["slurm_job"])
    if state is None:
        return f"SLURM job {job['slurm_job']}: no run yet, and SLURM cannot be asked from here"
    if state.live:
        return f"SLURM job {job['slurm_job']} is {state.state}: not started yet"
    return f"SLURM job {job['slurm_job']} ended {state.state} without starting a run; {rerun}"


def mark_running_failed(client: MlflowClient, status: SweepStatus) -> None:
    """``fail_running=true``: RUNNING runs that cannot finish are marked FAILED, saying why: those
    whose job or process is known dead, attempts superseded by a finished run, and those nobody here
    can ask about (the user declares them dead). A run known alive is left alone."""
    for row in [*status.running, *status.stale]:
        if row["alive"] == "alive":
            continue
        client.set_tag(row["run_id"], Tag.ERROR, f"marked failed by evaluate.py fail_running=true ({row['process']})")
        client.set_terminated(row["run_id"], "FAILED")
        row["status"] = "FAILED"
        if row in status.running:
            status.failed.append(row)
    status.running = [r for r in status.running if r["status"] == "RUNNING"]
    status.stale = []


def launcher_alive(sweep_run: Run) -> bool | None:
    """Whether the sweep's launching process still goes on: None where this host cannot tell (it
    runs on another), False where none is recorded or this process is it (writing its last digest)."""
    host, pid = sweep_run.data.tags.get(Tag.LAUNCHER_HOST), sweep_run.data.tags.get(Tag.LAUNCHER_PID, "")
    if not pid.isdigit() or (int(pid) == os.getpid() and host == os.uname().nodename):
        return False
    return process_alive(host, pid)


def finish_sweep_run(client: MlflowClient, sweep_run: Run, status: SweepStatus) -> None:
    """The sweep run's verdict from what the sweep holds: FINISHED once every expected run finished
    (an earlier verdict's error cleared); RUNNING while some of its runs or its launching process
    go on; FAILED, saying what is lacking, once neither does. Where the launching process runs on
    another host, a sweep that lacks runs keeps its status: nobody here can tell that it is over."""
    run_id = sweep_run.info.run_id
    if status.complete:
        if Tag.ERROR in sweep_run.data.tags:
            client.delete_tag(run_id, Tag.ERROR)
        client.set_terminated(run_id, "FINISHED")
        return
    alive = launcher_alive(sweep_run)
    if status.running or alive:
        client.update_run(run_id, status="RUNNING")
        return
    if alive is None:
        return
    lacking = f"incomplete: {len(status.failed)} failed, {len(status.missing)} missing of {status.expected}"
    lacking += "".join(f"; {m['arch']} has runs of different widths" for m in status.mixed)
    client.set_tag(run_id, Tag.ERROR, lacking)
    client.set_terminated(run_id, "FAILED")
