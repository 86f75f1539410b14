"""ONNX in and out, with tinyvmaf's limits: the tiny models' graph written from their weights,
checked against torch on every export; a model rebuilt from someone else's weights; someone
else's ONNX file checked before it runs (``OnnxVmaf``); and ``open_session``, the one place that
opens an ONNX Runtime session.

Writing the graph from the weights, not by tracing, takes ~0.3 ms against ~520 ms for
``torch.onnx.export`` (``benchmarks/onnx_export.py``), so every logged fold model is written too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch import nn

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.features import chroma_correction
from tinyvmaf.files import read_bounded
from tinyvmaf.model import VmafNet, mlp
from tinyvmaf.teacher import FEATURE_NAMES, Measurement
from tinyvmaf.teacher.function import (
    ONNX_PROVIDERS,
    V1_FEATURE_COLUMNS,
    OnnxGraph,
    load_teacher,
    student_inputs,
)
from tinyvmaf.teacher.log import LEGACY_NAMES

# VMAF points: ONNX Runtime against torch on real frames, on every export. Both run float32, whose
# spacing near a score of 100 is 7.6e-6; their sums and SiLU differ in order, and a stand-in trained
# 400 epochs differed by 1.03e-4. A wrong graph is off by whole points.
ONNX_TOLERANCE = 5e-4


def open_session(model: onnx.ModelProto | Path, what: str | Path) -> ort.InferenceSession:
    """An ONNX Runtime session on ``model`` (a graph in memory, or a file), on the CPU; a graph
    ONNX Runtime refuses is one line naming ``what``."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(source, providers=ONNX_PROVIDERS)
    except Exception as exc:
        raise TinyVmafError(f"{what}: ONNX Runtime cannot load it ({' '.join(str(exc).split())[:200]})") from None


# --- the tiny models' graph, written from the weights -------------------------------------------


def _gelu(g: OnnxGraph, x: str, m: nn.GELU) -> str:
    if m.approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = g.op("Mul", g.op("Mul", x, x), x)
        inner = g.op("Mul", g.op("Add", x, g.op("Mul", cube, g.constant("gelu_c", 0.044715))),
                     g.constant("gelu_k", math.sqrt(2 / math.pi)))  # fmt: skip
        gate = g.op("Add", g.op("Tanh", inner), g.constant("gelu_one", 1.0))
    else:  # 0.5 x (1 + erf(x / sqrt 2)); opset 17 has no Gelu
        gate = g.op(
            "Add", g.op("Erf", g.op("Div", x, g.constant("gelu_sqrt2", math.sqrt(2)))), g.constant("gelu_one", 1.0)
        )
    return g.op("Mul", g.op("Mul", x, gate), g.constant("gelu_half", 0.5))


def _softplus(g: OnnxGraph, x: str, beta: float) -> str:
    if beta == 1:
        return g.op("Softplus", x)
    b = g.constant(f"softplus_beta_{len(g.nodes)}", beta)
    return g.op("Div", g.op("Softplus", g.op("Mul", x, b)), b)


def _clip(g: OnnxGraph, x: str, low: float, high: float) -> str:
    n = len(g.nodes)
    return g.op("Clip", x, g.constant(f"clip_low_{n}", low), g.constant(f"clip_high_{n}", high))


# torch's activation modules and their ONNX forms (torch's Softplus threshold is below float32 resolution)
ONNX_ACTIVATIONS: dict[type[nn.Module], Callable[[OnnxGraph, str, nn.Module], str]] = {
    nn.ReLU: lambda g, x, m: g.op("Relu", x),
    nn.LeakyReLU: lambda g, x, m: g.op("LeakyRelu", x, alpha=float(m.negative_slope)),
    nn.ELU: lambda g, x, m: g.op("Elu", x, alpha=float(m.alpha)),
    nn.CELU: lambda g, x, m: g.op("Celu", x, alpha=float(m.alpha)),
    nn.SELU: lambda g, x, m: g.op("Selu", x),
    nn.GELU: _gelu,
    nn.SiLU: lambda g, x, m: g.op("Mul", x, g.op("Sigmoid", x)),
    nn.Mish: lambda g, x, m: g.op("Mul", x, g.op("Tanh", _softplus(g, x, 1.0))),
    nn.Sigmoid: lambda g, x, m: g.op("Sigmoid", x),
    nn.Tanh: lambda g, x, m: g.op("Tanh", x),
    nn.Softplus: lambda g, x, m: _softplus(g, x, float(m.beta)),
    nn.Softsign: lambda g, x, m: g.op("Softsign", x),
    nn.Hardsigmoid: lambda g, x, m: g.op("HardSigmoid", x, alpha=1 / 6, beta=0.5),
    nn.Hardswish: lambda g, x, m: g.op("HardSwish", x),
    nn.ReLU6: lambda g, x, m: _clip(g, x, 0.0, 6.0),
    nn.Hardtanh: lambda g, x, m: _clip(g, x, float(m.min_val), float(m.max_val)),
    nn.Identity: lambda g, x, m: x,
}


