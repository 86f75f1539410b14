"""The teacher as code: a libvmaf model JSON evaluated from its features, batched in numpy.

What libvmaf 3.2's ``vmaf_predict_score_at_index`` (libvmaf/src/predict.c) does, step for step:
each feature is rescaled linearly (``norm_type: linear_rescale``; index 0 of
``slopes``/``intercepts`` is the score, 1.. the features); a model with
``chroma_correction_parameter`` c (the v1.0.16 models, c = 120) replaces a speed_chroma of
exactly 0 (what SpEED gives when the chroma planes are too small for its scales) by
c * (1 - adm3); a libsvm nu-SVR with an RBF kernel; the score mapped back; ``score_transform``
(a polynomial, then out_lte_in/out_gte_in) when its JSON says ``enabled`` (v1.0.16) or the
caller asks (libvmaf's ``enable_transform``); the clip to ``score_clip``.
The model files ship in ``libvmaf_models/`` with libvmaf's licence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
import onnx
import onnx.numpy_helper

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.teacher import FEATURE_NAMES

# The box of valid feature values of vmaf_v0.6.1's six, FEATURE_NAMES order: adm2 and vif in
# [0, 1], motion2 up to ~100 (synthetic and sports content reach 80). The extrapolation guard is
# checked over it.
DOMAIN_LOW = np.zeros(len(FEATURE_NAMES))
DOMAIN_HIGH = np.array([1.0, 100.0, 1.0, 1.0, 1.0, 1.0])

# Every ONNX graph tinyvmaf writes (this teacher's and the tiny models'): opset 17, IR version 8,
# which ONNX Runtime reads from 1.11 on.
ONNX_OPSET = 17
ONNX_IR_VERSION = 8
# Where they run: these graphs are microseconds of arithmetic per frame, so the CPU runs them, and a
# file that asks for a GPU provider these machines lack only earns a warning per load.
ONNX_PROVIDERS = ["CPUExecutionProvider"]

# libvmaf's options that select a variant of a v0 feature, and how its JSON log names that variant.
_VARIANTS = {"adm_enhn_gain_limit": "_egl_{:g}", "vif_enhn_gain_limit": "_egl_{:g}"}

# The log names of the v1.0.16 models' inputs (cambi, speed_chroma_uv, adm3, motion3), as libvmaf
# 3.2 names them from each model's feature options (an option at its default is left out of the
# name), read off its log; the parity tests check each against libvmaf's own score.
_CAMBI = "cambi_hrs_1080_cmxv_17_vlt_0.06"
_SPEED = "speed_chroma_uv_mxv_45_nnf_0.1{}_snn_0.19_wvm_5"  # + the prescale of the phone and 4K 3H models
_ADM3 = "integer_adm3_csf_2_dlmw_0.7_egl_1_min_0.5_nw_0.02{}"  # + viewing distance and display height off 3H, 1080
_V1_COLUMNS = {
    "3d0h": (_CAMBI, _SPEED.format(""), _ADM3.format("")),
    "5d0h": (_CAMBI, _SPEED.format("_ps_0.6_psm_bilinear"), _ADM3.format("_nvd_5")),
    "1d5h_2160": (_CAMBI, _SPEED.format(""), _ADM3.format("_nvd_1.5_rdh_2160")),
    "3d0h_2160": (_CAMBI, _SPEED.format("_ps_0.5_psm_bilinear"), _ADM3.format("_rdh_2160")),
}
# hfr: motion3 over a five-frame window, moving-averaged
V1_FEATURE_COLUMNS = {
    f"vmaf_v1.0.16{hfr}_{view}": (*columns, motion)
    for view, columns in _V1_COLUMNS.items()
    for hfr, motion in (("", "integer_motion3_mmxv_18"), ("_hfr", "integer_motion3_mffw_mmxv_18_mma"))
}
# Each v1 feature's ceiling is its ``*_max_val`` option (cambi 17, speed 45, motion 18); adm3 lies in [0, 1].
_V1_CEILINGS = ("cambi_max_val", "speed_max_val", "adm3 has none", "motion_max_val")


@dataclass(frozen=True)
class SvrTeacher:
    name: str
    feature_columns: tuple[str, ...]  # libvmaf log names of the inputs, in the order the SVR reads them
    slopes: np.ndarray
    intercepts: np.ndarray
    support_vectors: np.ndarray  # [n_sv, n_features], in the rescaled space
    coefficients: np.ndarray  # [n_sv]
    gamma: float
    rho: float
    clip: tuple[float, float]
    transform: dict | None
    domain: tuple[np.ndarray, np.ndarray]  # the box of valid raw feature values, low and high
    chroma_correction: tuple[float, int, int] | None = None  # c, adm3's column, speed_chroma's column

    @property
    def n_features(self) -> int:
        return len(self.feature_columns)

    @property
    def transform_enabled(self) -> bool:
        """libvmaf applies ``score_transform`` unasked only when the JSON says ``enabled``."""
        return bool(self.transform) and self.transform.get("enabled") is True

    def __call__(self, features: np.ndarray, enable_transform: bool = False, chunk: int = 4096) -> np.ndarray:
        """vmaf scores of ``features`` [N, n_features] (raw libvmaf values, ``feature_columns`` order)."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise TinyVmafError(
                f"teacher {self.name}: features must be [N, {self.n_features}], got {list(features.shape)}"
            )
        transform = enable_transform or self.transform_enabled
        return np.concatenate(
            [self._score(features[i : i + chunk], transform) for i in range(0, len(features), chunk)] or [np.zeros(0)]
        )

    def _score(self, x: np.ndarray, transform: bool) -> np.ndarray:
        z = x * self.slopes[1:] + self.intercepts[1:]
        if self.chroma_correction:
            self._correct_chroma(z)
        # ||z - sv||^2 expanded, in place on one chunk-sized buffer that stays in cache.
        kernel = z @ (-2.0 * self.support_vectors.T)
        kernel += (z * z).sum(1)[:, None]
        kernel += (self.support_vectors**2).sum(1)[None, :]
        np.maximum(kernel, 0.0, out=kernel)
        kernel *= -self.gamma
        np.exp(kernel, out=kernel)
        svr = kernel @ self.coefficients - self.rho
        score = (svr - self.intercepts[0]) / self.slopes[0]
        if transform and self.transform:
            score = self._transform(score)
        return np.clip(score, *self.clip)

    def _correct_chroma(self, z: np.ndarray) -> None:
        """libvmaf's post_process_feature_from_another: both features are mapped back from the
        rescaled space (as libvmaf does, rounding included) and a speed_chroma of exactly 0 takes
        c * (1 - adm3), rescaled."""
        c, guiding, guided = self.chroma_correction
        s, b = self.slopes[1:], self.intercepts[1:]
        zero = (z[:, guided] - b[guided]) / s[guided] == 0.0
        adm3 = (z[:, guiding] - b[guiding]) / s[guiding]
        z[:, guided] = np.where(zero, (-c * adm3 + c) * s[guided] + b[guided], z[:, guided])

    def _transform(self, y: np.ndarray) -> np.ndarray:
        """libvmaf's ``transform``, its sums in its order (p0, then p1 y, then p2 y y)."""
        t = self.transform
        out = y
        if any(t.get(p) is not None for p in ("p0", "p1", "p2")):
            out = np.zeros_like(y)
            if t.get("p0") is not None:
                out = out + t["p0"]
            if t.get("p1") is not None:
                out = out + t["p1"] * y
            if t.get("p2") is not None:
                out = out + t["p2"] * y * y
        if t.get("out_lte_in") == "true":
            out = np.minimum(out, y)
        if t.get("out_gte_in") == "true":
            out = np.maximum(out, y)
        return out

    @property
    def n_params(self) -> int:
        """Every number the model holds: support vectors, coefficients, rescaling, gamma and rho."""
        return self.support_vectors.size + self.coefficients.size + self.slopes.size + self.intercepts.size + 2

    def onnx_graph(self) -> onnx.ModelProto:
        """This model as one self-contained ONNX graph with the tiny models' contract: ``features``
        float32 [N, n_features] (``feature_columns`` order) -> ``vmaf`` float32 [N], any N. Inside,
        in float64 as in libvmaf, the steps of ``_score``: the rescale, the chroma correction, the
        RBF SVR (the squared distance expanded), the denormalisation, ``score_transform`` where
        libvmaf applies it unasked (v1.0.16; not v0.6.1's), the clip."""
        graph = OnnxGraph(np.float64)
        graph.constants(slopes=self.slopes[1:], intercepts=self.intercepts[1:])
        graph.op("Cast", "features", to=onnx.TensorProto.DOUBLE, out="x")
        graph.op("Mul", "x", "slopes", out="x_scaled")
        z = graph.op("Add", "x_scaled", "intercepts", out="z")
        graph.constants(zero=np.zeros(1), axis1=np.array([1], dtype=np.int64))
        if self.chroma_correction:
            z = self._chroma_nodes(graph, z)
        sv = self.support_vectors
        graph.constants(
            sv_t=-2.0 * sv.T, sv_sq=(sv**2).sum(1)[None, :], minus_gamma=np.array([-self.gamma]),
            coef=self.coefficients[:, None], rho=np.array([self.rho]), score_intercept=np.array([self.intercepts[0]]),
            score_slope=np.array([self.slopes[0]]),
        )  # fmt: skip
        z_norm = graph.op("ReduceSum", graph.op("Mul", z, z), "axis1", keepdims=1)
        d = graph.op("Add", graph.op("Add", graph.op("MatMul", z, "sv_t"), z_norm), "sv_sq")
        distance = graph.op("Max", d, "zero")  # rounding can take a zero distance below 0
        kernel = graph.op("Exp", graph.op("Mul", distance, "minus_gamma"))
        svr = graph.op("Sub", graph.op("Squeeze", graph.op("MatMul", kernel, "coef"), "axis1"), "rho")
        score = graph.op("Div", graph.op("Sub", svr, "score_intercept"), "score_slope")
        if self.transform_enabled:
            score = self._transform_nodes(graph, score)
        clipped = graph.op(
            "Min", graph.op("Max", score, graph.constant("low", [self.clip[0]])), graph.constant("high", [self.clip[1]])
        )
        graph.op("Cast", clipped, to=onnx.TensorProto.FLOAT, out="vmaf")
        model = graph.model(
            self.name,
            onnx.helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["batch", self.n_features]),
            onnx.helper.make_tensor_value_info("vmaf", onnx.TensorProto.FLOAT, ["batch"]),
        )
        onnx.checker.check_model(model, full_check=True)
        return model

    def _chroma_nodes(self, graph: OnnxGraph, z: str) -> str:
        c, guiding, guided = self.chroma_correction
        s, b = self.slopes[1:], self.intercepts[1:]
        column = np.zeros((1, self.n_features), dtype=bool)
        column[0, guided] = True
        graph.constants(
            guiding=np.array(guiding, dtype=np.int64), guided=np.array(guided, dtype=np.int64),
            b_guiding=np.array([b[guiding]]), s_guiding=np.array([s[guiding]]), b_guided=np.array([b[guided]]),
            s_guided=np.array([s[guided]]), minus_c=np.array([-c]), c=np.array([c]), guided_column=column,
        )  # fmt: skip
        raw = graph.op("Div", graph.op("Sub", graph.op("Gather", z, "guided", axis=1), "b_guided"), "s_guided")
        zero = graph.op("Equal", raw, "zero")
        adm3 = graph.op("Div", graph.op("Sub", graph.op("Gather", z, "guiding", axis=1), "b_guiding"), "s_guiding")
        corrected = graph.op("Add", graph.op("Mul", adm3, "minus_c"), "c")
        rescaled = graph.op("Add", graph.op("Mul", corrected, "s_guided"), "b_guided")
        where = graph.op("And", graph.op("Unsqueeze", zero, "axis1"), "guided_column")
        return graph.op("Where", where, graph.op("Unsqueeze", rescaled, "axis1"), z)

    def _transform_nodes(self, graph: OnnxGraph, y: str) -> str:
        t = self.transform
        out = y
        if any(t.get(p) is not None for p in ("p0", "p1", "p2")):
            out = graph.op("Mul", y, "zero")  # 0, shaped as y
            if t.get("p0") is not None:
                out = graph.op("Add", out, graph.constant("t_p0", [t["p0"]]))
            if t.get("p1") is not None:
                out = graph.op("Add", out, graph.op("Mul", graph.constant("t_p1", [t["p1"]]), y))
            if t.get("p2") is not None:
                out = graph.op("Add", out, graph.op("Mul", graph.op("Mul", graph.constant("t_p2", [t["p2"]]), y), y))
        if t.get("out_lte_in") == "true":
            out = graph.op("Min", out, y)
        if t.get("out_gte_in") == "true":
            out = graph.op("Max", out, y)
        return out


