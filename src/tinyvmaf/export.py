"""Shipping models: one self-contained ONNX file each, checked every time it is written.

Contract: input ``features`` float32 [N, 6] (raw libvmaf values, order in ``feature_names``),
output ``vmaf`` float32 [N] in [0, 100]; dynamic batch; standardization and clip in the graph;
no external data; metadata: feature_names, teacher, arch, n_params, corpus, libvmaf_version
and the LOSO metrics of the recipe.
"""

from __future__ import annotations

import json
import pickle
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from omegaconf import DictConfig, OmegaConf

from tinyvmaf.cache import FrameTable, TeacherCache
from tinyvmaf.corpus import Corpus
from tinyvmaf.digest import aggregate, fold_runs, sweep_status
from tinyvmaf.errors import TinyVmafError, instantiate_checked
from tinyvmaf.model import VmafNet, check_graph, count_params, model_from_weights, onnx_graph
from tinyvmaf.teacher import FEATURE_NAMES
from tinyvmaf.teacher.function import load_teacher
from tinyvmaf.tracking import EXPORT, KIND, check_artifact_location, log_dataset, log_onnx_model, run_by_id, tracked_run
from tinyvmaf.training import check_options, prepare_fit

TEACHER_TOLERANCE = 1e-3  # VMAF points: libvmaf's models as ONNX against libvmaf's own scores


