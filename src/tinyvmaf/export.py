"""Shipping models: one self-contained ONNX file each, checked every time it is written.

Contract: input ``features`` float32 [N, F] (the teacher's raw libvmaf values, F = 6 for the
v0.6.1 family, 4 for v1.0.16, order in ``feature_names``), output ``vmaf`` float32 [N] in the
teacher's ``score_range``; dynamic batch; standardization and clip in the graph; no external
data; metadata: feature_names, score_range, display and bit_depth where measured at a display,
teacher, arch, n_params, corpus, libvmaf_version and the LOSO metrics of the recipe.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from tinyvmaf.cache import FrameTable, TeacherCache
from tinyvmaf.corpus import Corpus
from tinyvmaf.errors import SEEDS, TinyVmafError, boolean_option, instantiate_checked, seed_option
from tinyvmaf.lusoris import DropInFolder
from tinyvmaf.metrics import clip_metrics, domain_max_error, loso_radii, pooled_per_clip, score_metrics
from tinyvmaf.model import VmafNet, count_params
from tinyvmaf.onnx_io import MAX_MODEL_BYTES, ONNX_TOLERANCE, check_graph, model_from_weights, onnx_graph, open_session
from tinyvmaf.runs import (
    CHECK,
    CHECK_CLIP,
    CHECK_CORPUS,
    CHECK_COVERAGE,
    CLIP,
    DOMAIN_MAX_ERROR,
    INTERVAL,
    LOSO_CLIP_MEAN,
    LOSO_CLIP_STD,
    LOSO_EXPERIMENT_ID,
    LOSO_FOLDS,
    LOSO_FRESH_MEAN,
    LOSO_FRESH_SEEDS,
    LOSO_MEAN,
    LOSO_STD,
    LOSO_WORST,
    METRIC_NAMES,
    Kind,
    Param,
    Tag,
    finished_folds,
    heldout,
    latest_per_fold,
    loso_figures,
)
from tinyvmaf.teacher.function import load_teacher, shipped_teachers
from tinyvmaf.tracking import (
    Tracking,
    check_artifact_location,
    log_dataset,
    log_onnx_model,
    run_by_id,
    run_page_link,
    tracked_run,
)
from tinyvmaf.training import Job, check_options, train_every_fold

LUSORIS = "lusoris"
LAYOUTS = ("standard", LUSORIS)  # tinyvmaf's own files, or the reference toolchain's model/tiny/ (tinyvmaf.lusoris)
TEACHER_TOLERANCE = 1e-3  # VMAF points: libvmaf's models as ONNX against libvmaf's own scores


def with_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> onnx.ModelProto:
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=str(value))
    return proto


def to_onnx(model: VmafNet, path: Path, metadata: dict[str, str]) -> onnx.ModelProto:
    """Write the clipped model as one ONNX file (no external data) with ``metadata_props``."""
    proto = with_metadata(onnx_graph(model), metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return proto


def with_arch(cfg: DictConfig, arch: DictConfig) -> DictConfig:
    """The export configuration of one shipped model: its arch in place of ``arch``, so that a
    per-arch recipe (``experiment=shipped``) resolves to that arch's values."""
    return OmegaConf.merge(cfg, {"arch": arch})