def _onnx_layers(g: OnnxGraph, x: str, net: nn.Module) -> str:
    for i, layer in enumerate(list(net) if isinstance(net, nn.Sequential) else [net]):
        if isinstance(layer, nn.Linear):
            weight = g.constant(f"layer{i}.weight", layer.weight.detach().cpu().numpy())
            bias = g.constant(f"layer{i}.bias", layer.bias.detach().cpu().numpy())
            x = g.op("Gemm", x, weight, bias, transB=1)
        elif type(layer) in ONNX_ACTIVATIONS:
            x = ONNX_ACTIVATIONS[type(layer)](g, x, layer)
        else:
            known = ", ".join(sorted(t.__name__ for t in ONNX_ACTIVATIONS))
            raise TinyVmafError(f"arch.net: no ONNX form for layer {type(layer).__name__}; activations known: {known}")
    return x


@dataclass(frozen=True)
class OnnxContract:
    """What a written graph looks like from outside: its input and output names, the feature
    each input column holds (a permutation of the model's inputs; None: the model's own order),
    and the output's shape."""

    input: str = "features"
    output: str = "vmaf"
    features: tuple[str, ...] | None = None
    column_output: bool = False  # [N, 1] rather than [N]

    def inputs_from(self, features: np.ndarray, inputs: tuple[str, ...]) -> np.ndarray:
        """Frames in the model's ``inputs`` order, as this contract's input takes them."""
        columns = [inputs.index(f) for f in self.features or inputs]
        return np.ascontiguousarray(features[:, columns], dtype=np.float32)


TINYVMAF_CONTRACT = OnnxContract()


def onnx_graph(model: VmafNet, contract: OnnxContract = TINYVMAF_CONTRACT) -> onnx.ModelProto:
    """The clipped model as one self-contained ONNX graph, [N, F] -> [N] (or [N, 1]), any N,
    written from the weights: the teacher's chroma correction and the log of the motion feature
    where the model has them, standardize, Gemm +
    activation per layer, de-standardize, clip to the teacher's range. Another column order is one
    Gather back to the model's order first, so every score is bit for bit the standard graph's."""
    g = OnnxGraph(np.float32)
    x = contract.input
    if contract.features is not None and contract.features != model.inputs:
        if sorted(contract.features) != sorted(model.inputs):
            raise TinyVmafError(f"the model reads {list(model.inputs)}, not {list(contract.features)}")
        order = np.array([contract.features.index(f) for f in model.inputs], dtype=np.int64)
        g.constants(feature_order=order)
        x = g.op("Gather", x, "feature_order", axis=1)
    if model.chroma is not None:  # the teacher's: speed_chroma of exactly 0 read as c (1 - adm3)
        c, guiding, guided = model.chroma
        columns = np.arange(len(model.inputs))
        g.constants(chroma_c=np.float32(c), adm3_column=np.array([guiding]), speed_chroma_column=columns == guided)
        adm3 = g.op("Gather", x, "adm3_column", axis=1)
        corrected = g.op("Mul", g.op("Sub", g.constant("one", 1.0), adm3), "chroma_c")
        no_chroma = g.op("And", "speed_chroma_column", g.op("Equal", x, g.constant("zero", 0.0)))
        x = g.op("Where", no_chroma, corrected, x)
    if model.log_motion:  # log1p(max(motion, 0)) in the motion feature's column, the others as they are
        mask = np.arange(len(model.inputs)) == model.motion
        logged = g.op("Log", g.op("Add", g.op("Max", x, g.constant("zero", 0.0)), g.constant("one", 1.0)))
        g.constants(motion_column=mask)
        x = g.op("Where", "motion_column", logged, x)
    x = g.op("Div", g.op("Sub", x, g.constant("feature_mean", model.feature_mean.cpu().numpy())),
             g.constant("feature_std", model.feature_std.cpu().numpy()))  # fmt: skip
    x = _onnx_layers(g, x, model.net)
    x = g.op("Add", g.op("Mul", x, g.constant("target_std", model.target_std.cpu().numpy().reshape(1))),
             g.constant("target_mean", model.target_mean.cpu().numpy().reshape(1)))  # fmt: skip
    x = _clip(g, x, *model.score_range)
    shape = ["batch", 1] if contract.column_output else ["batch"]
    g.constants(shape=np.array([-1, 1] if contract.column_output else [-1]))
    g.op("Reshape", x, "shape", out=contract.output)
    return g.model(
        "tinyvmaf",
        helper.make_tensor_value_info(contract.input, TensorProto.FLOAT, ["batch", len(model.inputs)]),
        helper.make_tensor_value_info(contract.output, TensorProto.FLOAT, shape),
    )


