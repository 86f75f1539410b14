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
import os
import re
from pathlib import Path

import numpy as np
import onnx

from tinyvmaf.errors import TinyVmafError, boolean_option
from tinyvmaf.files import atomic_path, folder_lock, read_bounded, sha256_file
from tinyvmaf.model import VmafNet
from tinyvmaf.onnx_io import OnnxContract, check_graph, onnx_graph, open_session
from tinyvmaf.runs import LOSO_FOLDS, LOSO_FRESH_MEAN, LOSO_FRESH_SEEDS, LOSO_MEAN, LOSO_WORST, Tag
from tinyvmaf.teacher import FEATURE_NAMES
from tinyvmaf.teacher.function import student_inputs
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
TINYVMAF_NOTES = "tinyvmaf "  # how registry_notes begins: the mark of an entry tinyvmaf wrote


def registry_notes(metadata: dict[str, str]) -> str:
    """The registry entry's free text (at most 512 characters there): what the file is and its evidence."""
    notes = (
        f"{TINYVMAF_NOTES}{metadata['arch']} ({metadata['n_params']} params) predicting {metadata['teacher']} from raw "
        f"adm2, vif_scale0..3, motion2; standardization and clip inside the graph; trained on {metadata['corpus']} "
        f"(libvmaf {metadata['libvmaf_version']}, recipe {metadata['experiment']})."
    )
    if LOSO_MEAN["rmse"] in metadata:
        notes += (
            f" LOSO over {metadata[LOSO_FOLDS]} sources (sweep {metadata[Tag.LOSO_SWEEP_ID]}): RMSE mean "
            f"{float(metadata[LOSO_MEAN['rmse']]):.3f}, worst {float(metadata[LOSO_WORST['rmse']]):.3f}; "
            f"PLCC mean {float(metadata[LOSO_MEAN['plcc']]):.4f}."
        )
        if LOSO_FRESH_MEAN in metadata:
            notes += f" With unsearched seeds {metadata[LOSO_FRESH_SEEDS]}: RMSE mean {float(metadata[LOSO_FRESH_MEAN]):.3f}."
    else:
        notes += " Unvalidated: no LOSO of its recipe."
    return notes[:512]