def to_onnx(model: VmafNet, path: Path, metadata: dict[str, str]) -> onnx.ModelProto:
    """Write the clipped model as one ONNX file (no external data) with ``metadata_props``."""
    proto = onnx_graph(model)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=str(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return proto


def with_arch(cfg: DictConfig, arch: DictConfig) -> DictConfig:
    """The export configuration of one shipped model: its arch in place of ``arch``, so that a
    per-arch recipe (``experiment=shipped``) resolves to that arch's values."""
    return OmegaConf.merge(cfg, {"arch": arch})


def train_on_all_sources(cfg: DictConfig, corpus: Corpus, cache: TeacherCache) -> tuple[VmafNet, FrameTable]:
    datamodule, module, trainer = prepare_fit(cfg, corpus, cache, heldout=None, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    return module.model, datamodule.table


def loso_metadata(
    cfg: DictConfig, arch: str, teacher: str, recipe: str, trained_with: dict[str, str] | None = None
) -> dict[str, str]:
    """The LOSO metrics of a named recipe (``experiment_name``) from a sweep in MLflow (its latest by
    default); with ``trained_with``, only if the sweep's runs of ``arch`` have those params (a sweep
    run under the recipe's name with other options does not describe the file)."""
    try:
        client, experiment_id = instantiate_checked(cfg.tracking).existing_experiment()
        sweep, runs = fold_runs(client, experiment_id, cfg.get("loso_sweep_id"), recipe=recipe)
    except TinyVmafError as exc:
        print(f"warning: no LOSO metrics in the metadata: {exc}")
        return {}
    digest = aggregate(sweep_status([r for r in runs if r.data.params.get("teacher") == teacher]))
    if arch not in digest:
        print(f"warning: sweep {sweep} has no finished {arch} runs: no LOSO metrics in the metadata")
        return {}
    row = digest[arch]
    params = next(r for r in runs if r.info.run_id == row["folds"][0]["run_id"]).data.params
    differ = {k: (params.get(k), v) for k, v in (trained_with or {}).items() if params.get(k) != v}
    if differ:
        said = ", ".join(f"{k} {a} there, {b} here" for k, (a, b) in differ.items())
        print(
            f"warning: sweep {sweep} trained {arch} otherwise ({said}): no LOSO metrics in the metadata; give loso_sweep_id="
        )
        return {}
    keys = [f"{m}_{s}" for m in ("plcc", "srocc", "rmse") for s in ("mean", "std")]
    return {
        "loso_sweep_id": sweep,
        **{f"loso_{k}": f"{row[k]:.6f}" for k in keys},
        "loso_folds": str(len(row["folds"])),
    }


def export_options(cfg: DictConfig) -> dict[str, str]:
    """The options of this export that a LOSO sweep must share to describe its files, as MLflow params."""
    augment = cfg.data.augment
    values = {"epochs": cfg.trainer.max_epochs, "lr": cfg.model.optimizer.lr, "seed": cfg.seed,
              "augment_amount": augment.amount if augment.enabled else 0}  # fmt: skip
    return {k: str(v) for k, v in values.items()}


def model_from_run(cfg: DictConfig, run_id: str) -> tuple[VmafNet, dict, dict[str, str]]:
    """The run's model, its arch (name and hidden widths), and its MLflow params (the recipe it was
    trained with). The store may come from someone else: ``model.pt`` is read with
    ``weights_only=True`` and the model rebuilt from its weights' shapes and the run's
    ``activation`` param, never from a config stored with it."""
    client, _ = instantiate_checked(cfg.tracking).existing_experiment()
    run = run_by_id(client, run_id)
    check_artifact_location(client.tracking_uri, run.info.artifact_uri, f"run_id={run_id}")
    params = run.data.params
    what = f"run_id={run_id}: model.pt"
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
    model = model_from_weights(saved.get("state_dict"), params.get("activation"), saved.get("log_motion", False), what)
    arch = saved.get("arch") if isinstance(saved.get("arch"), dict) else {}
    name = arch.get("name") if isinstance(arch.get("name"), str) else params.get("arch", "unknown")
    return model, {"name": name[:100]}, params


def register(
    cfg: DictConfig, corpus: Corpus, name: str, proto: onnx.ModelProto, table: FrameTable, metadata: dict[str, str]
) -> str:
    """Log the shipped file as an MLflow model (signature, real cached frames as the input example)
    in a run of its own, register it as a new version of ``name``, and describe that version:
    its teacher, recipe and LOSO metrics as tags. Returns the version."""
    client, experiment_id = instantiate_checked(cfg.tracking).experiment()
    with tracked_run(client, experiment_id, f"export-{name}", {KIND: EXPORT}) as run:
        run.log_params({k: metadata[k] for k in ("arch", "teacher", "experiment", "epochs") if k in metadata})
        log_dataset(
            client,
            run.run_id,
            table.corpus,
            table.manifest[:12],
            str(corpus.location),
            "training; all sources",
        )
        info = log_onnx_model(client, experiment_id, run.run_id, proto, table.features[:5], registered_name=name)
    version = str(info.registered_model_version)
    for key, value in metadata.items():
        if key != "feature_names":
            client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, describe(metadata))
    return version


def describe(metadata: dict[str, str]) -> str:
    """A registered version's description: a trained model's recipe and LOSO figures, or, for
    libvmaf's own model, that nobody trained it and how closely it matches libvmaf."""
    contract = (
        "Input `features` float32 [N, 6] in the order of the `feature_names` metadata; output `vmaf` float32 [N]."
    )
    if metadata.get("experiment") == "libvmaf":
        return (
            f"libvmaf's own {metadata['teacher']} model ({metadata['arch']}, {metadata['n_support_vectors']} support vectors) "
            f"as one ONNX graph, not trained: the model JSON libvmaf ships, computed in float64. Against the scores "
            f"libvmaf {metadata['libvmaf_version']} logged for {metadata['parity_frames']} frames of {metadata['corpus']}: "
            f"max |difference| {float(metadata['parity_max_abs_diff']):.1e}. {contract}"
        )
    loso = (
        f"LOSO over {metadata['loso_folds']} sources (sweep {metadata['loso_sweep_id']}): RMSE {float(metadata['loso_rmse_mean']):.3f}, "
        f"PLCC {float(metadata['loso_plcc_mean']):.4f}."
        if "loso_rmse_mean" in metadata
        else "No LOSO sweep of this recipe was found."
    )
    return (
        f"{metadata['arch']} ({metadata['n_params']} parameters) predicting {metadata['teacher']} from libvmaf's six features, "
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
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    got = session.run(["vmaf"], {"features": table.columns(teacher.feature_columns).astype(np.float32)})[0]
    diff = float(np.abs(got - table.scores[name]).max())
    if diff > TEACHER_TOLERANCE:
        raise TinyVmafError(f"{output}: disagrees with libvmaf's {name} (max |diff| {diff:.2e} > {TEACHER_TOLERANCE})")
    metadata |= {"parity_max_abs_diff": f"{diff:.3e}", "parity_frames": str(len(table))}  # for its registered version
    print(
        f"{output}: {name}, {teacher.n_params} numbers, ONNX Runtime vs libvmaf max |diff| {diff:.1e} on {len(table)} frames"
    )
    return proto, metadata


def export_models(cfg: DictConfig) -> int:
    """``export.py``: train each shipping model on every source (or take a run's) and write it."""
    torch.set_num_threads(cfg.torch_threads)
    corpus = instantiate_checked(cfg.corpus)
    cache: TeacherCache = instantiate_checked(cfg.cache)
    jobs = (
        [(None, Path(cfg.output), None)]
        if cfg.get("run_id")
        else [(k, Path(e.output), e.arch) for k, e in cfg.exports.items()]
    )
    for name, output, arch in jobs:
        if arch is None:
            # The metadata describes the run's recipe, not this export config's.
            model, arch_cfg, params = model_from_run(cfg, cfg.run_id)
            teacher, epochs, recipe = params["teacher"], params["epochs"], params.get("experiment", "default")
            table = cache.ready(corpus)
        else:
            recipe_cfg = with_arch(cfg, arch)
            check_options(recipe_cfg)
            model, table = train_on_all_sources(recipe_cfg, corpus, cache)
            arch_cfg = OmegaConf.to_container(arch, resolve=True)
            teacher, epochs, recipe = cfg.teacher.model, str(recipe_cfg.trainer.max_epochs), cfg.experiment_name
        metadata = {
            "feature_names": json.dumps(list(FEATURE_NAMES)),
            "teacher": teacher,
            "arch": arch_cfg["name"],
            "n_params": str(count_params(model)),
            "corpus": table.label,
            "libvmaf_version": table.libvmaf_version,
            "epochs": epochs,
            "experiment": recipe,
            **loso_metadata(
                cfg, arch_cfg["name"], teacher, recipe, None if arch is None else export_options(recipe_cfg)
            ),
        }
        proto = to_onnx(model, output, metadata)
        diff = check_graph(output, model, table.features)
        print(
            f"{output}: {arch_cfg['name']}, {metadata['n_params']} params, ONNX Runtime vs torch max |diff| {diff:.1e} on {len(table)} frames"
        )
        if cfg.register and name is not None:
            print(f"  registered in MLflow as {name} version {register(cfg, corpus, name, proto, table, metadata)}")
    if cfg.teacher_exports and not cfg.get("run_id"):
        table = cache.ready(corpus)
        for name in cfg.teacher_exports:
            proto, metadata = export_teacher(name, Path(cfg.teacher_output_dir) / f"{name}.onnx", table)
            if cfg.register:
                print(f"  registered in MLflow as {name} version {register(cfg, corpus, name, proto, table, metadata)}")
    return 0
