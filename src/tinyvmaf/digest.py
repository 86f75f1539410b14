"""The digest of one sweep, built from MLflow: tables, JSON and figures, like Research Digest 0023.

``evaluate.py`` calls ``write_digest``: it finds the sweep (the latest by default), aggregates
the finished fold runs per arch (mean and sample standard deviation across folds), reports
failed runs, draws the figures with matplotlib, writes ``reports/<sweep_id>/`` and logs the
same files as artifacts of a summary run in the experiment.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

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
from tinyvmaf.metrics import loso_radii, metrics_per_source, paired_comparison
from tinyvmaf.mlflow_artifacts import local_artifact_root
from tinyvmaf.runs import (
    CLIP,
    COVERAGES,
    DIGEST_SUFFIXES,
    DIGEST_WORST,
    INTERVAL,
    LOSO_CLIP_MEAN,
    LOSO_CLIP_STD,
    LOSO_MEAN,
    LOSO_STD,
    METRIC_NAMES,
    SOURCE_CONFIDENCE,
    Kind,
    Metric,
    Param,
    Tag,
    heldout,
    loso_figures,
    search_runs,
)
from tinyvmaf.sweep.ledger import ledger_of_run
from tinyvmaf.sweep.status import SweepStatus, finish_sweep_run, mark_running_failed, sweep_status
from tinyvmaf.teacher.function import load_teacher
from tinyvmaf.tracking import (
    TrackedRun,
    Tracking,
    check_artifact_location,
    find_sweep_run,
    open_sweep_run,
    run_page_link,
    runs_table_url,
)


def fold_runs(client: MlflowClient, experiment_id: str, sweep_id: str | None) -> tuple[str, list[Run]]:
    """The fold runs of ``sweep_id``, whatever their status, or of the latest sweep when it is None."""
    runs = search_runs(client, experiment_id, Kind.FOLD)
    if not runs:
        raise TinyVmafError("the MLflow experiment holds no fold runs; run train.py first")
    if sweep_id is None:
        sweep_id = runs[0].data.tags.get(Tag.SWEEP_ID)
    mine = [r for r in runs if r.data.tags.get(Tag.SWEEP_ID) == sweep_id]
    if not mine:
        known = list(dict.fromkeys(r.data.tags.get(Tag.SWEEP_ID) for r in runs))[:10]
        raise TinyVmafError(f"sweep_id={sweep_id}: no such sweep; recent sweeps: {', '.join(map(str, known))}")
    return str(sweep_id), mine


INCOMPLETE = 3  # evaluate.py's exit status for a digest written of a sweep that lacks runs (0: complete, 1: error)


def aggregate(status: SweepStatus) -> dict:
    """Per-arch digest rows over the latest finished run of each (arch, fold)."""
    by_arch: dict[str, list[Run]] = defaultdict(list)
    for (arch, _), run in status.finished.items():
        by_arch[arch].append(run)
    digest = {}
    for arch in [a for a in status.archs if a in by_arch]:
        runs = sorted(by_arch[arch], key=lambda r: r.data.params[Param.FOLD])
        folds = [
            {
                "fold": r.data.params[Param.FOLD],
                "n": int(r.data.metrics[Metric.N_HELDOUT_FRAMES]),
                **heldout(r),
                "teacher_mean": r.data.metrics[Metric.HELDOUT_TEACHER_MEAN],
                "teacher_std": r.data.metrics[Metric.HELDOUT_TEACHER_STD],
                "run_id": r.info.run_id,
            }
            for r in runs
        ]
        digest[arch] = {"params": int(runs[0].data.metrics[Metric.N_PARAMS]), **mean_and_std(folds), "folds": folds}
    return digest


def mean_and_std(folds: list[dict]) -> dict[str, float]:
    """``<metric>_mean`` and ``<metric>_std`` over the folds' metrics: the LOSO figures'; per clip
    too (``clip_<metric>_...``) when every fold has them."""
    figures = loso_figures(folds)
    kinds = [(dict(zip(METRIC_NAMES, METRIC_NAMES)), LOSO_MEAN, LOSO_STD)]
    if LOSO_CLIP_MEAN["rmse"] in figures:
        kinds.append((CLIP, LOSO_CLIP_MEAN, LOSO_CLIP_STD))
    return {
        f"{name[m]}_{s}": figures[k[m]]
        for name, mean, std in kinds
        for m in METRIC_NAMES
        for s, k in (("mean", mean), ("std", std))
    }


SIGNIFICANCE = 0.05  # a difference counts when Wilcoxon's p is below it and the bootstrap CI excludes 0


def paired_verdict(a: str, b: str, compared: dict[str, float] | None) -> str:
    """One sentence on held-out RMSE, A minus B over their shared folds: which is better and by
    how much, or that the difference is within the fold-to-fold noise."""
    if compared is None:
        return f"{a} vs {b}: fewer than two shared folds, no test"
    mean, low, high, p, n = (compared[k] for k in ("mean", "low", "high", "p", "folds"))
    if p < SIGNIFICANCE and (high < 0 or low > 0):
        better, worse, by, ci = (a, b, -mean, (-high, -low)) if mean < 0 else (b, a, mean, (low, high))
        return (
            f"{better} better than {worse} by {by:.4f} RMSE [95 % CI {ci[0]:.4f}, {ci[1]:.4f}], "
            f"Wilcoxon p = {p:.2g} ({n} folds)"
        )
    return (
        f"{a} vs {b}: indistinguishable (RMSE difference {mean:+.4f} [95 % CI {low:+.4f}, {high:+.4f}], "
        f"Wilcoxon p = {p:.2g}, {n} folds)"
    )


def per_fold_rmse(row: dict) -> dict[str, float]:
    return {f["fold"]: f["rmse"] for f in row["folds"]}


def paired_within(archs: dict) -> list[dict]:
    """Every pair of archs of one sweep, compared fold by fold."""
    pairs = [(a, b) for i, a in enumerate(archs) for b in list(archs)[i + 1 :]]
    return [
        {"a": a, "b": b, "rmse": (c := paired_comparison(per_fold_rmse(archs[a]), per_fold_rmse(archs[b]))),
         "verdict": paired_verdict(a, b, c)}
        for a, b in pairs
    ]  # fmt: skip


def completeness(status: SweepStatus) -> dict:
    return {
        "expected": status.expected,
        "finished": len(status.finished),
        "failed": len(status.failed),
        "running": len(status.running),
        "missing": len(status.missing),
        "duplicates": status.duplicates,
        "mixed_widths": status.mixed,
    }


def aggregate_cells(row: dict) -> list[str]:
    """An arch's mean ± sample std per metric; one fold has no spread to show, and says so rather
    than a std of 0."""
    decimals = {m: 3 if m == "rmse" else 4 for m in METRIC_NAMES}
    if len(row["folds"]) < 2:
        return [f"{row[f'{m}_mean']:.{decimals[m]}f} (1 fold: no spread)" for m in METRIC_NAMES]
    return [f"{row[f'{m}_mean']:.{decimals[m]}f} ± {row[f'{m}_std']:.{decimals[m]}f}" for m in METRIC_NAMES]


def clip_cells(row: dict) -> list[str]:
    """Per-clip PLCC and RMSE, mean ± std; runs from before per-clip figures have none."""
    if "clip_rmse_mean" not in row:
        return ["—", "—"]
    spread = len(row["folds"]) > 1
    return [
        f"{row[f'clip_{m}_mean']:.{d}f}" + (f" ± {row[f'clip_{m}_std']:.{d}f}" if spread else "")
        for m, d in (("plcc", 4), ("rmse", 3))
    ]


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
    lines += [
        f"- not averaged: {m['arch']} has runs of different widths ({', '.join(m['widths'])}): several models under one "
        "arch name; give each its own arch name or sweep_id"
        for m in status.mixed
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
    return {"params": 0, "folds": folds, **mean_and_std(folds), "max_abs": float(np.abs(predicted - logged).max())}


def comparison(digest: dict, other: dict, sweep: str, other_sweep: str) -> list[str]:
    """Each arch of both sweeps side by side, and paired over the folds both trained."""
    lines = [
        "",
        f"## {sweep} vs {other_sweep}",
        "",
        f"| arch | RMSE {sweep} | RMSE {other_sweep} | worst fold {sweep} | worst fold {other_sweep} | PLCC {sweep} | PLCC {other_sweep} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for arch in digest:
        if arch in other:
            a, b = digest[arch], other[arch]
            worst_a, worst_b = (max(f["rmse"] for f in r["folds"]) for r in (a, b))
            lines.append(
                f"| {arch} | {a['rmse_mean']:.3f} | {b['rmse_mean']:.3f} | {worst_a:.3f} | {worst_b:.3f} | {a['plcc_mean']:.4f} | {b['plcc_mean']:.4f} |"
            )
            compared = paired_comparison(per_fold_rmse(a), per_fold_rmse(b))
            verdicts.append(f"- {arch}: " + paired_verdict(sweep, other_sweep, compared))
    return lines + [
        "",
        "Paired over the folds both sweeps trained (Wilcoxon signed-rank, paired bootstrap CI):",
        *verdicts,
    ]


def recipe_line(params: dict[str, str]) -> str:
    """An arch's recipe as its runs recorded it (a per-arch recipe differs from arch to arch)."""
    augment = f"x{params[Param.AUGMENT_AMOUNT]}" if params.get(Param.AUGMENT) == "True" else "off"
    return (
        f"Recipe `{params.get(Param.EXPERIMENT)}`: {params.get(Param.EPOCHS)} epochs, lr {params.get(Param.LR)}, "
        f"weight decay {params.get(Param.WEIGHT_DECAY)}, {params.get(Param.ACTIVATION)}, "
        f"feature-space augmentation {augment}."
    )