class OnnxGraph:
    """Nodes and initializers of an ONNX graph under construction, each op returning its output's
    name: the teacher's graph here (float64, as libvmaf computes), the tiny models' in
    ``tinyvmaf.onnx_io`` (float32)."""

    def __init__(self, dtype: type = np.float32) -> None:
        self.dtype = dtype  # of ``constant``: the graph's float type
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray | float | list[float]) -> str:
        """An initializer of the graph's float type, made once per name (layers share an activation's)."""
        if name not in {t.name for t in self.initializers}:
            self.constants(**{name: np.asarray(value, dtype=self.dtype)})
        return name

    def constants(self, **values: np.ndarray) -> None:
        """Initializers of their own dtypes (weights, indices, masks)."""
        self.initializers += [onnx.numpy_helper.from_array(np.asarray(v), name=k) for k, v in values.items()]

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attributes: object) -> str:
        out = out or f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(onnx.helper.make_node(op_type, list(inputs), [out], **attributes))
        return out

    def model(self, name: str, feed: onnx.ValueInfoProto, result: onnx.ValueInfoProto) -> onnx.ModelProto:
        """The graph with one input and one output, at tinyvmaf's opset and IR version."""
        graph = onnx.helper.make_graph(self.nodes, name, [feed], [result], self.initializers)
        return onnx.helper.make_model(
            graph,
            opset_imports=[onnx.helper.make_opsetid("", ONNX_OPSET)],
            ir_version=ONNX_IR_VERSION,
            producer_name="tinyvmaf",
        )


