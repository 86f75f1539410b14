"""Scoring with a shipped ONNX model: a video pair (libvmaf computes the features), a libvmaf
JSON log, or a whole corpus cache (``evaluate.py onnx=...``)."""

from __future__ import annotations

import json
import math
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from tinyvmaf.cache import TeacherCache
from tinyvmaf.corpus import ClipPair, Video
from tinyvmaf.errors import TinyVmafError, instantiate_checked
from tinyvmaf.metrics import metrics_per_source
from tinyvmaf.model import VMAF_RANGE
from tinyvmaf.teacher import FEATURE_NAMES
from tinyvmaf.teacher.log import LEGACY_NAMES, features_from_log, read_log

LIBVMAF_MODEL = "vmaf_v0.6.1"


# What a model from someone else may hold: operators whose output sizes follow from their inputs'
# shapes (no ConstantOfShape, Expand, Tile, Range, Resize, control flow or custom domains), a file
# of bounded size, and no tensor of more than MAX_VALUES_PER_FRAME values per input frame.
SCORING_OPS = frozenset(
    "Abs Add And BatchNormalization Cast Ceil Celu Clip Concat Constant Div Elu Equal Erf Exp Flatten Floor Gather "
    "Gemm Greater GreaterOrEqual HardSigmoid HardSwish Identity LeakyRelu Less LessOrEqual Log LogSoftmax MatMul Max "
    "Min Mod Mul Neg Not Or Pow PRelu Reciprocal ReduceMax ReduceMean ReduceMin ReduceSum Relu Reshape Round Selu "
    "Sigmoid Sign Slice Softmax Softplus Softsign Split Sqrt Squeeze Sub Tanh Transpose Unsqueeze Where".split()
)
MAX_MODEL_BYTES = 64 * 2**20
MAX_VALUES_PER_FRAME = 4096
MAX_CONSTANT_VALUES = 2**24  # a tensor without a frame dimension
FRAMES_PER_RUN = 4096  # frames per session.run: with the cap above, at most 128 MiB a tensor
BATCH = "batch"


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """A tensor's dimensions: an int, a symbol, or None where nothing is known."""
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return [None]
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value.type.tensor_type.shape.dim]