class DropInFolder:
    """That toolchain's model folder, which holds other people's files: everything is checked
    before anything is written (``check``, before training), the registry's read-modify-write
    holds a lock on the folder, and an id whose entry or files tinyvmaf did not write is refused
    unless ``overwrite``. Every other registry entry is kept byte for byte."""

    def __init__(self, folder: Path, overwrite: bool = False, id_prefix: str = "tinyvmaf_") -> None:
        self.folder, self.id_prefix = Path(folder), id_prefix
        self.overwrite = boolean_option(overwrite, "overwrite")

    @property
    def registry(self) -> Path:
        return self.folder / "registry.json"

    def model_id(self, name: str) -> str:
        """The registry id of export ``name``: prefixed, so that it never takes the toolchain's own
        ``vmaf_tiny_v1``."""
        model_id = self.id_prefix + name
        if not ID_PATTERN.fullmatch(model_id):
            raise TinyVmafError(
                f"exports.{name}: id {model_id!r} is not a registry id of that toolchain (lowercase a-z, 0-9, _ and -, at most 64)"
            )
        return model_id

    def check(self, names: list[str], teacher: str) -> None:
        """Refuse now, in one line, what ``write`` would refuse after training."""
        if student_inputs(teacher) != FEATURE_NAMES:
            raise TinyVmafError(
                f"layout=lusoris: that toolchain's tiny models read vmaf_v0.6.1's six features; stand-ins of {teacher} read its own"
            )
        if self.folder.exists() and not self.folder.is_dir():
            raise TinyVmafError(f"lusoris_dir={self.folder}: not a folder")
        text = read_registry(self.registry)
        for name in names:
            self._check_owned(self.model_id(name), text)

    def _check_owned(self, model_id: str, text: str | None) -> None:
        if self.overwrite:
            return
        entries = (
            [m for m in json.loads(text)["models"] if isinstance(m, dict) and m.get("id") == model_id] if text else []
        )
        if any(not str(m.get("notes", "")).startswith(TINYVMAF_NOTES) for m in entries):
            raise TinyVmafError(
                f"{self.registry}: entry {model_id!r} was not written by tinyvmaf; overwrite=true replaces it"
            )
        if not entries:
            for path in (self.folder / f"{model_id}.onnx", self.folder / f"{model_id}.json"):
                if os.path.lexists(path):
                    raise TinyVmafError(
                        f"{path}: not written by tinyvmaf (no entry of its in the registry); overwrite=true replaces it"
                    )

    def write(
        self, name: str, model: VmafNet, metadata: dict[str, str], features: np.ndarray, license_name: str
    ) -> tuple[Path, float]:
        """Write ``<id>.onnx``, its sidecar ``<id>.json`` and its registry entry; the file is checked
        against torch on ``features`` (real frames) first. Returns the file's path and its max
        |difference| from torch."""
        model_id = self.model_id(name)
        proto, diff = drop_in_graph(model_id, model, metadata, features, self.folder / f"{model_id}.onnx")
        self.folder.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.folder):
            text = read_registry(self.registry)
            self._check_owned(model_id, text)
            path = self.folder / f"{model_id}.onnx"
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
                # the graph standardizes its raw inputs itself: that toolchain must not scale them again
                "onnx_has_scaler": True,
            }  # fmt: skip
            write_json(self.folder / f"{model_id}.json", sidecar)
            entry = {"id": model_id, "kind": "fr", "onnx": path.name, "sha256": sha256, "opset": opset,
                     "notes": notes, "license": license_name}  # fmt: skip
            with atomic_path(self.registry) as tmp:
                tmp.write_text(with_entry(text, entry), encoding="utf-8")
        print(
            f"  {path.name}: scores every frame as the standard file does; {self.registry}: {model_id}, sha256 {sha256[:16]}..."
        )
        return path, diff


def drop_in_graph(
    model_id: str, model: VmafNet, metadata: dict[str, str], features: np.ndarray, path: Path
) -> tuple[onnx.ModelProto, float]:
    """The model in that toolchain's contract, within its limits and op allow-list, checked
    against torch and against the standard graph on ``features``."""
    proto = onnx_graph(model, LUSORIS_CONTRACT)
    metadata = {**metadata, "feature_names": json.dumps(list(LUSORIS_FEATURES))}  # the columns this file reads
    refused = sorted({n.op_type for n in proto.graph.node} - ACCEPTED_OPS)
    if refused:
        raise TinyVmafError(f"{model_id}: that toolchain refuses the ops {', '.join(refused)} this model needs")
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=str(value))
    if proto.ByteSize() > MAX_BYTES or proto.ir_version > MAX_IR_VERSION:
        raise TinyVmafError(f"{path}: over that toolchain's limits (50 MB, IR version {MAX_IR_VERSION})")
    try:
        diff = check_graph(proto, model, features, LUSORIS_CONTRACT)
        scores_as_standard(proto, onnx_graph(model), features)
    except TinyVmafError as exc:
        raise TinyVmafError(f"{path}: {exc}") from None
    return proto, diff


def scores_as_standard(proto: onnx.ModelProto, standard: onnx.ModelProto, features: np.ndarray) -> None:
    """``proto`` scores ``features`` (fed in its column order) exactly as the standard graph does."""
    theirs, ours = open_session(proto, "the drop-in graph"), open_session(standard, "the standard graph")
    got = theirs.run(["score"], {"input": LUSORIS_CONTRACT.inputs_from(features, FEATURE_NAMES)})[0]
    want = ours.run(["vmaf"], {"features": features.astype(np.float32)})[0]
    if not np.array_equal(got[:, 0], want):
        raise TinyVmafError(f"scores differ from the standard file's (max |diff| {np.abs(got[:, 0] - want).max():.2e})")