def train_on_all_sources(job: Job) -> tuple[VmafNet, FrameTable]:
    datamodule, module, trainer = job.fit_objects(None, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    return module.model, datamodule.table


def evidence_of(client: MlflowClient, runs: list[Run], table: FrameTable) -> dict[str, str]:
    """A LOSO's figures from its finished fold runs (one per held-out source), as metadata and
    version tags, with the sweep and the run the folds sit under (the stacked job's, or the
    sweep's). From the folds' own held-out predictions: per-clip figures (``loso_clip_*``) and
    split-conformal radii (``interval_*``), per frame and per clip, over every held-out frame."""
    parents = {r.data.tags.get(Tag.PARENT) for r in runs}
    per_fold, predictions = [], []
    for run in runs:
        teacher, predicted, rows = logged_heldout(client, run, table)
        clip = table.clip[rows]
        per_fold.append(heldout(run) | clip_metrics(predicted, teacher, clip))
        predictions.append((predicted, teacher, clip))
    radii = loso_radii(predictions)
    return {
        Tag.LOSO_SWEEP_ID: runs[0].data.tags.get(Tag.SWEEP_ID, ""),
        **({Tag.LOSO_RUN_ID: parents.pop()} if len(parents) == 1 and None not in parents else {}),
        LOSO_EXPERIMENT_ID: runs[0].info.experiment_id,
        LOSO_FOLDS: str(len(runs)),
        **{k: f"{v:.6f}" for k, v in (loso_figures(per_fold) | radii).items()},
    }


def finished_loso(
    client: MlflowClient, experiment_id: str, arch: str, expected: dict[str, str], data: str
) -> list[Run] | None:
    """The latest sweep's finished fold runs of ``arch`` that cover every held-out source of
    ``expected`` (source -> recipe hash) with that exact recipe, trained on the data whose digest
    is ``data``; None when the store holds no such LOSO."""
    by_sweep: dict[str, dict[str, Run]] = defaultdict(dict)
    for r in finished_folds(client, experiment_id, arch=arch):
        fold = r.data.params.get(Param.FOLD)
        if r.data.tags.get(Tag.RECIPE_HASH) == expected.get(fold) and [
            d.dataset.digest for d in r.inputs.dataset_inputs
        ] == [data]:
            by_sweep[r.data.tags.get(Tag.SWEEP_ID, "")].setdefault(fold, r)  # latest first
    for folds in by_sweep.values():  # in the order of each sweep's latest run
        if set(folds) == set(expected):
            return [folds[s] for s in expected]
    return None


def validated(loso: bool, job: Job, table: FrameTable, fresh_seeds: list[int]) -> dict[str, str]:
    """The LOSO evidence of the recipe a shipped model is trained with: a finished LOSO of that
    exact recipe and corpus from the store, or one run here and now (stacked, every fold of the
    corpus, under sweep ``export-<arch>-<recipe>``, which a rerun resumes), and the same for each
    of ``fresh_seeds`` (``LOSO_FRESH_MEAN``); ``loso=false`` ships the file unvalidated, and says so."""
    arch = job.arch
    if not loso:
        print(f"warning: loso=false: the {arch} file is not validated (no LOSO of its recipe was looked for or run)")
        return {"loso": "not run (loso=false): unvalidated"}
    client = job.tracking.experiment()[0]
    figures = evidence_of(client, loso_of(job, table), table)
    print(
        f"{arch}: LOSO of this recipe (sweep {figures[Tag.LOSO_SWEEP_ID]}): mean RMSE {float(figures[LOSO_MEAN['rmse']]):.4f}, "
        f"worst {float(figures[LOSO_WORST['rmse']]):.4f}, mean PLCC {float(figures[LOSO_MEAN['plcc']]):.4f}"
    )
    if fresh_seeds:
        means = [
            loso_figures([heldout(r) for r in loso_of(job.with_seed(s), table)])[LOSO_MEAN["rmse"]] for s in fresh_seeds
        ]
        figures |= {LOSO_FRESH_SEEDS: ",".join(map(str, fresh_seeds)), LOSO_FRESH_MEAN: f"{np.mean(means):.6f}"}
        print(
            f"{arch}: the same recipe with seeds {', '.join(map(str, fresh_seeds))}: LOSO mean RMSE "
            f"{', '.join(f'{m:.4f}' for m in means)} (mean {np.mean(means):.4f}, the estimate no selection chose)"
        )
    return figures


def fresh_seeds_of(cfg: DictConfig) -> list[int]:
    """``fresh_seeds``: distinct integers other than ``seed`` (whose LOSO is the recipe's own)."""
    seeds = cfg.get("fresh_seeds")
    if seeds is None:
        return []
    listed = list(seeds) if OmegaConf.is_list(seeds) else None
    if (
        listed is None
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < SEEDS for s in listed)
        or len(set(listed)) != len(listed)
        or cfg.seed in listed
    ):
        raise TinyVmafError(
            f"fresh_seeds={seeds!r:.80}: a list of distinct integer seeds from 0 to 2**32 - 1, none of them "
            f"seed={cfg.seed} (e.g. [1, 2])"
        )
    return listed