class OnnxVmaf:
    """A VMAF model from an ONNX file, maybe someone else's, checked before anything runs: one
    float32 input ``[N, 6]`` (any N), one output ``[N]`` or ``[N, 1]``, known operators only, every
    tensor's size bounded per frame; and every score it returns checked to be a number in [0, 100]."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        graph = self._checked_graph(self._read())
        try:
            self.session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise TinyVmafError(
                f"{self.path}: ONNX Runtime cannot load it ({' '.join(str(exc).split())[:200]})"
            ) from None
        self.metadata = {p.key: p.value for p in graph.metadata_props}
        self.input_name = self.session.get_inputs()[0].name
        self.feature_names = self._feature_names()

    def _read(self) -> onnx.ModelProto:
        try:
            info = self.path.stat()
        except OSError:
            raise TinyVmafError(f"{self.path}: no such model file") from None
        if not stat.S_ISREG(info.st_mode):
            raise TinyVmafError(f"{self.path}: not a regular file")
        if info.st_size > MAX_MODEL_BYTES:
            raise TinyVmafError(
                f"{self.path}: {info.st_size:,} bytes, more than the {MAX_MODEL_BYTES:,} a model may hold"
            )
        with open(self.path, "rb") as f:
            data = f.read(MAX_MODEL_BYTES + 1)
        try:
            return onnx.load_model_from_string(data)
        except Exception as exc:
            raise TinyVmafError(f"{self.path}: not an ONNX model ({type(exc).__name__})") from None

    def _checked_graph(self, model: onnx.ModelProto) -> onnx.ModelProto:
        g = model.graph
        refuse = lambda why: TinyVmafError(f"{self.path}: {why}")  # noqa: E731
        if model.functions or any(o.domain not in ("", "ai.onnx") for o in model.opset_import):
            raise refuse("uses functions or operator domains other than ONNX's own")
        unknown = sorted({n.op_type for n in g.node if n.domain not in ("", "ai.onnx") or n.op_type not in SCORING_OPS})
        if unknown:
            raise refuse(f"uses operator(s) {', '.join(unknown)[:200]}, not among those a VMAF model needs")
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in g.initializer):
            raise refuse("keeps weights in external files: a model must be one self-contained file")
        initializers = {t.name for t in g.initializer}
        inputs = [i for i in g.input if i.name not in initializers]
        if len(inputs) != 1 or len(g.output) != 1:
            raise refuse(
                f"has {len(inputs)} input(s) and {len(g.output)} output(s), not one [N, 6] input and one score"
            )
        (feed,), (out,) = inputs, g.output
        dims = _dims(feed)
        if (
            feed.type.tensor_type.elem_type != onnx.TensorProto.FLOAT
            or len(dims) != 2
            or dims[1] != 6
            or isinstance(dims[0], int)
        ):
            raise refuse(
                f"input {feed.name!r:.40} is {onnx.TensorProto.DataType.Name(feed.type.tensor_type.elem_type)} {dims}, not float32 [N, 6] for any N"
            )
        out_dims = _dims(out)
        if out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or not (len(out_dims) == 1 or out_dims[1:] == [1]):
            raise refuse(
                f"output {out.name!r:.40} is {onnx.TensorProto.DataType.Name(out.type.tensor_type.elem_type)} {out_dims}, not float32 [N] or [N, 1]"
            )
        # Every tensor's shape, with the input's first dimension as the one symbol N.
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe_feed = next(i for i in probe.graph.input if i.name == feed.name)
        probe_feed.type.tensor_type.shape.dim[0].Clear()
        probe_feed.type.tensor_type.shape.dim[0].dim_param = BATCH
        try:
            inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=True, data_prop=True)
        except Exception as exc:
            raise refuse(f"its shapes do not check out ({' '.join(str(exc).split())[:200]})") from None
        values = [*inferred.graph.value_info, *inferred.graph.output]
        shaped = {v.name for v in values}
        if any(o and o not in shaped for n in g.node for o in n.output):
            raise refuse("has tensors whose shapes cannot be inferred, so its memory cannot be bounded")
        for v in values:
            shape = _dims(v)
            frames = shape.count(BATCH)
            sizes = [d for d in shape if d != BATCH]
            if None in sizes or any(isinstance(d, str) for d in sizes) or frames > 1:
                raise refuse(f"tensor {v.name!r:.40} has shape {shape}: its size cannot be bounded by the frames given")
            cap = MAX_VALUES_PER_FRAME if frames else MAX_CONSTANT_VALUES
            if math.prod(sizes) > cap:
                raise refuse(
                    f"tensor {v.name!r:.40} of shape {shape} holds more than {cap:,} values {'per frame' if frames else ''}"
                )
        return model

    def _feature_names(self) -> list[str]:
        raw = self.metadata.get("feature_names")
        if raw is None:
            raise TinyVmafError(f"{self.path}: no feature_names in its metadata")
        try:
            names = json.loads(raw)
        except json.JSONDecodeError:
            raise TinyVmafError(f"{self.path}: feature_names metadata is not a JSON list") from None
        legacy = {v: k for k, v in LEGACY_NAMES.items()}
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TinyVmafError(f"{self.path}: feature_names metadata is not a list of names")
        unknown = [n for n in names if n not in FEATURE_NAMES and n not in legacy]
        if unknown or len(names) != len(FEATURE_NAMES) or len(set(names)) != len(names):
            raise TinyVmafError(f"{self.path}: feature_names {names!r:.200} are not libvmaf's {list(FEATURE_NAMES)}")
        return [legacy.get(n, n) for n in names]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Scores for features given in FEATURE_NAMES order, reordered to the model's own order; a
        score that is not a finite number in [0, 100], or an output of the wrong shape, is an error
        naming the frame."""
        order = [FEATURE_NAMES.index(n) for n in self.feature_names]
        x = np.ascontiguousarray(features[:, order], dtype=np.float32)
        scores = []
        for start in range(0, len(x), FRAMES_PER_RUN):
            chunk = x[start : start + FRAMES_PER_RUN]
            got = self.session.run(None, {self.input_name: chunk})[0]
            if got.shape not in ((len(chunk),), (len(chunk), 1)):
                raise TinyVmafError(
                    f"{self.path}: returned shape {got.shape} for {len(chunk)} frames, not [N] or [N, 1]"
                )
            scores.append(got.reshape(-1).astype(np.float64))
        tiny = np.concatenate(scores) if scores else np.zeros(0)
        bad = np.flatnonzero(~(np.isfinite(tiny) & (tiny >= VMAF_RANGE[0]) & (tiny <= VMAF_RANGE[1])))
        if len(bad):
            raise TinyVmafError(
                f"{self.path}: frame {bad[0]}: the model's score is {tiny[bad[0]]}, not a number in [0, 100] "
                f"({len(bad)} such frame(s))"
            )
        return tiny


def score_log(model: OnnxVmaf, log_path: Path) -> dict:
    log = read_log(log_path)
    features = features_from_log(log)
    own = next((k for k in ("vmaf", LIBVMAF_MODEL) if log.has(k)), None)
    libvmaf = log.column(own) if own else None
    return result(model, features, libvmaf)


def score_pair(model: OnnxVmaf, libvmaf, reference: Path, distorted: Path) -> dict:
    pair = ClipPair("cli", Path(distorted).stem, Video(Path(reference)), Video(Path(distorted)))
    teacher = libvmaf.score(pair, [LIBVMAF_MODEL])
    return result(model, teacher.features, teacher.scores[LIBVMAF_MODEL])


