"""The digest of one sweep, built from MLflow: tables, JSON and figures, like Research Digest 0023.

``evaluate.py`` calls ``write_digest``: it finds the sweep (the latest by default), aggregates
the finished fold runs per arch (mean and sample standard deviation across folds), reports
failed runs, draws the figures with matplotlib, writes ``reports/<sweep_id>/`` and logs the
same files as artifacts of a summary run in the experiment.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from tinyvmaf.cache import FrameTable
from tinyvmaf.errors import TinyVmafError, instantiate_checked
from tinyvmaf.files import inside
from tinyvmaf.metrics import METRIC_NAMES, metrics_per_source
from tinyvmaf.mlflow_artifacts import local_artifact_root
from tinyvmaf.teacher.function import load_teacher
from tinyvmaf.tracking import (
    FOLD,
    KIND,
    LOSO,
    PARENT,
    TrackedRun,
    Tracking,
    check_artifact_location,
    find_sweep_run,
    ledger_of_run,
    open_sweep_run,
    process_alive,
    quoted,
    run_page_link,
    runs_table_url,
)


def fold_runs(
    client: MlflowClient, experiment_id: str, sweep_id: str | None, recipe: str | None = None
) -> tuple[str, list[Run]]:
    """The fold runs of ``sweep_id``, or of the latest sweep when it is None; with ``recipe``, only
    runs of that named recipe (``experiment_name``: ``default``, ``shipped``...) count."""
    found = client.search_runs(
        [experiment_id], f"tags.{KIND} = '{FOLD}'", max_results=50000, order_by=["attributes.start_time DESC"]
    )
    runs = list(found)
    if recipe is not None:
        runs = [r for r in runs if r.data.params.get("experiment", "default") == recipe]
    if not runs:
        raise TinyVmafError(
            f"the MLflow experiment holds no fold runs{f' of experiment={recipe}' if recipe else ''}; run train.py first"
        )
    if sweep_id is None:
        sweep_id = runs[0].data.tags.get("sweep_id")
    mine = [r for r in runs if r.data.tags.get("sweep_id") == sweep_id]
    if not mine:
        known = list(dict.fromkeys(r.data.tags.get("sweep_id") for r in runs))[:10]
        raise TinyVmafError(f"sweep_id={sweep_id}: no such sweep; recent sweeps: {', '.join(map(str, known))}")
    return str(sweep_id), mine


INCOMPLETE = 3  # evaluate.py's exit status for a digest written of a sweep that lacks runs (0: complete, 1: error)


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
        by_pair[(r.data.params.get("arch", "?"), r.data.params.get("fold", "?"))].append(r)
        sources.update(dict.fromkeys(json.loads(r.data.tags.get("corpus_sources", "[]"))))
    jobs = {(j["arch"], f): j for j in ledger or [] for f in j["folds"]}
    if jobs:
        pairs = list(dict.fromkeys([*jobs, *((a, f) for a, f in sorted(by_pair, key=lambda p: p[1]))]))
    else:  # in the order the sweep started them: the user's order on the command line
        archs = list(dict.fromkeys(r.data.params.get("arch", "?") for r in oldest_first))
        pairs = [(a, f) for a in archs for f in sorted(set(sources) | {f for _, f in by_pair})]
    states = _slurm_states([*by_pair.values()], jobs.values())
    finished, failed, running, duplicates, stale = {}, [], [], [], []
    for (arch, fold), pair_runs in by_pair.items():
        done = [
            r
            for r in pair_runs
            if r.info.status == "FINISHED" and all(f"heldout_{m}" in r.data.metrics for m in METRIC_NAMES)
        ]
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
    missing = [
        {"arch": a, "fold": f, "why": _never_started(jobs.get((a, f)), states)}
        for a, f in pairs
        if (a, f) not in by_pair
    ]
    archs = list(dict.fromkeys(a for a, _ in pairs))
    folds = list(dict.fromkeys(f for _, f in sorted(pairs, key=lambda p: p[1])))
    return SweepStatus(finished, failed, running, missing, duplicates, archs, folds, pairs, stale)


def _row(arch: str, fold: str, run: Run, states: dict) -> dict:
    row = {"arch": arch, "fold": fold, "status": run.info.status, "run_id": run.info.run_id,
           "error": run.data.tags.get("error", "")}  # fmt: skip
    if run.info.status == "RUNNING":
        row["alive"], row["process"] = run_liveness(run, states)
    return row


def _slurm_states(pair_runs: list[list[Run]], jobs: Any) -> dict:
    """SLURM's word on every job the sweep's RUNNING runs and planned jobs name (one query)."""
    from tinyvmaf.slurm import job_states

    names = [r.data.tags.get("slurm_job") for runs in pair_runs for r in runs if r.info.status == "RUNNING"]
    names += [j.get("slurm_job") for j in jobs]
    names = [n for n in names if isinstance(n, str) and n]
    return (job_states(names) or {}) if names else {}


def run_liveness(run: Run, states: dict) -> tuple[str, str]:
    """Whether a RUNNING run's attempt can still finish: ``alive``, ``dead`` or ``unknown``, and why.
    A SLURM job's run asks SLURM (its attempt is dead once the job is over or was requeued past
    it); any other run asks this host for its process."""
    job = run.data.tags.get("slurm_job")
    if job:
        state = states.get(job)
        attempt = int(run.data.tags.get("slurm_restart", "0") or 0)
        if state is None:
            return "unknown", f"SLURM job {job}: SLURM cannot be asked from here, or has forgotten it"
        if state.attempts > attempt + 1:
            return "dead", f"SLURM job {job} was requeued: this attempt ({attempt + 1}) is gone"
        if state.live:
            return "alive", f"SLURM job {job} is {state.state}"
        return "dead", f"SLURM job {job} ended {state.state}: this run will never finish"
    host, pid = run.data.tags.get("host"), run.data.tags.get("pid", "")
    if host != os.uname().nodename or not pid.isdigit():
        return "unknown", f"on host {host or 'unknown'}: cannot tell from here"
    if not process_alive(int(pid)):
        return "dead", f"process {pid} is gone (killed): it will never finish"
    return "alive", f"process {pid} is still alive"


def _never_started(job: dict | None, states: dict) -> str:
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
        client.set_tag(row["run_id"], "error", f"marked failed by evaluate.py fail_running=true ({row['process']})")
        client.set_terminated(row["run_id"], "FAILED")
        row["status"] = "FAILED"
        if row in status.running:
            status.failed.append(row)
    status.running = [r for r in status.running if r["status"] == "RUNNING"]
    status.stale = []


def aggregate(status: SweepStatus) -> dict:
    """Per-arch digest rows over the latest finished run of each (arch, fold)."""
    by_arch: dict[str, list[Run]] = defaultdict(list)
    for (arch, _), run in status.finished.items():
        by_arch[arch].append(run)
    digest = {}
    for arch in [a for a in status.archs if a in by_arch]:
        folds = sorted(by_arch[arch], key=lambda r: r.data.params["fold"])
        row: dict = {"params": int(folds[0].data.metrics["n_params"])}
        for m in METRIC_NAMES:
            values = np.array([r.data.metrics[f"heldout_{m}"] for r in folds])
            row[f"{m}_mean"] = float(values.mean())
            row[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        row["folds"] = [
            {
                "fold": r.data.params["fold"],
                "n": int(r.data.metrics["n_heldout_frames"]),
                **{m: r.data.metrics[f"heldout_{m}"] for m in METRIC_NAMES},
                "teacher_mean": r.data.metrics["heldout_teacher_mean"],
                "teacher_std": r.data.metrics["heldout_teacher_std"],
                "run_id": r.info.run_id,
            }
            for r in folds
        ]
        digest[arch] = row
    return digest


def completeness(status: SweepStatus) -> dict:
    return {
        "expected": status.expected,
        "finished": len(status.finished),
        "failed": len(status.failed),
        "running": len(status.running),
        "missing": len(status.missing),
        "duplicates": status.duplicates,
    }


def completeness_lines(status: SweepStatus) -> list[str]:
    """The digest's statement of what it averages over, and what it lacks."""
    lines = [
        "",
        "## Completeness",
        "",
        f"{len(status.archs)} arch(s), {len(status.folds)} fold(s): {status.expected} runs expected: "
        f"{len(status.finished)} finished, {len(status.failed)} failed, {len(status.running)} still RUNNING, {len(status.missing)} missing."
        + ("" if status.complete else " **Incomplete: the means above cover the finished folds only.**"),
    ]
    lines += [f"- failed: {f['arch']} fold {f['fold']}: {f['status']} {f['error']}" for f in status.failed]
    lines += [f"- RUNNING: {r['arch']} fold {r['fold']} (run {r['run_id']}): {r['process']}" for r in status.running]
    lines += [f"- missing: {m['arch']} fold {m['fold']} ({m['why']})" for m in status.missing]
    lines += [
        f"- a dead attempt still RUNNING: {r['arch']} fold {r['fold']} (run {r['run_id']}, finished since): {r['process']}; "
        "fail_running=true marks it FAILED"
        for r in status.stale
    ]
    lines += [
        f"- duplicates: {d['arch']} fold {d['fold']} finished {d['runs']} times; only the latest (run {d['counted']}) counts"
        for d in status.duplicates
    ]
    return lines