def loso_of(job: Job, table: FrameTable) -> list[Run]:
    """The finished fold runs of a LOSO of the job's exact recipe and corpus, one per source: from
    the store, or run here and now."""
    client, experiment_id = job.tracking.experiment()
    expected = {s: job.recipe(s).hash for s in table.sources}
    data = table.manifest[:12]
    found = finished_loso(client, experiment_id, job.arch, expected, data)
    if found is None:
        sweep = f"export-{job.arch}-{hashlib.sha256(''.join(expected.values()).encode()).hexdigest()[:12]}"
        print(
            f"{job.arch}: no finished LOSO of this recipe and corpus in the store: running one ({len(expected)} folds, sweep {sweep})"
        )
        train_every_fold(job.loso(sweep), None)
        found = finished_loso(client, experiment_id, job.arch, expected, data)
        if found is None:
            raise TinyVmafError(f"{job.arch}: the LOSO of sweep {sweep} did not finish every fold")
    return found


def run_loso(client: MlflowClient, run: Run, table: FrameTable) -> dict[str, str]:
    """For one fold run's model (``run_id=``): the LOSO figures of its sweep's finished runs of
    the same configuration (every param alike but the held-out fold)."""
    found = finished_folds(client, run.info.experiment_id, sweep=run.data.tags.get(Tag.SWEEP_ID, ""))
    alike = latest_per_fold([r for r in found if configuration(r) == configuration(run)])
    return evidence_of(client, list(alike.values()), table) if alike else {}


def configuration(run: Run) -> dict[str, str]:
    return {k: v for k, v in run.data.params.items() if k != Param.FOLD}


def model_from_run(tracking: Tracking, run_id: str) -> tuple[VmafNet, dict, Run]:
    """The run's model, its arch (name and hidden widths), and the run (its params: the recipe it
    was trained with). The store may come from someone else: ``model.pt`` is read with
    ``weights_only=True`` and the model rebuilt from its weights' shapes and the run's
    ``activation`` param, never from a config stored with it."""
    client, _ = tracking.existing_experiment()
    run = run_by_id(client, run_id)
    check_artifact_location(client.tracking_uri, run.info.artifact_uri, f"run_id={run_id}")
    params = run.data.params
    what = f"run_id={run_id}: model.pt"
    listed = {f.path: f.file_size for f in client.list_artifacts(run_id)}
    if (listed.get("model.pt") or 0) > MAX_MODEL_BYTES:  # before it is copied anywhere
        raise TinyVmafError(f"{what}: {listed['model.pt']:,} bytes, more than the {MAX_MODEL_BYTES:,} a model may hold")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with warnings.catch_warnings():  # "Detected pickle protocol 4": said again below as one line
                warnings.simplefilter("ignore", UserWarning)
                saved = torch.load(client.download_artifacts(run_id, "model.pt", tmp), weights_only=True)
        except pickle.UnpicklingError as exc:
            asked = re.search(r"(Unsupported (?:global|operand)[^.\n]*)", str(exc))
            raise TinyVmafError(
                f"{what} holds more than weights, so it is not loaded ({asked.group(1) if asked else 'not plain tensors'})"
            ) from None
        except Exception as exc:
            raise TinyVmafError(f"run_id={run_id}: no readable model.pt artifact ({type(exc).__name__})") from None
    if not isinstance(saved, dict):
        raise TinyVmafError(f"{what}: not a tinyvmaf checkpoint")
    teacher = params.get(Param.TEACHER, "vmaf_v0.6.1")
    if teacher not in shipped_teachers():
        raise TinyVmafError(f"run_id={run_id}: teacher {teacher!r:.60} is not a libvmaf model tinyvmaf knows")
    model = model_from_weights(
        saved.get("state_dict"),
        params.get(Param.ACTIVATION),
        saved.get("log_motion", False),
        what,
        teacher,
        saved.get("chroma_correction", False),  # absent from the checkpoints of before it existed
    )
    arch = saved.get("arch") if isinstance(saved.get("arch"), dict) else {}
    name = arch.get("name") if isinstance(arch.get("name"), str) else params.get(Param.ARCH, "unknown")
    return model, {"name": name[:100]}, run