@cache
def load_teacher(name: str) -> SvrTeacher:
    """A libvmaf model shipped with tinyvmaf, by name (``vmaf_v0.6.1``, ``vmaf_v1.0.16_3d0h``, ...)."""
    path = resources.files("tinyvmaf.teacher") / "libvmaf_models" / f"{name}.json"
    if not path.is_file():
        raise TinyVmafError(f"teacher {name!r}: no such libvmaf model JSON; shipped: {', '.join(shipped_teachers())}")
    return parse_model(name, json.loads(path.read_text()))


def shipped_teachers() -> list[str]:
    """The libvmaf models whose JSON ships with tinyvmaf."""
    folder = resources.files("tinyvmaf.teacher") / "libvmaf_models"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def parse_model(name: str, document: dict) -> SvrTeacher:
    model = document["model_dict"]
    if model.get("model_type") != "LIBSVMNUSVR" or model.get("norm_type") != "linear_rescale":
        raise TinyVmafError(f"teacher {name!r}: only libsvm nu-SVR models with linear_rescale are supported")
    if (model.get("score_transform") or {}).get("knots") is not None:
        raise TinyVmafError(f"teacher {name!r}: a score_transform with knots is not supported")
    header, _, body = model["model"].partition("\nSV\n")
    fields = dict(line.split(" ", 1) for line in header.splitlines())
    if fields.get("kernel_type") != "rbf":
        raise TinyVmafError(f"teacher {name!r}: kernel {fields.get('kernel_type')} is not supported")
    n_features = len(model["slopes"]) - 1
    coefficients, vectors = [], []
    for line in body.strip().splitlines():
        coef, *pairs = line.split()
        coefficients.append(float(coef))
        values = dict(p.split(":") for p in pairs)
        vectors.append([float(values.get(str(i + 1), 0.0)) for i in range(n_features)])
    columns, domain = _inputs(name, model)
    return SvrTeacher(
        name=name,
        feature_columns=columns,
        slopes=np.array(model["slopes"], dtype=np.float64),
        intercepts=np.array(model["intercepts"], dtype=np.float64),
        support_vectors=np.array(vectors),
        coefficients=np.array(coefficients),
        gamma=float(fields["gamma"]),
        rho=float(fields["rho"]),
        clip=tuple(float(v) for v in model.get("score_clip", (-np.inf, np.inf))),
        transform=model.get("score_transform"),
        domain=domain,
        chroma_correction=_chroma_correction(name, model),
    )