def teacher_function_row(table: FrameTable, teacher: str) -> dict:
    """The teacher as code (libvmaf's model JSON in numpy) against libvmaf's logged scores, per source."""
    function = load_teacher(teacher)
    predicted = function(table.columns(function.feature_columns))
    logged = table.scores[teacher]
    source_of_frame = table.source_of_frame
    folds = [
        {"fold": row.pop("source"), **row, "max_abs": float(np.abs(predicted - logged)[source_of_frame == i].max())}
        for i, row in enumerate(metrics_per_source(predicted, logged, source_of_frame, table.sources))
    ]
    row: dict = {"params": 0, "folds": folds}
    for m in METRIC_NAMES:
        values = np.array([f[m] for f in folds])
        row[f"{m}_mean"], row[f"{m}_std"] = float(values.mean()), float(values.std(ddof=1))
    row["max_abs"] = float(np.abs(predicted - logged).max())
    return row


def comparison(digest: dict, other: dict, sweep: str, other_sweep: str) -> list[str]:
    lines = [
        "",
        f"## {sweep} vs {other_sweep}",
        "",
        f"| arch | RMSE {sweep} | RMSE {other_sweep} | worst fold {sweep} | worst fold {other_sweep} | PLCC {sweep} | PLCC {other_sweep} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arch in digest:
        if arch in other:
            a, b = digest[arch], other[arch]
            worst_a, worst_b = (max(f["rmse"] for f in r["folds"]) for r in (a, b))
            lines.append(
                f"| {arch} | {a['rmse_mean']:.3f} | {b['rmse_mean']:.3f} | {worst_a:.3f} | {worst_b:.3f} | {a['plcc_mean']:.4f} | {b['plcc_mean']:.4f} |"
            )
    return lines


def recipe_line(params: dict[str, str]) -> str:
    """An arch's recipe as its runs recorded it (a per-arch recipe differs from arch to arch)."""
    augment = f"x{params['augment_amount']}" if params.get("augment") == "True" else "off"
    return (
        f"Recipe `{params.get('experiment')}`: {params.get('epochs')} epochs, lr {params.get('lr')}, "
        f"weight decay {params.get('weight_decay')}, {params.get('activation')}, feature-space augmentation {augment}."
    )


def markdown(
    sweep_id: str, archs: dict, status: SweepStatus, teacher_row: dict | None = None, comparison_lines: list[str] = ()
) -> str:
    """digest.md: the recipe, the aggregate table (and the teacher function's row), completeness,
    a comparison with another sweep when asked, and the per-fold tables."""
    run = next(iter(status.finished.values()))
    params, data = run.data.params, run.inputs.dataset_inputs[0].dataset if run.inputs.dataset_inputs else None
    lines = [
        f"# tinyvmaf digest: sweep {sweep_id}",
        "",
        f"Teacher `{params.get('teacher')}` (libvmaf {run.data.tags.get('libvmaf_version')}), "
        f"corpus `{data.name + ':' + data.digest if data else params.get('corpus')}`, "
        f"batch {params.get('batch_size')}, seed {params.get('seed')}. "
        "Leave-one-source-out: each fold trains on every other source and is scored on the held-out one.",
        "",
        "## Aggregate (mean ± sample std across folds)",
        "",
        "| arch | params | PLCC | SROCC | RMSE |",
        "|---|---:|---:|---:|---:|",
    ]
    for arch, row in archs.items():
        cells = [
            f"{row[f'{m}_mean']:.4f} ± {row[f'{m}_std']:.4f}"
            if m != "rmse"
            else f"{row['rmse_mean']:.3f} ± {row['rmse_std']:.3f}"
            for m in METRIC_NAMES
        ]
        lines.append(f"| {arch} | {row['params']:,} | " + " | ".join(cells) + " |")
    if teacher_row is not None:
        row = teacher_row
        lines.append(
            f"| teacher function | 0 | {row['plcc_mean']:.6f} ± {row['plcc_std']:.6f} | {row['srocc_mean']:.6f} ± {row['srocc_std']:.6f} "
            f"| {row['rmse_mean']:.6f} ± {row['rmse_std']:.6f} |"
        )
        lines += [
            "",
            f"The teacher-function row is libvmaf's `{params.get('teacher')}` model JSON evaluated in numpy from the cached features, "
            f"scored against the values libvmaf logged (max |difference| {row['max_abs']:.1e} over {sum(f['n'] for f in row['folds']):,} frames).",
        ]
    lines += completeness_lines(status)
    lines += comparison_lines
    runs = {r.info.run_id: r for r in status.finished.values()}
    for arch, row in archs.items():
        lines += [
            "",
            f"## {arch}",
            "",
            recipe_line(runs[row["folds"][0]["run_id"]].data.params),
            "",
            "| fold | n | teacher mean | teacher std | PLCC | SROCC | RMSE |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for f in row["folds"]:
            lines.append(
                f"| {f['fold']} | {f['n']:,} | {f['teacher_mean']:.2f} | {f['teacher_std']:.2f} | {f['plcc']:.4f} | {f['srocc']:.4f} | {f['rmse']:.3f} |"
            )
    lines += [
        "",
        "## Figures",
        "",
        "![predicted vs teacher](scatter.png)",
        "",
        "![per-fold RMSE](rmse_per_fold.png)",
        "",
    ]
    return "\n".join(lines)


def scatter_figure(client: MlflowClient, digest: dict, path: Path) -> None:
    # Figure, not pyplot: no global backend or figure registry, so importing this module changes nothing.
    fig = Figure(figsize=(5 * len(digest), 5))
    axes = fig.subplots(1, len(digest), squeeze=False)
    colours = matplotlib.colormaps["tab10"]
    with tempfile.TemporaryDirectory() as tmp:
        for ax, (arch, row) in zip(axes[0], digest.items()):
            for i, f in enumerate(row["folds"]):
                try:
                    location = client.get_run(f["run_id"]).info.artifact_uri
                    check_artifact_location(
                        client.tracking_uri, location, f"run {f['run_id']} ({arch} fold {f['fold']})"
                    )
                    data = np.load(client.download_artifacts(f["run_id"], "heldout.npz", tmp), allow_pickle=False)
                except MlflowException:
                    print(
                        f"warning: run {f['run_id']} ({arch} {f['fold']}) has no heldout.npz: left out of the scatter plot"
                    )
                    continue
                ax.scatter(data["teacher"], data["predicted"], s=3, alpha=0.5, color=colours(i % 10), label=f["fold"])
            ax.plot([0, 100], [0, 100], color="black", lw=0.8)
            ax.set(
                title=f"{arch}: held-out predictions",
                xlabel="teacher VMAF",
                ylabel="predicted VMAF",
                xlim=(0, 100),
                ylim=(0, 100),
            )
        axes[0][-1].legend(markerscale=4, fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def rmse_figure(digest: dict, path: Path) -> None:
    folds = sorted({f["fold"] for row in digest.values() for f in row["folds"]})
    fig = Figure(figsize=(max(8, len(folds) * 1.1), 4.5))
    ax = fig.subplots()
    width = 0.8 / max(1, len(digest))
    for i, (arch, row) in enumerate(digest.items()):
        rmse = {f["fold"]: f["rmse"] for f in row["folds"]}
        ax.bar(np.arange(len(folds)) + i * width, [rmse.get(f, np.nan) for f in folds], width, label=arch)
    ax.set_xticks(np.arange(len(folds)) + width * (len(digest) - 1) / 2, folds, rotation=30, ha="right")
    ax.set(ylabel="held-out RMSE (VMAF points)", title="Per-fold RMSE")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def adopt_runs(client: MlflowClient, sweep_run: str, runs: list[Run]) -> None:
    """Nest the sweep's top-level runs under its sweep run (a sweep trained before it had one, a single run)."""
    tops = {r.data.tags.get(PARENT, r.info.run_id) for r in runs}  # a fold run, or its configuration's run
    for run_id in tops - {sweep_run}:
        if PARENT not in client.get_run(run_id).data.tags:
            client.set_tag(run_id, PARENT, sweep_run)
            client.set_tag(run_id, "nested_by", "evaluate.py")  # not by its job: the sweep had no run then


def digest_metrics(archs: dict, status: SweepStatus) -> dict[str, float]:
    """What the sweep run shows in the runs table: per-arch aggregates and the sweep's completeness."""
    metrics = {
        "folds_expected": status.expected, "folds_finished": len(status.finished), "folds_failed": len(status.failed),
        "folds_running": len(status.running), "folds_missing": len(status.missing),
    }  # fmt: skip
    for arch, row in archs.items():
        for m in METRIC_NAMES:
            metrics[f"{arch}/{m}_mean"], metrics[f"{arch}/{m}_std"] = row[f"{m}_mean"], row[f"{m}_std"]
        metrics[f"{arch}/rmse_worst"] = max(f["rmse"] for f in row["folds"])
    return metrics


def finish_sweep_run(client: MlflowClient, run_id: str, status: SweepStatus) -> None:
    """FINISHED once every expected run finished; FAILED, saying what is lacking, when the sweep is over
    without it; left RUNNING while some of its runs still are."""
    if status.running:
        return
    if status.complete:
        client.set_terminated(run_id, "FINISHED")
        return
    lacking = f"incomplete: {len(status.failed)} failed, {len(status.missing)} missing of {status.expected}"
    client.set_tag(run_id, "error", lacking)
    client.set_terminated(run_id, "FAILED")


def trial_run(client: MlflowClient, experiment_id: str, sweep: str, trial: str) -> Run:
    """A finished, unpruned search trial of the sweep (a study): ``best`` (lowest LOSO mean RMSE) or its number."""
    query = f"tags.sweep_id = {quoted(sweep, 'sweep_id')} and tags.{KIND} = '{LOSO}' and attributes.status = 'FINISHED'"
    runs = client.search_runs([experiment_id], query, max_results=50000)
    trials = [r for r in runs if "trial" in r.data.params and "pruned" not in r.data.tags]
    if str(trial) == "best" and trials:
        return min(trials, key=lambda r: r.data.metrics["loso_rmse_mean"])
    found = [r for r in trials if r.data.params["trial"] == str(trial)]
    if not found:
        numbers = ", ".join(sorted((r.data.params["trial"] for r in trials), key=int)[:20]) or "none"
        raise TinyVmafError(
            f"trial={trial}: no finished, unpruned trial of that number in sweep {sweep} (finished: {numbers})"
        )
    return found[0]


def write_digest(cfg: DictConfig) -> int:
    """``evaluate.py`` (and the end of every train.py sweep): the digest of one sweep, written to
    ``reports/<sweep_id>/`` and logged to the sweep's MLflow run (metrics and files)."""
    tracking: Tracking = instantiate_checked(cfg.tracking)
    client, experiment_id = tracking.existing_experiment()
    sweep, runs = fold_runs(client, experiment_id, cfg.get("sweep_id"))
    trial = None
    if cfg.get("trial") is not None:  # one trial of a search: its folds, its own digest, logged to its run
        trial = trial_run(client, experiment_id, sweep, cfg.trial)
        runs = [r for r in runs if r.data.tags.get(PARENT) == trial.info.run_id]
    parent = find_sweep_run(client, experiment_id, sweep)
    ledger = ledger_of_run(client, parent.info.run_id) if parent is not None and trial is None else None
    status = sweep_status(runs, ledger)
    if cfg.get("fail_running") and (status.running or status.stale):
        mark_running_failed(client, status)
    archs = aggregate(status)
    if not archs:  # nothing to average: what the sweep holds is still worth saying
        print("\n".join(completeness_lines(status)[3:]))
        raise TinyVmafError(f"sweep_id={sweep}: none of its {len(runs)} runs finished: no digest")
    document: dict = {
        "sweep_id": sweep,
        "archs": archs,
        "completeness": completeness(status),
        "failed_runs": status.failed,
        "running_runs": status.running,
    }
    teacher_row, comparison_lines = None, []
    if cfg.get("teacher_function_row", True):
        corpus, cache = instantiate_checked(cfg.corpus), instantiate_checked(cfg.cache)
        teacher = runs[0].data.params.get("teacher", "vmaf_v0.6.1")
        document["teacher_function"] = teacher_row = teacher_function_row(cache.ready(corpus), teacher)
    if cfg.get("compare_sweep_id"):
        other_sweep, other_runs = fold_runs(client, experiment_id, cfg.compare_sweep_id)
        other = aggregate(sweep_status(other_runs))
        document["compared_with"] = {"sweep_id": other_sweep, "archs": other}
        comparison_lines = comparison(archs, other, sweep, other_sweep)
    title = sweep if trial is None else f"{sweep} {trial.info.run_name}"
    out = inside(Path(cfg.paths.reports_dir), sweep, what="sweep_id")
    out = out if trial is None else inside(out, trial.info.run_name, what="trial")
    out.mkdir(parents=True, exist_ok=True)
    (out / "digest.json").write_text(json.dumps(document, indent=2))
    (out / "digest.md").write_text(markdown(title, archs, status, teacher_row, comparison_lines))
    scatter_figure(client, archs, out / "scatter.png")
    rmse_figure(archs, out / "rmse_per_fold.png")
    if trial is None:
        params = runs[0].data.params
        sweep_run = open_sweep_run(
            tracking,
            sweep,
            {k: params.get(k) for k in ("experiment", "teacher", "corpus")} | {"archs": ",".join(archs)},
        )
        adopt_runs(client, sweep_run, runs)
    logged = TrackedRun(client, sweep_run if trial is None else trial.info.run_id)
    shown = logged.run_id
    logged.log_metrics([{"step": 0, **digest_metrics(archs, status)}], step_key="step")
    for name in ("digest.md", "digest.json", "scatter.png", "rmse_per_fold.png"):
        logged.log_artifact(out / name)
    if trial is None:
        finish_sweep_run(client, sweep_run, status)
    print((out / "digest.md").read_text().split("\n## ")[1])
    print("\n".join(completeness_lines(status)[2:]))
    if status.running or status.stale:
        print(
            "warning: runs still RUNNING are left out; those whose process or job is gone: mark them failed with fail_running=true"
        )
    print(f"digest: {out}/digest.md")
    artifacts = local_artifact_root(tracking.uri)
    ui = tracking.uri if artifacts is None else "http://127.0.0.1:5000"
    if artifacts is None:
        print(f"MLflow: {runs_table_url(ui, experiment_id)}")
    else:
        print(f"MLflow: mlflow ui --backend-store-uri {tracking.uri} --artifacts-destination {artifacts}")
        print(f"        then open {runs_table_url(ui, experiment_id)}")
    print(f"        this sweep's run: {ui.rstrip('/')}/{run_page_link(experiment_id, shown)}")
    return 0 if status.complete else INCOMPLETE