def logged_heldout(client: MlflowClient, run: Run, table: FrameTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a fold run logged it predicted on its held-out source (``heldout.npz``, read without
    pickle), checked to be this cache's frames of that source: (teacher, predicted, rows of the table)."""
    run_id, fold = run.info.run_id, run.data.params.get(Param.FOLD, "")
    what = f"run_id={run_id}: heldout.npz"
    if fold not in table.sources:
        raise TinyVmafError(
            f"run_id={run_id}: its held-out source {fold!r:.60} is not in corpus {table.corpus!r}: "
            "its predictions cannot be checked; export with the corpus it was trained on"
        )
    listed = {f.path: f.file_size for f in client.list_artifacts(run_id)}
    if "heldout.npz" not in listed or (listed["heldout.npz"] or 0) > MAX_MODEL_BYTES:
        raise TinyVmafError(f"{what}: missing, or over {MAX_MODEL_BYTES:,} bytes")
    rows = table.source_of_frame == table.sources.index(fold)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with np.load(client.download_artifacts(run_id, "heldout.npz", tmp), allow_pickle=False) as logged:
                teacher, predicted = logged["teacher"], logged["predicted"]
        except Exception as exc:
            raise TinyVmafError(f"{what}: not readable ({type(exc).__name__})") from None
    scores = table.scores[run.data.params.get(Param.TEACHER, "vmaf_v0.6.1")][rows]
    if teacher.shape != scores.shape or predicted.shape != scores.shape or not np.allclose(teacher, scores, atol=1e-4):
        raise TinyVmafError(
            f"{what}: its {fold} frames are not this corpus's: export with the corpus it was trained on"
        )
    return teacher.astype(np.float64), predicted.astype(np.float64), rows


def checked_on(model: VmafNet, table: FrameTable, teacher: str, intervals: dict[str, str]) -> dict[str, str]:
    """The model on the check corpus: PLCC/SROCC/RMSE per frame and per clip against its teacher,
    and the share of frames and clips within each of its conformal radii (``intervals``)."""
    if teacher not in table.scores:
        raise TinyVmafError(
            f"check_corpus: its cache holds no {teacher} scores (cache.models); check_corpus=null skips it"
        )
    with torch.no_grad():
        predicted = model.eval().predict(torch.from_numpy(table.columns(model.inputs).astype(np.float32))).numpy()
    predicted, scores = predicted.astype(np.float64), table.scores[teacher]
    frames = score_metrics(torch.from_numpy(predicted), torch.from_numpy(scores))
    clips = clip_metrics(predicted, scores, table.clip)
    figures = {CHECK[m]: v for m, v in frames.items()} | {CHECK_CLIP[m]: clips[CLIP[m]] for m in METRIC_NAMES if clips}
    residuals = {
        "frame": predicted - scores,
        "source": predicted - scores,  # the source radius, too, bounds frames
        "clip": pooled_per_clip(predicted, table.clip) - pooled_per_clip(scores, table.clip),
    }
    for (unit, c), key in INTERVAL.items():
        if key in intervals:
            figures[CHECK_COVERAGE[(unit, c)]] = float(np.mean(np.abs(residuals[unit]) <= float(intervals[key])))
    return {CHECK_CORPUS: table.label, **{k: f"{v:.6f}" for k, v in figures.items()}}


def check_reproduces_its_heldout(client: MlflowClient, run: Run, model: VmafNet, table: FrameTable) -> None:
    """A model rebuilt from a store ships only if it predicts, on its held-out source's cached
    frames, what the run logged it predicted there (``heldout.npz``): a store whose weights or
    params were changed since (an activation renamed, a layer edited) would ship a different
    model under the run's evidence."""
    _, predicted, rows = logged_heldout(client, run, table)
    with torch.no_grad():
        got = model.eval().predict(torch.from_numpy(table.columns(model.inputs)[rows].astype(np.float32))).numpy()
    diff = float(np.abs(got - predicted).max())
    if not diff <= ONNX_TOLERANCE:
        raise TinyVmafError(
            f"run_id={run.info.run_id}: its weights and params do not reproduce its own held-out predictions on "
            f"{run.data.params.get(Param.FOLD)} (max |difference| {diff:.3g}): the store was changed since; not exported"
        )


def register(
    tracking: Tracking, corpus: Corpus, name: str, proto: onnx.ModelProto, table: FrameTable, metadata: dict[str, str]
) -> str:
    """Log the shipped file as an MLflow model (signature, real cached frames as the input example)
    in a run of its own, register it as a new version of ``name``, and describe that version:
    its teacher, recipe and LOSO metrics as tags. Returns the version."""
    client, experiment_id = tracking.experiment()
    with tracked_run(client, experiment_id, f"export-{name}", {Tag.KIND: Kind.EXPORT}) as run:
        recipe = (Param.ARCH, Param.TEACHER, Param.EXPERIMENT, Param.EPOCHS)  # the metadata's keys are the params'
        run.log_params({k: metadata[k] for k in recipe if k in metadata})
        figures = {*LOSO_MEAN.values(), *LOSO_STD.values(), *LOSO_WORST.values(), *LOSO_CLIP_MEAN.values()}
        figures |= {*LOSO_CLIP_STD.values(), *INTERVAL.values(), *CHECK.values(), *CHECK_CLIP.values()}
        figures |= {*CHECK_COVERAGE.values(), LOSO_FRESH_MEAN}
        loso = {k: float(v) for k, v in metadata.items() if k in figures}
        if loso:  # the export run shows its evidence, and points at it
            run.log_metrics([{"step": 0, **loso}], step_key="step")
            run.log_tags({k: metadata[k] for k in (Tag.LOSO_SWEEP_ID, Tag.LOSO_RUN_ID) if k in metadata})
        log_dataset(
            client,
            run.run_id,
            table.corpus,
            table.manifest[:12],
            str(corpus.location),
            "training; all sources",
        )
        example = table.columns(json.loads(metadata["feature_names"]))[:5]
        info = log_onnx_model(client, experiment_id, run.run_id, proto, example, registered_name=name)
    version = str(info.registered_model_version)
    for key, value in metadata.items():
        if key != "feature_names":
            client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, describe(metadata))
    return version