def _inputs(name: str, model: dict) -> tuple[tuple[str, ...], tuple[np.ndarray, np.ndarray]]:
    """The log names of the model's inputs and their valid box: the six v0 features
    (``integer_adm2``, or ``integer_adm2_egl_1`` for neg), or a v1.0.16 model's four."""
    if name in V1_FEATURE_COLUMNS:
        ceilings = [
            float(opts.get(key, 1.0)) for key, opts in zip(_V1_CEILINGS, model["feature_opts_dicts"], strict=True)
        ]
        return V1_FEATURE_COLUMNS[name], (np.zeros(4), np.array(ceilings))
    options = model.get("feature_opts_dicts") or [{}] * len(FEATURE_NAMES)
    if len(options) != len(FEATURE_NAMES) or len(model["slopes"]) != len(FEATURE_NAMES) + 1:
        raise TinyVmafError(f"teacher {name!r}: neither vmaf_v0.6.1's six features nor a known v1.0.16 model's four")
    columns = []
    for base, opts in zip(FEATURE_NAMES, options, strict=True):
        suffix = "".join(_VARIANTS[k].format(v) for k, v in opts.items() if k in _VARIANTS)
        columns.append(base + suffix)
    return tuple(columns), (DOMAIN_LOW, DOMAIN_HIGH)