def check_graph(
    graph: onnx.ModelProto | Path, model: VmafNet, features: np.ndarray, contract: OnnxContract = TINYVMAF_CONTRACT
) -> float:
    """``onnx.checker``, then ONNX Runtime against the torch module on ``features`` (real frames,
    in the model's input order, fed in the contract's); returns the max |difference|, which must
    stay within ``ONNX_TOLERANCE``."""
    onnx.checker.check_model(graph if isinstance(graph, onnx.ModelProto) else str(graph), full_check=True)
    session = open_session(graph, graph if isinstance(graph, Path) else "the ONNX graph")
    x = np.asarray(features, dtype=np.float32)
    got = session.run([contract.output], {contract.input: contract.inputs_from(x, model.inputs)})[0]
    with torch.no_grad():
        want = model.eval().predict(torch.from_numpy(x).to(model.feature_mean.device)).cpu().numpy()
    wanted_shape = (len(x), 1) if contract.column_output else (len(x),)
    diff = float(np.abs(got.reshape(-1) - want).max())
    if got.shape != wanted_shape or not diff <= ONNX_TOLERANCE:
        where = graph if isinstance(graph, Path) else "the ONNX graph"
        raise TinyVmafError(
            f"{where}: ONNX Runtime disagrees with torch (max |diff| {diff:.2e} > {ONNX_TOLERANCE}, shape {got.shape})"
        )
    return diff


# --- someone else's files ------------------------------------------------------------------------

# The most weights a rebuilt model may hold: tinyvmaf's nets hold 7 to 2,561, a wide search's
# some 10^5; checked before any layer is allocated.
MAX_WEIGHTS = 1_000_000