def describe(metadata: dict[str, str]) -> str:
    """A registered version's description: a trained model's recipe and LOSO figures, or, for
    libvmaf's own model, that nobody trained it and how closely it matches libvmaf."""
    n_features = len(json.loads(metadata["feature_names"]))
    contract = (
        f"Input `features` float32 [N, {n_features}] in the order of the `feature_names` metadata; "
        "output `vmaf` float32 [N]."
    )
    if metadata.get("experiment") == "libvmaf":
        return (
            f"libvmaf's own {metadata['teacher']} model ({metadata['arch']}, {metadata['n_support_vectors']} support vectors) "
            f"as one ONNX graph, not trained: the model JSON libvmaf ships, computed in float64. Against the scores "
            f"libvmaf {metadata['libvmaf_version']} logged for {metadata['parity_frames']} frames of {metadata['corpus']}: "
            f"max |difference| {float(metadata['parity_max_abs_diff']):.1e}. {contract}"
        )
    if LOSO_MEAN["rmse"] in metadata:
        where = f"sweep {metadata[Tag.LOSO_SWEEP_ID]}"
        if metadata.get(Tag.LOSO_RUN_ID):
            link = run_page_link(metadata[LOSO_EXPERIMENT_ID], metadata[Tag.LOSO_RUN_ID])
            where = f"[run {metadata[Tag.LOSO_RUN_ID][:8]}]({link}), {where}"
        loso = (
            f"Validated by a LOSO of this recipe over {metadata[LOSO_FOLDS]} sources ({where}): held-out RMSE mean "
            f"{float(metadata[LOSO_MEAN['rmse']]):.3f} (worst fold {float(metadata[LOSO_WORST['rmse']]):.3f}), "
            f"PLCC mean {float(metadata[LOSO_MEAN['plcc']]):.4f} (worst {float(metadata[LOSO_WORST['plcc']]):.4f})."
        )
        if LOSO_CLIP_MEAN["rmse"] in metadata:
            loso += (
                f" Per clip (frames pooled by their mean, as libvmaf pools): RMSE mean "
                f"{float(metadata[LOSO_CLIP_MEAN['rmse']]):.3f}, PLCC mean {float(metadata[LOSO_CLIP_MEAN['plcc']]):.4f}."
            )
        if LOSO_FRESH_MEAN in metadata:
            loso += (
                f" The same recipe trained again with seeds {metadata[LOSO_FRESH_SEEDS].replace(',', ', ')}, which no "
                f"search chose on: LOSO RMSE mean {float(metadata[LOSO_FRESH_MEAN]):.3f}, the figure to expect on new content."
            )
        if INTERVAL[("clip", 95)] in metadata:
            loso += (
                f" Conformal 95 % radius from the held-out residuals: ±{float(metadata[INTERVAL[('frame', 95)]]):.3f} "
                f"per frame, ±{float(metadata[INTERVAL[('clip', 95)]]):.3f} per clip."
            )
    else:
        loso = f"**Unvalidated**: {metadata.get('loso', 'no LOSO of this recipe was found')}."
    if CHECK["rmse"] in metadata:
        covered = CHECK_COVERAGE[("frame", 95)]
        loso += (
            f" On the check corpus {metadata[CHECK_CORPUS]} (sources and codecs never trained on): RMSE "
            f"{float(metadata[CHECK['rmse']]):.3f} per frame"
            + (f", {float(metadata[CHECK_CLIP['rmse']]):.3f} per clip" if CHECK_CLIP["rmse"] in metadata else "")
            + (
                f"; {100 * float(metadata[covered]):.1f} % of its frames within the 95 % radius."
                if covered in metadata
                else "."
            )
        )
    return (
        f"{metadata['arch']} ({metadata['n_params']} parameters) predicting {metadata['teacher']} from its {n_features} libvmaf features, "
        f"trained on {metadata['corpus']} (libvmaf {metadata['libvmaf_version']}). {loso} {contract}"
    )


