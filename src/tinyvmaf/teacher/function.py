"""The teacher as code: a libvmaf model JSON evaluated from the six features, batched in numpy.

libvmaf's vmaf_v0.6.1 (and its neg and 4k siblings) rescales each feature linearly
(``norm_type: linear_rescale``; index 0 of ``slopes``/``intercepts`` is the score, 1..6 the
features), applies a libsvm nu-SVR with an RBF kernel, maps the result back to the VMAF scale
and clips it to ``score_clip``. ``score_transform`` applies only when asked for, as in libvmaf.
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

# The box of valid feature values, FEATURE_NAMES order: adm2 and vif in [0, 1], motion2 up to
# ~100 (synthetic and sports content reach 80). The extrapolation guard is checked over it.
DOMAIN_LOW = np.zeros(len(FEATURE_NAMES))
DOMAIN_HIGH = np.array([1.0, 100.0, 1.0, 1.0, 1.0, 1.0])

# Every ONNX graph tinyvmaf writes (this teacher's and the tiny models'): opset 17, IR version 8,
# which ONNX Runtime reads from 1.11 on.
ONNX_OPSET = 17
ONNX_IR_VERSION = 8
# Where they run: these graphs are microseconds of arithmetic per frame, so the CPU runs them, and a
# file that asks for a GPU provider these machines lack only earns a warning per load.
ONNX_PROVIDERS = ["CPUExecutionProvider"]

# libvmaf's options that select a variant of a feature, and how its JSON log names that variant.
_VARIANTS = {"adm_enhn_gain_limit": "_egl_{:g}", "vif_enhn_gain_limit": "_egl_{:g}"}


@dataclass(frozen=True)
class SvrTeacher:
    name: str
    feature_columns: tuple[str, ...]  # libvmaf log names of the six inputs, FEATURE_NAMES order
    slopes: np.ndarray
    intercepts: np.ndarray
    support_vectors: np.ndarray  # [n_sv, 6], in the rescaled space
    coefficients: np.ndarray  # [n_sv]
    gamma: float
    rho: float
    clip: tuple[float, float]
    transform: dict | None

    def __call__(self, features: np.ndarray, enable_transform: bool = False, chunk: int = 4096) -> np.ndarray:
        """vmaf scores of ``features`` [N, 6] (raw libvmaf values, ``feature_columns`` order)."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != len(FEATURE_NAMES):
            raise TinyVmafError(
                f"teacher {self.name}: features must be [N, {len(FEATURE_NAMES)}], got {list(features.shape)}"
            )
        return np.concatenate(
            [self._score(features[i : i + chunk], enable_transform) for i in range(0, len(features), chunk)]
            or [np.zeros(0)]
        )

    def _score(self, x: np.ndarray, enable_transform: bool) -> np.ndarray:
        z = x * self.slopes[1:] + self.intercepts[1:]
        # ||z - sv||^2 expanded, in place on one chunk-sized buffer that stays in cache.
        kernel = z @ (-2.0 * self.support_vectors.T)
        kernel += (z * z).sum(1)[:, None]
        kernel += (self.support_vectors**2).sum(1)[None, :]
        np.maximum(kernel, 0.0, out=kernel)
        kernel *= -self.gamma
        np.exp(kernel, out=kernel)
        svr = kernel @ self.coefficients - self.rho
        score = (svr - self.intercepts[0]) / self.slopes[0]
        if enable_transform and self.transform:
            t = self.transform
            transformed = t.get("p0", 0.0) + t.get("p1", 0.0) * score + t.get("p2", 0.0) * score**2
            score = (
                np.maximum(transformed, score) if str(t.get("out_gte_in", "false")).lower() == "true" else transformed
            )
        return np.clip(score, *self.clip)

    @property
    def n_params(self) -> int:
        """Every number the model holds: support vectors, coefficients, rescaling, gamma and rho."""
        return self.support_vectors.size + self.coefficients.size + self.slopes.size + self.intercepts.size + 2

    def onnx_graph(self) -> onnx.ModelProto:
        """This model as one self-contained ONNX graph with the tiny models' contract: ``features``
        float32 [N, 6] (``feature_columns`` order) -> ``vmaf`` float32 [N], any N. Inside, in float64
        as in libvmaf: the feature rescale, the RBF SVR over the support vectors (the squared distance
        expanded, as in ``_score``), the score's denormalisation and the clip. ``score_transform`` is
        left out, as libvmaf does unless asked."""
        sv = self.support_vectors
        constants = {
            "slopes": self.slopes[1:], "intercepts": self.intercepts[1:], "sv_t": -2.0 * sv.T,
            "sv_sq": (sv**2).sum(1)[None, :], "zero": np.zeros(1), "minus_gamma": np.array([-self.gamma]),
            "coef": self.coefficients[:, None], "rho": np.array([self.rho]),
            "score_intercept": np.array([self.intercepts[0]]), "score_slope": np.array([self.slopes[0]]),
            "low": np.array([self.clip[0]]), "high": np.array([self.clip[1]]), "axis1": np.array([1], dtype=np.int64),
        }  # fmt: skip
        node = onnx.helper.make_node
        nodes = [
            node("Cast", ["features"], ["x"], to=onnx.TensorProto.DOUBLE),
            node("Mul", ["x", "slopes"], ["x_scaled"]),
            node("Add", ["x_scaled", "intercepts"], ["z"]),
            node("Mul", ["z", "z"], ["z_sq"]),
            node("ReduceSum", ["z_sq", "axis1"], ["z_norm"], keepdims=1),
            node("MatMul", ["z", "sv_t"], ["cross"]),
            node("Add", ["cross", "z_norm"], ["d0"]),
            node("Add", ["d0", "sv_sq"], ["d1"]),
            node("Max", ["d1", "zero"], ["distance"]),  # rounding can take a zero distance below 0
            node("Mul", ["distance", "minus_gamma"], ["exponent"]),
            node("Exp", ["exponent"], ["kernel"]),
            node("MatMul", ["kernel", "coef"], ["weighted"]),
            node("Squeeze", ["weighted", "axis1"], ["svr0"]),
            node("Sub", ["svr0", "rho"], ["svr"]),
            node("Sub", ["svr", "score_intercept"], ["s0"]),
            node("Div", ["s0", "score_slope"], ["score"]),
            node("Max", ["score", "low"], ["s1"]),
            node("Min", ["s1", "high"], ["clipped"]),
            node("Cast", ["clipped"], ["vmaf"], to=onnx.TensorProto.FLOAT),
        ]
        graph = onnx.helper.make_graph(
            nodes,
            self.name,
            [onnx.helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["batch", len(FEATURE_NAMES)])],
            [onnx.helper.make_tensor_value_info("vmaf", onnx.TensorProto.FLOAT, ["batch"])],
            [onnx.numpy_helper.from_array(np.asarray(v), name=k) for k, v in constants.items()],
        )
        model = onnx.helper.make_model(
            graph,
            opset_imports=[onnx.helper.make_opsetid("", ONNX_OPSET)],
            ir_version=ONNX_IR_VERSION,
            producer_name="tinyvmaf",
        )
        onnx.checker.check_model(model, full_check=True)
        return model