def markdown(
    sweep_id: str,
    archs: dict,
    status: SweepStatus,
    teacher_row: dict | None = None,
    comparison_lines: list[str] = (),
    paired: list[dict] = (),
    radii: dict[str, dict[str, float]] | None = None,
) -> str:
    """digest.md: the recipe, the aggregate table (and the teacher function's row), completeness,
    paired comparisons of its archs, how far from the teacher (conformal radii), a comparison
    with another sweep when asked, and the per-fold tables."""
    run = next(iter(status.finished.values()))
    params, data = run.data.params, run.inputs.dataset_inputs[0].dataset if run.inputs.dataset_inputs else None
    lines = [
        f"# tinyvmaf digest: sweep {sweep_id}",
        "",
        f"Teacher `{params.get(Param.TEACHER)}` (libvmaf {run.data.tags.get(Tag.LIBVMAF_VERSION)}), "
        f"corpus `{data.name + ':' + data.digest if data else params.get(Param.CORPUS)}`, "
        f"batch {params.get(Param.BATCH_SIZE)}, seed {params.get(Param.SEED)}. "
        "Leave-one-source-out: each fold trains on every other source and is scored on the held-out one.",
        "",
        "## Aggregate (mean ± sample std across folds)",
        "",
        "Per frame, and per clip (each clip's frames pooled by their mean, as libvmaf pools them).",
        "",
        "| arch | params | PLCC | SROCC | RMSE | PLCC per clip | RMSE per clip |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arch, row in archs.items():
        lines.append(f"| {arch} | {row['params']:,} | " + " | ".join(aggregate_cells(row) + clip_cells(row)) + " |")
    if teacher_row is not None:
        row = teacher_row
        lines.append(
            f"| teacher function | 0 | {row['plcc_mean']:.6f} ± {row['plcc_std']:.6f} | {row['srocc_mean']:.6f} ± {row['srocc_std']:.6f} "
            f"| {row['rmse_mean']:.6f} ± {row['rmse_std']:.6f} | | |"
        )
        lines += [
            "",
            f"The teacher-function row is libvmaf's `{params.get(Param.TEACHER)}` model JSON evaluated in numpy from the cached features, "
            f"scored against the values libvmaf logged (max |difference| {row['max_abs']:.1e} over {sum(f['n'] for f in row['folds']):,} frames).",
        ]
    lines += completeness_lines(status)
    if paired:
        lines += ["", "## Paired comparisons (held-out RMSE, fold by fold)", ""]
        lines += [f"- {p['verdict']}" for p in paired]
    lines += interval_lines(radii or {})
    lines += comparison_lines
    runs = {r.info.run_id: r for r in status.finished.values()}
    for arch, row in archs.items():
        lines += [
            "",
            f"## {arch}",
            "",
            recipe_line(runs[row["folds"][0]["run_id"]].data.params),
            "",
            "| fold | n | teacher mean | teacher std | PLCC | SROCC | RMSE | PLCC per clip | RMSE per clip |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for f in row["folds"]:
            clip = f"{f['clip_plcc']:.4f} | {f['clip_rmse']:.3f}" if "clip_rmse" in f else "— | —"
            lines.append(
                f"| {f['fold']} | {f['n']:,} | {f['teacher_mean']:.2f} | {f['teacher_std']:.2f} | {f['plcc']:.4f} | {f['srocc']:.4f} | {f['rmse']:.3f} | {clip} |"
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


def heldout_predictions(client: MlflowClient, digest: dict) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Each fold's logged held-out predictions (``heldout.npz``, read without pickle), by arch and
    fold: ``teacher``, ``predicted`` and (runs since per-clip figures) ``clip``. A fold without
    them is said and left out of the figures and radii."""
    found: dict[str, dict[str, dict[str, np.ndarray]]] = {arch: {} for arch in digest}
    with tempfile.TemporaryDirectory() as tmp:
        for arch, row in digest.items():
            for f in row["folds"]:
                try:
                    location = client.get_run(f["run_id"]).info.artifact_uri
                    check_artifact_location(
                        client.tracking_uri, location, f"run {f['run_id']} ({arch} fold {f['fold']})"
                    )
                    with np.load(
                        client.download_artifacts(f["run_id"], "heldout.npz", tmp), allow_pickle=False
                    ) as data:
                        logged = {k: data[k] for k in ("teacher", "predicted", "clip") if k in data}
                    if (
                        not {"teacher", "predicted"} <= set(logged)
                        or logged["teacher"].shape != logged["predicted"].shape
                    ):
                        raise ValueError("not a fold's held-out predictions")
                    found[arch][f["fold"]] = logged
                except (MlflowException, OSError, ValueError, zipfile.BadZipFile):
                    print(
                        f"warning: run {f['run_id']} ({arch} {f['fold']}) has no readable heldout.npz: "
                        "left out of the scatter plot and the radii"
                    )
    return found


def intervals(heldout: dict[str, dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, float]]:
    """Each arch's split-conformal radii from its folds' held-out residuals (as export computes them):
    how far from the teacher a frame, a clip or a new source's frames fall."""
    return {
        arch: loso_radii([(d["predicted"], d["teacher"], d.get("clip")) for d in folds.values()])
        for arch, folds in heldout.items()
        if folds
    }


def interval_lines(radii: dict[str, dict[str, float]]) -> list[str]:
    """The digest's table of radii; a radius too few residuals cannot promise shows as —."""
    if not radii:
        return []
    header = " | ".join(f"{unit} {c} %" for unit in ("frame", "clip", "source") for c in COVERAGES)
    lines = [
        "",
        "## How far from the teacher (split-conformal radii, VMAF points)",
        "",
        "From the held-out residuals: a frame (clip) of an unseen source is within the frame (clip) radius "
        "of the teacher at least that often, if sources are exchangeable; the source radius holds that share "
        f"of a new source's frames for {SOURCE_CONFIDENCE:.0%} of sources.",
        "",
        f"| arch | {header} |",
        "|---|" + "---:|" * (3 * len(COVERAGES)),
    ]
    for arch, r in radii.items():
        cells = [
            f"{r[key]:.3f}" if key in r else "—"
            for key in (INTERVAL[(u, c)] for u in ("frame", "clip", "source") for c in COVERAGES)
        ]
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    return lines


def scatter_figure(digest: dict, heldout: dict[str, dict[str, dict[str, np.ndarray]]], path: Path) -> None:
    # Figure, not pyplot: no global backend or figure registry, so importing this module changes nothing.
    fig = Figure(figsize=(5 * len(digest), 5))
    axes = fig.subplots(1, len(digest), squeeze=False)
    colours = matplotlib.colormaps["tab10"]
    for ax, (arch, row) in zip(axes[0], digest.items()):
        for i, f in enumerate(row["folds"]):
            data = heldout[arch].get(f["fold"])
            if data is not None:
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
    tops = {r.data.tags.get(Tag.PARENT, r.info.run_id) for r in runs}  # a fold run, or its configuration's run
    for run_id in tops - {sweep_run}:
        if Tag.PARENT not in client.get_run(run_id).data.tags:
            client.set_tag(run_id, Tag.PARENT, sweep_run)
            client.set_tag(run_id, Tag.NESTED_BY, "evaluate.py")  # not by its job: the sweep had no run then


def digest_metrics(archs: dict, status: SweepStatus) -> dict[str, float]:
    """What the sweep run shows in the runs table: per-arch aggregates and the sweep's completeness."""
    metrics = {
        Metric.FOLDS_EXPECTED: status.expected, Metric.FOLDS_FINISHED: len(status.finished),
        Metric.FOLDS_FAILED: len(status.failed), Metric.FOLDS_RUNNING: len(status.running),
        Metric.FOLDS_MISSING: len(status.missing),
    }  # fmt: skip
    for arch, row in archs.items():
        for m in (*METRIC_NAMES, *(CLIP[m] for m in METRIC_NAMES if f"{CLIP['rmse']}_mean" in row)):
            for suffix in DIGEST_SUFFIXES:
                metrics[f"{arch}/{m}_{suffix}"] = row[f"{m}_{suffix}"]
        metrics[f"{arch}/{DIGEST_WORST}"] = max(f["rmse"] for f in row["folds"])
    return metrics


def trial_run(client: MlflowClient, experiment_id: str, sweep: str, trial: str) -> Run:
    """A finished, unpruned search trial of the sweep (a study): ``best`` (lowest LOSO mean RMSE) or its number."""
    runs = search_runs(client, experiment_id, Kind.LOSO, sweep=sweep, status="FINISHED")
    trials = [r for r in runs if Param.TRIAL in r.data.params and Tag.PRUNED not in r.data.tags]
    if str(trial) == "best" and trials:
        return min(trials, key=lambda r: r.data.metrics[LOSO_MEAN["rmse"]])
    found = [r for r in trials if r.data.params[Param.TRIAL] == str(trial)]
    if not found:
        numbers = ", ".join(sorted((r.data.params[Param.TRIAL] for r in trials), key=int)[:20]) or "none"
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
        runs = [r for r in runs if r.data.tags.get(Tag.PARENT) == trial.info.run_id]
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
        "paired": (paired := paired_within(archs)),
        "intervals": (radii := intervals(heldout := heldout_predictions(client, archs))),
    }
    teacher_row, comparison_lines = None, []
    if cfg.get("teacher_function_row", True):
        corpus, cache = instantiate_checked(cfg.corpus), instantiate_checked(cfg.cache)
        teacher = runs[0].data.params.get(Param.TEACHER, "vmaf_v0.6.1")
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
    (out / "digest.json").write_text(json.dumps(document, indent=2, allow_nan=False))  # strict JSON: every value finite
    (out / "digest.md").write_text(markdown(title, archs, status, teacher_row, comparison_lines, paired, radii))
    scatter_figure(archs, heldout, out / "scatter.png")
    rmse_figure(archs, out / "rmse_per_fold.png")
    if trial is None:
        params = runs[0].data.params
        sweep_run = open_sweep_run(
            tracking,
            sweep,
            {k: params.get(k) for k in (Param.EXPERIMENT, Param.TEACHER, Param.CORPUS)}
            | {Param.ARCHS: ",".join(archs)},
        )
        adopt_runs(client, sweep_run, runs)
    logged = TrackedRun(client, sweep_run if trial is None else trial.info.run_id)
    shown = logged.run_id
    radius_metrics = {f"{arch}/{key}": value for arch, r in radii.items() for key, value in r.items()}
    logged.log_metrics([{"step": 0, **digest_metrics(archs, status), **radius_metrics}], step_key="step")
    for name in ("digest.md", "digest.json", "scatter.png", "rmse_per_fold.png"):
        logged.log_artifact(out / name)
    if trial is None:
        finish_sweep_run(client, client.get_run(sweep_run), status)
    print((out / "digest.md").read_text().split("\n## ")[1])
    print("\n".join(completeness_lines(status)[2:]))
    print("\n".join(p["verdict"] for p in paired))
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