def export_teacher(name: str, output: Path, table: FrameTable) -> tuple[onnx.ModelProto, dict[str, str]]:
    """libvmaf's model ``name`` as ONNX (``SvrTeacher.onnx_graph``), written with the tiny models'
    metadata and checked against the scores libvmaf logged for every cached frame."""
    teacher = load_teacher(name)
    proto = teacher.onnx_graph()
    metadata = {
        "feature_names": json.dumps(list(teacher.feature_columns)), "teacher": name, "arch": "libsvm nu-SVR (RBF)",
        "n_params": str(teacher.n_params), "n_support_vectors": str(len(teacher.coefficients)),
        "corpus": table.label, "libvmaf_version": table.libvmaf_version, "experiment": "libvmaf",
    }  # fmt: skip
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(output), save_as_external_data=False)
    session = open_session(output, output)
    got = session.run(["vmaf"], {"features": table.columns(teacher.feature_columns).astype(np.float32)})[0]
    diff = float(np.abs(got - table.scores[name]).max())
    if diff > TEACHER_TOLERANCE:
        raise TinyVmafError(f"{output}: disagrees with libvmaf's {name} (max |diff| {diff:.2e} > {TEACHER_TOLERANCE})")
    metadata |= {"parity_max_abs_diff": f"{diff:.3e}", "parity_frames": str(len(table))}  # for its registered version
    print(
        f"{output}: {name}, {teacher.n_params} numbers, ONNX Runtime vs libvmaf max |diff| {diff:.1e} on {len(table)} frames"
    )
    return proto, metadata


def shipped(cfg: DictConfig) -> list[tuple[str, Path, DictConfig]]:
    """Each shipped model's name (its registered model's, ``name`` or the key), file and arch."""
    return [(str(e.get("name") or k), Path(e.output), e.arch) for k, e in cfg.exports.items()]