@cache
def load_teacher(name: str) -> SvrTeacher:
    """A libvmaf model shipped with tinyvmaf, by name (``vmaf_v0.6.1``, ``vmaf_v0.6.1neg``, ...)."""
    path = resources.files("tinyvmaf.teacher") / "libvmaf_models" / f"{name}.json"
    if not path.is_file():
        shipped = sorted(
            p.name.removesuffix(".json")
            for p in (resources.files("tinyvmaf.teacher") / "libvmaf_models").iterdir()
            if p.name.endswith(".json")
        )
        raise TinyVmafError(f"teacher {name!r}: no such libvmaf model JSON; shipped: {', '.join(shipped)}")
    return parse_model(name, json.loads(path.read_text()))


def parse_model(name: str, document: dict) -> SvrTeacher:
    model = document["model_dict"]
    if model.get("model_type") != "LIBSVMNUSVR" or model.get("norm_type") != "linear_rescale":
        raise TinyVmafError(f"teacher {name!r}: only libsvm nu-SVR models with linear_rescale are supported")
    header, _, body = model["model"].partition("\nSV\n")
    fields = dict(line.split(" ", 1) for line in header.splitlines())
    if fields.get("kernel_type") != "rbf":
        raise TinyVmafError(f"teacher {name!r}: kernel {fields.get('kernel_type')} is not supported")
    coefficients, vectors = [], []
    for line in body.strip().splitlines():
        coef, *pairs = line.split()
        coefficients.append(float(coef))
        values = dict(p.split(":") for p in pairs)
        vectors.append([float(values.get(str(i + 1), 0.0)) for i in range(len(FEATURE_NAMES))])
    return SvrTeacher(
        name=name,
        feature_columns=_feature_columns(model),
        slopes=np.array(model["slopes"], dtype=np.float64),
        intercepts=np.array(model["intercepts"], dtype=np.float64),
        support_vectors=np.array(vectors),
        coefficients=np.array(coefficients),
        gamma=float(fields["gamma"]),
        rho=float(fields["rho"]),
        clip=tuple(model.get("score_clip", (-np.inf, np.inf))),
        transform=model.get("score_transform"),
    )


def _feature_columns(model: dict) -> tuple[str, ...]:
    """The log names of the model's inputs: ``integer_adm2``, or ``integer_adm2_egl_1`` for neg."""
    options = model.get("feature_opts_dicts") or [{}] * len(FEATURE_NAMES)
    columns = []
    for base, opts in zip(FEATURE_NAMES, options, strict=True):
        suffix = "".join(_VARIANTS[k].format(v) for k, v in opts.items() if k in _VARIANTS)
        columns.append(base + suffix)
    return tuple(columns)


def domain_points(grid_steps: int, n_random: int, seed: int) -> np.ndarray:
    """A ``grid_steps``^6 grid over the valid box (faces and corners included), then ``n_random`` uniform points."""
    axes = [np.linspace(lo, hi, grid_steps) for lo, hi in zip(DOMAIN_LOW, DOMAIN_HIGH)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(FEATURE_NAMES))
    random = np.random.default_rng(seed).uniform(DOMAIN_LOW, DOMAIN_HIGH, size=(n_random, len(FEATURE_NAMES)))
    return np.concatenate([grid, random])