def result(model: OnnxVmaf, features: np.ndarray, libvmaf: np.ndarray | None) -> dict:
    """Per-frame scores as columns (a log of millions of frames stays arrays) and their means."""
    tiny = model.predict(features)
    columns = {"frame": np.arange(len(tiny)), "tiny": tiny}
    pooled = {"tiny_mean": float(tiny.mean())}
    if libvmaf is not None:
        columns[LIBVMAF_MODEL] = libvmaf
        pooled[f"{LIBVMAF_MODEL}_mean"] = float(libvmaf.mean())
        pooled["mean_abs_diff"] = float(np.abs(tiny - libvmaf).mean())
    return {"model": str(model.path), "columns": columns, "pooled": pooled}


ROWS_PER_CHUNK = 10_000


def _rows(scored: dict) -> Iterator[list[tuple]]:
    """The per-frame rows, ``ROWS_PER_CHUNK`` at a time (frame numbers as ints, scores as floats)."""
    columns = list(scored["columns"].values())
    for start in range(0, len(columns[0]), ROWS_PER_CHUNK):
        yield list(zip(*(c[start : start + ROWS_PER_CHUNK].tolist() for c in columns)))


def render(scored: dict, fmt: str) -> Iterator[str]:
    """The scores as text, in pieces (a long log is never one string): ``table`` (aligned columns),
    ``json`` (``{"model", "frames": [{...}, ...], "pooled"}``) or ``csv``."""
    names = list(scored["columns"])
    if fmt == "json":
        yield json.dumps(scored["model"]).join(['{"model": ', ', "frames": ['])
        first = True
        for rows in _rows(scored):
            text = ",\n".join(json.dumps(dict(zip(names, row)), allow_nan=False) for row in rows)
            yield ("\n" if first else ",\n") + text
            first = False
        yield f'\n], "pooled": {json.dumps(scored["pooled"], allow_nan=False)}}}\n'
    elif fmt == "csv":
        yield ",".join(names) + "\n"
        for rows in _rows(scored):
            yield "".join(",".join(map(repr, row)) + "\n" for row in rows)
    elif fmt == "table":
        widths = [max(len(n), 9) for n in names]
        yield f"{scored['model']}\n" + " ".join(n.rjust(w) for n, w in zip(names, widths)) + "\n"
        line = " ".join(f"{{:>{w}d}}" if i == 0 else f"{{:>{w}.3f}}" for i, w in enumerate(widths)) + "\n"
        for rows in _rows(scored):
            yield "".join(line.format(*row) for row in rows)
        yield "pooled: " + "  ".join(f"{k} {v:.3f}" for k, v in scored["pooled"].items()) + "\n"
    else:
        raise TinyVmafError(f"format={fmt}: use table, json or csv")


def score_command(cfg: DictConfig) -> int:
    """``score.py``: per-frame and pooled scores of a clip pair or of a libvmaf JSON log."""
    if cfg.format not in ("table", "json", "csv"):
        raise TinyVmafError(f"format={cfg.format}: use table, json or csv")
    model = OnnxVmaf(cfg.onnx)
    if cfg.get("log"):
        scored = score_log(model, Path(cfg.log))
    elif cfg.get("reference") and cfg.get("distorted"):
        scored = score_pair(model, instantiate_checked(cfg.libvmaf), Path(cfg.reference), Path(cfg.distorted))
    else:
        raise TinyVmafError("give log=LIBVMAF_JSON, or reference=REF distorted=DIS")
    for piece in render(scored, cfg.format):
        sys.stdout.write(piece)
    return 0


def evaluate_onnx(cfg: DictConfig) -> int:
    """``evaluate.py onnx=MODEL``: PLCC/SROCC/RMSE of a shipped model over a corpus's cache."""
    model = OnnxVmaf(cfg.onnx)
    corpus = instantiate_checked(cfg.corpus)
    cache: TeacherCache = instantiate_checked(cfg.cache)
    table = cache.ready(corpus)
    teacher_scores = table.scores[cfg.teacher.model]
    predicted = model.predict(table.features)
    report = Table(title=f"{model.path} on corpus {table.corpus} (teacher {cfg.teacher.model})")
    for name in ("source", "n", "PLCC", "SROCC", "RMSE"):
        report.add_column(name, justify="right")
    per_source = metrics_per_source(predicted, teacher_scores, table.source_of_frame, table.sources)
    everything = metrics_per_source(predicted, teacher_scores, np.zeros(len(table), dtype=np.int64), ["all"])
    for m in [*per_source, *everything]:
        report.add_row(
            m["source"],
            str(m["n"]),
            f"{m['plcc']:.4f}",
            f"{m['srocc']:.4f}",
            f"{m['rmse']:.3f}",
            end_section=m is per_source[-1],
        )
    Console().print(report)
    return 0