def export_models(cfg: DictConfig) -> int:
    """``export.py``: train each shipping model on every source, with the LOSO of its recipe as its
    evidence (or take a fold run's model), and write it."""
    torch.set_num_threads(cfg.torch_threads)
    if cfg.layout not in LAYOUTS:
        raise TinyVmafError(f"layout={cfg.layout}: not one of {', '.join(LAYOUTS)}")
    if cfg.layout == LUSORIS and cfg.get("run_id"):
        raise TinyVmafError("layout=lusoris: writes the shipped models (exports), not a fold run's (run_id=)")
    if cfg.get("run_id") and not cfg.get("output"):
        raise TinyVmafError(f"run_id={cfg.run_id}: give output=<file>.onnx, where the fold run's model is written")
    seed_option(cfg.seed, "seed")
    for key in ("overwrite", "loso", "register", "stack_folds"):
        boolean_option(cfg.get(key), key)
    fresh_seeds = fresh_seeds_of(cfg)  # checked once, before any LOSO or training
    drop_in = DropInFolder(Path(cfg.lusoris_dir), cfg.overwrite, cfg.lusoris_id_prefix)
    if cfg.layout == LUSORIS:  # that folder holds other people's files: refuse before any training
        drop_in.check([name for name, _, _ in shipped(cfg)], cfg.teacher.model)
    corpus = instantiate_checked(cfg.corpus)
    check_corpus = instantiate_checked(cfg.check_corpus) if cfg.get("check_corpus") else None
    if check_corpus is not None and check_corpus.name == corpus.name:  # refused now, not after the LOSOs
        raise TinyVmafError(
            f"check_corpus.name={check_corpus.name}: the training corpus's name; the check corpus is content no "
            "training saw, under a name of its own"
        )
    cache: TeacherCache = instantiate_checked(cfg.cache)
    tracking: Tracking = instantiate_checked(cfg.tracking)
    jobs = [(None, Path(cfg.output), None)] if cfg.get("run_id") else shipped(cfg)
    for name, output, arch in jobs:
        if arch is None:
            # The metadata describes the run's recipe, not this export config's.
            model, arch_cfg, run = model_from_run(tracking, cfg.run_id)
            params = run.data.params
            teacher, epochs = params[Param.TEACHER], params[Param.EPOCHS]
            recipe = params.get(Param.EXPERIMENT, "default")
            table = cache.ready(corpus)
            client = tracking.existing_experiment()[0]
            check_reproduces_its_heldout(client, run, model, table)
            evidence = run_loso(client, run, table)
        else:
            recipe_cfg = with_arch(cfg, arch)
            check_options(recipe_cfg)
            job = Job(recipe_cfg, corpus, cache, tracking)
            table = cache.ready(corpus)
            evidence = validated(cfg.loso, job, table, fresh_seeds)
            model, table = train_on_all_sources(job)
            arch_cfg = OmegaConf.to_container(arch, resolve=True)
            teacher, epochs, recipe = cfg.teacher.model, str(recipe_cfg.trainer.max_epochs), cfg.experiment_name
        metadata = {
            "feature_names": json.dumps(list(model.inputs)),
            "score_range": json.dumps(list(model.score_range)),
            **cache.measurement.metadata(),
            "teacher": teacher,
            "arch": arch_cfg["name"],
            "n_params": str(count_params(model)),
            "corpus": table.label,
            "libvmaf_version": table.libvmaf_version,
            "epochs": epochs,
            "experiment": recipe,
            **evidence,
            # the file's own largest |model - teacher| over its teacher's box of valid features
            DOMAIN_MAX_ERROR: f"{domain_max_error(model, teacher):.6f}",
        }
        if check_corpus is not None:
            metadata |= checked_on(model, cache.ready(check_corpus), teacher, evidence)
            print(
                f"{output}: on the check corpus {metadata[CHECK_CORPUS]} (unseen sources and codecs): RMSE "
                f"{float(metadata[CHECK['rmse']]):.4f}"
            )
        if cfg.layout == LUSORIS:
            output, diff = drop_in.write(name, model, metadata, table.columns(model.inputs), cfg.license)
            proto = with_metadata(onnx_graph(model), metadata)  # what MLflow registers: tinyvmaf's contract
        else:
            proto = to_onnx(model, output, metadata)
            diff = check_graph(output, model, table.columns(model.inputs))
        print(
            f"{output}: {arch_cfg['name']}, {metadata['n_params']} params, ONNX Runtime vs torch max |diff| {diff:.1e} on {len(table)} frames"
        )
        if cfg.register and name is not None:
            print(
                f"  registered in MLflow as {name} version {register(tracking, corpus, name, proto, table, metadata)}"
            )
    if cfg.teacher_exports and cfg.layout == LUSORIS:
        print(f"teacher_exports ({', '.join(cfg.teacher_exports)}): written in the standard layout only; not written")
    elif cfg.teacher_exports and not cfg.get("run_id"):
        table = cache.ready(corpus)
        for name in cfg.teacher_exports:
            proto, metadata = export_teacher(name, Path(cfg.teacher_output_dir) / f"{name}.onnx", table)
            if cfg.register:
                print(
                    f"  registered in MLflow as {name} version {register(tracking, corpus, name, proto, table, metadata)}"
                )
    return 0
