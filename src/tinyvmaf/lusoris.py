"""The drop-in layout for the reference toolchain's model folder (lusoris/vmaf ``model/tiny/``).

That toolchain feeds its tiny models **raw** features in the order adm2, vif_scale0..3, motion2
through one input ``input`` and reads one output ``score`` [batch, 1]; it trusts a model only
through its ``registry.json`` entry (schema version 1, the file's sha256) and reads a sidecar
``<id>.json`` beside it. ``export.py layout=lusoris`` writes all three from the same weights as
the standard file: one Gather puts the columns in tinyvmaf's order, and the rest of the graph is
the standard file's, so the scores are too, bit for bit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.files import atomic_path, sha256_file
from tinyvmaf.model import VmafNet
from tinyvmaf.onnx_io import OnnxContract, check_graph, onnx_graph, open_session
from tinyvmaf.runs import LOSO_FOLDS, LOSO_MEAN, LOSO_WORST, Tag
from tinyvmaf.teacher import FEATURE_NAMES
from tinyvmaf.teacher.log import LEGACY_NAMES

LUSORIS_FEATURES = ("integer_adm2", "integer_vif_scale0", "integer_vif_scale1", "integer_vif_scale2",
                    "integer_vif_scale3", "integer_motion2")  # fmt: skip
LUSORIS_CONTRACT = OnnxContract(input="input", output="score", features=LUSORIS_FEATURES, column_output=True)
REGISTRY_SCHEMA_VERSION = 1
MAX_IR_VERSION = 10  # the toolchain's ONNX Runtime reads up to this
MAX_BYTES = 50 * 2**20
MAX_REGISTRY_BYTES = 16 * 2**20
# The ops this writer may emit that the toolchain's op allow-list (libvmaf/src/dnn/op_allowlist.c) accepts.
ACCEPTED_OPS = frozenset({"Gather", "Reshape", "Sub", "Div", "Mul", "Add", "Max", "Log", "Erf", "Clip", "Gemm",
                          "Relu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "Tanh", "Softplus", "Softsign",
                          "HardSigmoid", "HardSwish"})  # fmt: skip
ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # the registry's own pattern for ids


def registry_notes(metadata: dict[str, str]) -> str:
    """The registry entry's free text (at most 512 characters there): what the file is and its evidence."""
    notes = (
        f"tinyvmaf {metadata['arch']} ({metadata['n_params']} params) predicting {metadata['teacher']} from raw "
        f"adm2, vif_scale0..3, motion2; standardization and clip inside the graph; trained on {metadata['corpus']} "
        f"(libvmaf {metadata['libvmaf_version']}, recipe {metadata['experiment']})."
    )
    if LOSO_MEAN["rmse"] in metadata:
        notes += (
            f" LOSO over {metadata[LOSO_FOLDS]} sources (sweep {metadata[Tag.LOSO_SWEEP_ID]}): RMSE mean "
            f"{float(metadata[LOSO_MEAN['rmse']]):.3f}, worst {float(metadata[LOSO_WORST['rmse']]):.3f}; "
            f"PLCC mean {float(metadata[LOSO_MEAN['plcc']]):.4f}."
        )
    else:
        notes += " Unvalidated: no LOSO of its recipe."
    return notes[:512]