def read_registry(path: Path) -> str | None:
    """The registry's text, checked to be one (None when the folder has none yet). Someone
    else's registry is data: a file that is not one is refused in one line, before any work."""
    try:
        data = read_bounded(path, MAX_REGISTRY_BYTES, "a registry")
    except FileNotFoundError:
        return None
    except TinyVmafError:
        raise TinyVmafError(f"{path}: not a registry file (a link, not a regular file, or over 16 MiB)") from None
    try:
        text = data.decode("utf-8")
        registry = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TinyVmafError(f"{path}: not JSON ({type(exc).__name__})") from None
    if not isinstance(registry, dict) or not isinstance(registry.get("models"), list):
        raise TinyVmafError(f"{path}: not a model registry (no list of models)")
    if registry.get("schema_version") != REGISTRY_SCHEMA_VERSION:
        raise TinyVmafError(
            f"{path}: schema_version {registry.get('schema_version')!r:.20}, not {REGISTRY_SCHEMA_VERSION}"
        )
    ids = [m.get("id") for m in registry["models"] if isinstance(m, dict)]
    twice = sorted({i for i in ids if ids.count(i) > 1 and isinstance(i, str)})
    if twice:
        raise TinyVmafError(f"{path}: lists id {twice[0]!r} twice")
    return text


def with_entry(text: str | None, entry: dict) -> str:
    """The registry ``text`` with ``entry`` in place of the entry of its id, or added last. Only
    that entry's bytes change (the rest of the file stays byte for byte); no text: a new registry."""
    if text is None:
        registry = {"$schema": "./registry.schema.json", "schema_version": REGISTRY_SCHEMA_VERSION, "models": [entry]}
        return json.dumps(registry, indent=2, sort_keys=True) + "\n"
    close, elements = _models_array(text)
    for start, end in elements:
        found = json.loads(text[start:end])
        if isinstance(found, dict) and found.get("id") == entry["id"]:
            indent = _indent_at(text, start)
            return text[:start] + _entry_text(entry, indent) + text[end:]
    if elements:
        last = elements[-1][1]
        indent = _indent_at(text, elements[-1][0])
        return text[:last] + ",\n" + indent + _entry_text(entry, indent) + text[last:]
    indent = _indent_at(text, close) + "  "
    return text[:close] + "\n" + indent + _entry_text(entry, indent) + "\n" + text[close:]


_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _models_array(text: str) -> tuple[int, list[tuple[int, int]]]:
    """Where the top-level ``models`` array closes, and each element's span (the last ``models``
    key wins, as in json.loads). ``text`` is a registry that ``read_registry`` accepted."""
    at = _SPACE.match(text, 0).end() + 1  # past '{'
    found: tuple[int, list[tuple[int, int]]] | None = None
    while True:
        at = _SPACE.match(text, at).end()
        if text[at] == "}":
            break
        key, at = _DECODER.raw_decode(text, at)
        at = _SPACE.match(text, _SPACE.match(text, at).end() + 1).end()  # past ':'
        if key == "models":
            elements, at = [], at + 1
            while (at := _SPACE.match(text, at).end()) < len(text) and text[at] != "]":
                _, end = _DECODER.raw_decode(text, at)
                elements.append((at, end))
                at = _SPACE.match(text, end).end()
                at += text[at] == ","
            found, at = (at, elements), at + 1
        else:
            _, at = _DECODER.raw_decode(text, at)
        at = _SPACE.match(text, at).end()
        at += text[at] == ","
    assert found is not None  # read_registry saw the list
    return found


def _indent_at(text: str, position: int) -> str:
    line = text[text.rfind("\n", 0, position) + 1 : position]
    return line[: len(line) - len(line.lstrip(" \t"))]


def _entry_text(entry: dict, indent: str) -> str:
    return json.dumps(entry, indent=2, sort_keys=True).replace("\n", "\n" + indent)


def write_json(path: Path, value: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