def _chroma_correction(name: str, model: dict) -> tuple[float, int, int] | None:
    """libvmaf finds the guiding and guided features by the substrings adm3 and speed_chroma."""
    c = model.get("chroma_correction_parameter")
    if not c:
        return None
    names = model["feature_names"]
    guiding = [i for i, n in enumerate(names) if "adm3" in n]
    guided = [i for i, n in enumerate(names) if "speed_chroma" in n]
    if len(guiding) != 1 or len(guided) != 1:
        raise TinyVmafError(
            f"teacher {name!r}: chroma_correction_parameter needs one adm3 and one speed_chroma feature"
        )
    return float(c), guiding[0], guided[0]


def student_inputs(teacher: str) -> tuple[str, ...]:
    """The libvmaf features a tiny stand-in of ``teacher`` reads: a v1.0.16 model's own four; for
    the v0.6.1 family the six plain features, vmaf_v0.6.1neg's stand-ins too (as shipped)."""
    return V1_FEATURE_COLUMNS.get(teacher, FEATURE_NAMES)


def domain_points(
    grid_steps: int, n_random: int, seed: int, low: np.ndarray = DOMAIN_LOW, high: np.ndarray = DOMAIN_HIGH
) -> np.ndarray:
    """A ``grid_steps``^F grid over the box (faces and corners included), then ``n_random`` uniform
    points; vmaf_v0.6.1's box unless another is given."""
    axes = [np.linspace(lo, hi, grid_steps) for lo, hi in zip(low, high)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(low))
    random = np.random.default_rng(seed).uniform(low, high, size=(n_random, len(low)))
    return np.concatenate([grid, random])