def model_from_weights(
    state: object,
    activation: object,
    log_motion: object,
    what: str,
    teacher: str = "vmaf_v0.6.1",
    chroma: object = False,
) -> VmafNet:
    """A ``VmafNet`` rebuilt from a state dict read from someone else's file, never from a config
    read with it: the layers from the weights' shapes (F -> ... -> 1, F the teacher's inputs, each
    width the next's input), the activation by name from the ones tinyvmaf writes as ONNX, every
    tensor float and finite."""
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise TinyVmafError(f"{what}: not a tinyvmaf model (no state dict of tensors)")
    known = {cls.__name__: cls for cls in ONNX_ACTIVATIONS}
    if activation not in (*known, "none"):
        raise TinyVmafError(f"{what}: activation {activation!r:.40} is not one of {', '.join(sorted(known))}")
    if not isinstance(log_motion, bool):
        raise TinyVmafError(f"{what}: log_motion is {log_motion!r:.40}, not true or false")
    if not isinstance(chroma, bool):
        raise TinyVmafError(f"{what}: chroma_correction is {chroma!r:.40}, not true or false")
    for name, tensor in state.items():  # a view may declare far more values than its storage holds
        if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
            raise TinyVmafError(
                f"{what}: tensor {name!r:.60} of shape {tuple(tensor.shape)} declares more values than its file holds"
            )
    weights = sorted((int(k.split(".")[1]), v) for k, v in state.items() if re.fullmatch(r"net\.\d{1,3}\.weight", k))
    inputs = student_inputs(teacher)
    widths = [len(inputs)]
    for index, (layer, w) in enumerate(weights):
        if layer != 2 * index or w.dim() != 2 or w.shape[1] != widths[-1] or not 0 < w.shape[0] <= 4096:
            raise TinyVmafError(
                f"{what}: layer net.{layer} of shape {tuple(w.shape)} does not continue a {len(inputs)}-input MLP"
            )
        widths.append(int(w.shape[0]))
    if widths[-1] != 1 or len(widths) < 2 or (activation == "none") != (len(widths) == 2):
        raise TinyVmafError(
            f"{what}: the weights {widths} are not a {len(inputs)} -> ... -> 1 MLP with activation {activation}"
        )
    n_weights = sum(a * b + b for a, b in zip(widths, widths[1:]))
    if n_weights > MAX_WEIGHTS:
        raise TinyVmafError(f"{what}: {n_weights:,} weights, more than the {MAX_WEIGHTS:,} a tiny model may hold")
    net = mlp(widths[1:-1], activation if activation != "none" else "ReLU", len(inputs))
    try:
        correction = chroma_correction(teacher, chroma)
    except TinyVmafError:
        raise TinyVmafError(f"{what}: chroma_correction is set, but teacher {teacher} has none") from None
    model = VmafNet(net, log_motion, inputs, load_teacher(teacher).clip, correction)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise TinyVmafError(f"{what}: its tensors do not fit the model ({' '.join(str(exc).split())[:200]})") from None
    if not all(torch.isfinite(t).all() for t in model.state_dict().values()):
        raise TinyVmafError(f"{what}: holds non-finite weights or standardization")
    return model.float()


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
    float32 input ``[N, F]`` (any N; F = 6 for vmaf_v0.6.1's features, 4 for a v1.0.16 model's),
    one output ``[N]`` or ``[N, 1]``, known operators only, every tensor's size bounded per frame;
    every score it returns checked to be a number in its teacher's range. ``teacher`` and
    ``measurement`` say which libvmaf model gives its features, and where libvmaf must see a pair."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        graph = self._checked_graph(self._read())
        self.session = open_session(graph, self.path)
        self.metadata = {p.key: p.value for p in graph.metadata_props}
        self.input_name = self.session.get_inputs()[0].name
        self.feature_names = self._feature_names()
        self.teacher = self._teacher()
        self.score_range = load_teacher(self.teacher).clip
        self.measurement = self._measurement()

    def _teacher(self) -> str:
        """The libvmaf model whose features the file reads: a v1.0.16 one by its metadata, which
        its four columns must match; vmaf_v0.6.1 for the six."""
        if tuple(sorted(self.feature_names)) == tuple(sorted(FEATURE_NAMES)):
            return "vmaf_v0.6.1"
        teacher = self.metadata.get("teacher")
        if teacher not in V1_FEATURE_COLUMNS or sorted(V1_FEATURE_COLUMNS[teacher]) != sorted(self.feature_names):
            raise TinyVmafError(
                f"{self.path}: feature_names {self.feature_names!r:.300} are neither libvmaf's six nor the four of its teacher {teacher!r:.60}"
            )
        return teacher

    def _measurement(self) -> Measurement:
        """Where its features were measured (metadata ``display`` and ``bit_depth``, as export writes
        them for a display-resolution cache); native when absent."""
        try:
            display = json.loads(self.metadata["display"]) if "display" in self.metadata else None
            bit_depth = json.loads(self.metadata["bit_depth"]) if "bit_depth" in self.metadata else None
        except json.JSONDecodeError:
            raise TinyVmafError(f"{self.path}: display or bit_depth metadata is not JSON") from None
        if display is not None and not (isinstance(display, list) and len(display) == 2):
            raise TinyVmafError(f"{self.path}: display metadata {display!r:.40} is not [width, height]")
        try:
            return Measurement(display, bit_depth)
        except TinyVmafError as exc:
            raise TinyVmafError(f"{self.path}: {str(exc).removeprefix('cache.')}") from None

    def _read(self) -> onnx.ModelProto:
        try:
            data = read_bounded(self.path, MAX_MODEL_BYTES, "a model", follow_links=True)
        except FileNotFoundError:
            raise TinyVmafError(f"{self.path}: no such model file") from None
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
                f"has {len(inputs)} input(s) and {len(g.output)} output(s), not one [N, F] input and one score"
            )
        (feed,), (out,) = inputs, g.output
        dims = _dims(feed)
        if (
            feed.type.tensor_type.elem_type != onnx.TensorProto.FLOAT
            or len(dims) != 2
            or dims[1] not in (len(FEATURE_NAMES), 4)
            or isinstance(dims[0], int)
        ):
            raise refuse(
                f"input {feed.name!r:.40} is {onnx.TensorProto.DataType.Name(feed.type.tensor_type.elem_type)} {dims}, not float32 [N, 6] or [N, 4] for any N"
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
        names = [legacy.get(n, n) for n in names]
        width = self.session.get_inputs()[0].shape[1]
        if len(set(names)) != len(names) or len(names) != width:
            raise TinyVmafError(
                f"{self.path}: feature_names {names!r:.200} do not name each of its {width} input columns once"
            )
        return names

    def predict(self, columns: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Scores of the frames whose features ``columns(names)`` gives by libvmaf name, in the
        model's own order; a score that is not a finite number in the teacher's range, or an output
        of the wrong shape, is an error naming the frame."""
        x = np.ascontiguousarray(columns(self.feature_names), dtype=np.float32)
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
        low, high = self.score_range
        bad = np.flatnonzero(~(np.isfinite(tiny) & (tiny >= low) & (tiny <= high)))
        if len(bad):
            raise TinyVmafError(
                f"{self.path}: frame {bad[0]}: the model's score is {tiny[bad[0]]}, not a number in [{low:g}, {high:g}] "
                f"({len(bad)} such frame(s))"
            )
        return tiny