def write_lusoris(
    model_id: str, model: VmafNet, metadata: dict[str, str], features: np.ndarray, folder: Path, license_name: str
) -> tuple[Path, float]:
    """Write ``<id>.onnx``, its sidecar ``<id>.json`` and its entry in ``registry.json`` into
    ``folder``; the file is checked against torch on ``features`` (real frames) in that order.
    Returns the ONNX file's path and its max |difference| from torch."""
    if not ID_PATTERN.fullmatch(model_id):
        raise TinyVmafError(f"exports.{model_id}: not a registry id of that toolchain (lowercase a-z, 0-9, _ and -)")
    proto = onnx_graph(model, LUSORIS_CONTRACT)
    metadata = {**metadata, "feature_names": json.dumps(list(LUSORIS_FEATURES))}  # the columns this file reads
    refused = sorted({n.op_type for n in proto.graph.node} - ACCEPTED_OPS)
    if refused:
        raise TinyVmafError(f"exports.{model_id}: that toolchain refuses the ops {', '.join(refused)} this model needs")
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=str(value))
    path = folder / f"{model_id}.onnx"
    if proto.ByteSize() > MAX_BYTES or proto.ir_version > MAX_IR_VERSION:
        raise TinyVmafError(f"{path}: over that toolchain's limits (50 MB, IR version {MAX_IR_VERSION})")
    try:
        diff = check_graph(proto, model, features, LUSORIS_CONTRACT)
        scores_as_standard(proto, onnx_graph(model), features)
    except TinyVmafError as exc:
        raise TinyVmafError(f"{path}: {exc}") from None
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
    sha256 = sha256_file(path)
    opset = proto.opset_import[0].version
    notes = registry_notes(metadata)
    sidecar = {
        "id": model_id, "name": model_id, "kind": "fr", "onnx": path.name, "sha256": sha256,
        "opset": opset, "onnx_opset": opset,
        "input_name": LUSORIS_CONTRACT.input, "input_shape": [-1, len(FEATURE_NAMES)],
        "output_name": LUSORIS_CONTRACT.output, "output_shape": [-1, 1],
        "features": [LEGACY_NAMES[f] for f in LUSORIS_FEATURES],
        "expected_output_range": [0.0, 100.0], "license": license_name, "notes": notes,
    }  # fmt: skip
    write_json(folder / f"{model_id}.json", sidecar)
    entry = {"id": model_id, "kind": "fr", "onnx": path.name, "sha256": sha256, "opset": opset,
             "notes": notes, "license": license_name}  # fmt: skip
    add_to_registry(folder / "registry.json", entry)
    print(
        f"  {path.name}: scores every frame as the standard file does; {folder / 'registry.json'}: {model_id}, sha256 {sha256[:16]}..."
    )
    return path, diff


def scores_as_standard(proto: onnx.ModelProto, standard: onnx.ModelProto, features: np.ndarray) -> None:
    """``proto`` scores ``features`` (fed in its column order) exactly as the standard graph does."""
    theirs, ours = open_session(proto, "the drop-in graph"), open_session(standard, "the standard graph")
    got = theirs.run(["score"], {"input": LUSORIS_CONTRACT.inputs_from(features)})[0]
    want = ours.run(["vmaf"], {"features": features.astype(np.float32)})[0]
    if not np.array_equal(got[:, 0], want):
        raise TinyVmafError(f"scores differ from the standard file's (max |diff| {np.abs(got[:, 0] - want).max():.2e})")


def add_to_registry(path: Path, entry: dict) -> None:
    """Put ``entry`` into the registry at ``path`` in place of any entry with its id, keeping every
    other entry as it is; a new registry when there is none. Someone else's registry is data: a
    file that is not one is refused in one line, and it is replaced whole or not at all."""
    registry = {"$schema": "./registry.schema.json", "schema_version": REGISTRY_SCHEMA_VERSION, "models": []}
    if path.exists():
        if not path.is_file() or path.stat().st_size > MAX_REGISTRY_BYTES:
            raise TinyVmafError(f"{path}: not a registry file (not a regular file, or over 16 MiB)")
        try:
            registry = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise TinyVmafError(f"{path}: not JSON ({type(exc).__name__})") from None
        if not isinstance(registry, dict) or not isinstance(registry.get("models"), list):
            raise TinyVmafError(f"{path}: not a model registry (no list of models)")
        if registry.get("schema_version") != REGISTRY_SCHEMA_VERSION:
            raise TinyVmafError(
                f"{path}: schema_version {registry.get('schema_version')!r:.20}, not {REGISTRY_SCHEMA_VERSION}"
            )
    models = registry["models"]
    same = [i for i, m in enumerate(models) if isinstance(m, dict) and m.get("id") == entry["id"]]
    if same:
        models[same[0]] = entry
        registry["models"] = [m for i, m in enumerate(models) if i not in same[1:]]
    else:
        models.append(entry)
    write_json(path, registry)


def write_json(path: Path, value: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
