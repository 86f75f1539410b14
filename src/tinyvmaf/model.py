"""Tiny VMAF models: an MLP (or linear map) on standardized libvmaf features, and its LightningModule.

The standardization sits inside the model as buffers (not parameters), so a model takes raw
libvmaf features and returns VMAF-scale scores; ``n_params`` counts the trainable weights only.

A LOSO of K folds can also train as one stacked network (``StackedTinyVmafModule``): the
weights of every fold side by side in one ``[K, P]`` parameter, batched matrix products, and
``StackedAdamW``, which updates each fold's slice as ``torch.optim.AdamW`` and its schedule
would update a separate run's weights.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torchmetrics import MetricCollection

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.features import MOTION, Standardization, transform_features
from tinyvmaf.teacher import FEATURE_NAMES
from tinyvmaf.teacher.function import ONNX_IR_VERSION, ONNX_OPSET

N_FEATURES = len(FEATURE_NAMES)
VMAF_RANGE = (0.0, 100.0)  # the shipped graph clips to it; the censored loss knows it
ONNX_TOLERANCE = 1e-4  # VMAF points: ONNX Runtime against torch on real frames, on every export


def mlp(hidden: list[int], activation: str = "ReLU") -> nn.Sequential:
    """6 -> hidden... -> 1; ``hidden=[]`` is the 7-parameter linear control."""
    layers: list[nn.Module] = []
    width = N_FEATURES
    for size in hidden:
        layers += [nn.Linear(width, size), getattr(nn, activation)()]
        width = size
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def activation_name(net: nn.Module) -> str:
    """The hidden layers' activation, ``none`` for the linear control."""
    return next(
        (type(m).__name__ for m in net.modules() if not isinstance(m, (nn.Linear, nn.Sequential))),
        "none",
    )


class VmafNet(nn.Module):
    """Raw features -> standardize -> net -> de-standardize. ``forward`` is unclipped (for the loss)."""

    def __init__(self, net: nn.Module, log_motion: bool = False) -> None:
        super().__init__()
        self.net = net
        self.log_motion = log_motion
        self.register_buffer("feature_mean", torch.zeros(N_FEATURES))
        self.register_buffer("feature_std", torch.ones(N_FEATURES))
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))

    def set_standardization(self, s: Standardization) -> None:
        self.feature_mean.copy_(torch.as_tensor(s.feature_mean))
        self.feature_std.copy_(torch.as_tensor(s.feature_std))
        self.target_mean.fill_(s.target_mean)
        self.target_std.fill_(s.target_std)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (transform_features(features, self.log_motion) - self.feature_mean) / self.feature_std
        return self.net(z).squeeze(-1) * self.target_std + self.target_mean

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Scores as shipped: clipped to the VMAF range [0, 100]."""
        return self.forward(features).clamp(*VMAF_RANGE)


class CensoredMSELoss(nn.modules.loss._Loss):
    """MSE that knows both teacher and model are clipped to ``VMAF_RANGE``.

    Where the teacher sits on a bound and the prediction lies beyond it, the clipped prediction
    is exact, so that residual counts zero: the net need not pin every "worse than 0" or "better
    than 100" feature vector to the bound, and spends its few weights where scores vary.
    ``reduction`` as in torch's losses (stacked folds take it per element).
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        self.low, self.high = VMAF_RANGE

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        beyond = ((target <= self.low) & (prediction <= self.low)) | ((target >= self.high) & (prediction >= self.high))
        squared = (prediction - target).masked_fill(beyond, 0.0).square()
        return squared.mean() if self.reduction == "mean" else squared


# --- ONNX, written from the weights -------------------------------------------------------------


class _OnnxGraph:
    """Nodes and initializers of a graph under construction; each op returns its output's name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray | float) -> str:
        """A float32 initializer; an activation's constants are shared by every layer that uses it."""
        if name not in {t.name for t in self.initializers}:
            self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def op(self, op_type: str, *inputs: str, **attributes: object) -> str:
        output = f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output


def _gelu(g: _OnnxGraph, x: str, m: nn.GELU) -> str:
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


def _softplus(g: _OnnxGraph, x: str, beta: float) -> str:
    if beta == 1:
        return g.op("Softplus", x)
    b = g.constant(f"softplus_beta_{len(g.nodes)}", beta)
    return g.op("Div", g.op("Softplus", g.op("Mul", x, b)), b)


def _clip(g: _OnnxGraph, x: str, low: float, high: float) -> str:
    n = len(g.nodes)
    return g.op("Clip", x, g.constant(f"clip_low_{n}", low), g.constant(f"clip_high_{n}", high))


# torch's activation modules and their ONNX forms (torch's Softplus threshold is below float32 resolution)
ONNX_ACTIVATIONS: dict[type[nn.Module], Callable[[_OnnxGraph, str, nn.Module], str]] = {
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


def _onnx_layers(g: _OnnxGraph, x: str, net: nn.Module) -> str:
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
    each input column holds (a permutation of ``FEATURE_NAMES``), and the output's shape."""

    input: str = "features"
    output: str = "vmaf"
    features: tuple[str, ...] = FEATURE_NAMES
    column_output: bool = False  # [N, 1] rather than [N]

    def inputs_from(self, features: np.ndarray) -> np.ndarray:
        """Frames in ``FEATURE_NAMES`` order, as this contract's input takes them."""
        columns = [FEATURE_NAMES.index(f) for f in self.features]
        return np.ascontiguousarray(features[:, columns], dtype=np.float32)


TINYVMAF_CONTRACT = OnnxContract()


def onnx_graph(model: VmafNet, contract: OnnxContract = TINYVMAF_CONTRACT) -> onnx.ModelProto:
    """The clipped model as one self-contained ONNX graph, [N, 6] -> [N] (or [N, 1]), any N,
    written from the weights: the optional log of motion2, standardize, Gemm + activation per layer,
    de-standardize, clip to the VMAF range. Another column order is one Gather back to
    ``FEATURE_NAMES`` order first, so every score is bit for bit the standard graph's."""
    g = _OnnxGraph()
    x = contract.input
    if contract.features != FEATURE_NAMES:
        order = np.array([contract.features.index(f) for f in FEATURE_NAMES], dtype=np.int64)
        g.initializers.append(numpy_helper.from_array(order, "feature_order"))
        x = g.op("Gather", x, "feature_order", axis=1)
    if model.log_motion:  # log1p(max(motion2, 0)) in motion2's column, the others as they are
        mask = np.arange(N_FEATURES) == MOTION
        logged = g.op("Log", g.op("Add", g.op("Max", x, g.constant("zero", 0.0)), g.constant("one", 1.0)))
        g.initializers.append(numpy_helper.from_array(mask, "motion_column"))
        x = g.op("Where", "motion_column", logged, x)
    x = g.op("Div", g.op("Sub", x, g.constant("feature_mean", model.feature_mean.cpu().numpy())),
             g.constant("feature_std", model.feature_std.cpu().numpy()))  # fmt: skip
    x = _onnx_layers(g, x, model.net)
    x = g.op("Add", g.op("Mul", x, g.constant("target_std", model.target_std.cpu().numpy().reshape(1))),
             g.constant("target_mean", model.target_mean.cpu().numpy().reshape(1)))  # fmt: skip
    x = _clip(g, x, *VMAF_RANGE)
    shape = ["batch", 1] if contract.column_output else ["batch"]
    g.initializers.append(numpy_helper.from_array(np.array([-1, 1] if contract.column_output else [-1]), "shape"))
    g.nodes.append(helper.make_node("Reshape", [x, "shape"], [contract.output]))
    graph = helper.make_graph(
        g.nodes,
        "tinyvmaf",
        [helper.make_tensor_value_info(contract.input, TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info(contract.output, TensorProto.FLOAT, shape)],
        g.initializers,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=ONNX_IR_VERSION, producer_name="tinyvmaf"
    )


def check_graph(
    graph: onnx.ModelProto | Path, model: VmafNet, features: np.ndarray, contract: OnnxContract = TINYVMAF_CONTRACT
) -> float:
    """``onnx.checker``, then ONNX Runtime against the torch module on ``features`` (real frames,
    in ``FEATURE_NAMES`` order, fed in the contract's); returns the max |difference|, which must
    stay within ``ONNX_TOLERANCE``."""
    onnx.checker.check_model(graph if isinstance(graph, onnx.ModelProto) else str(graph), full_check=True)
    source = graph.SerializeToString() if isinstance(graph, onnx.ModelProto) else str(graph)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    x = np.asarray(features, dtype=np.float32)
    got = session.run([contract.output], {contract.input: contract.inputs_from(x)})[0]
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


def model_from_weights(state: object, activation: object, log_motion: object, what: str) -> VmafNet:
    """A ``VmafNet`` rebuilt from a state dict read from someone else's file, never from a config
    read with it: the layers from the weights' shapes (6 -> ... -> 1, each width the next's input),
    the activation by name from the ones tinyvmaf writes as ONNX, every tensor float and finite."""
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise TinyVmafError(f"{what}: not a tinyvmaf model (no state dict of tensors)")
    known = {cls.__name__: cls for cls in ONNX_ACTIVATIONS}
    if activation not in (*known, "none"):
        raise TinyVmafError(f"{what}: activation {activation!r:.40} is not one of {', '.join(sorted(known))}")
    if not isinstance(log_motion, bool):
        raise TinyVmafError(f"{what}: log_motion is {log_motion!r:.40}, not true or false")
    weights = sorted((int(k.split(".")[1]), v) for k, v in state.items() if re.fullmatch(r"net\.\d{1,3}\.weight", k))
    widths = [N_FEATURES]
    for index, (layer, w) in enumerate(weights):
        if layer != 2 * index or w.dim() != 2 or w.shape[1] != widths[-1] or not 0 < w.shape[0] <= 4096:
            raise TinyVmafError(f"{what}: layer net.{layer} of shape {tuple(w.shape)} does not continue a 6-input MLP")
        widths.append(int(w.shape[0]))
    if widths[-1] != 1 or len(widths) < 2 or (activation == "none") != (len(widths) == 2):
        raise TinyVmafError(f"{what}: the weights {widths} are not a 6 -> ... -> 1 MLP with activation {activation}")
    model = VmafNet(mlp(widths[1:-1], activation if activation != "none" else "ReLU"), log_motion)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise TinyVmafError(f"{what}: its tensors do not fit the model ({' '.join(str(exc).split())[:200]})") from None
    if not all(torch.isfinite(t).all() for t in model.state_dict().values()):
        raise TinyVmafError(f"{what}: holds non-finite weights or standardization")
    return model.float()


# --- one fold --------------------------------------------------------------------------------------


def _nonfinite_loss(loss: torch.Tensor, epoch: int) -> TinyVmafError:
    return TinyVmafError(f"the training loss became {loss.item()} at epoch {epoch}; lower model.optimizer.lr")


class TinyVmafModule(L.LightningModule):
    """``loss`` (VMAF units in, e.g. CensoredMSELoss) on the teacher score; held-out PLCC/SROCC/RMSE each epoch through ``metrics``."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        log_motion: bool = False,
        loss: nn.Module | None = None,
        heldout_metrics: MetricCollection | None = None,
    ) -> None:
        super().__init__()
        self.model = VmafNet(net, log_motion)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.loss = loss if loss is not None else CensoredMSELoss()
        # Manual optimization: Lightning's automatic loop (closures, hooks) costs more per step
        # than the arithmetic of a 257-parameter MLP.
        self.automatic_optimization = False
        # Module state, so that it moves with the module to the Trainer's device (trainer=gpu).
        self.heldout_metrics = heldout_metrics if heldout_metrics is not None else MetricCollection({})
        self.register_buffer("train_loss_sum", torch.zeros(1), persistent=False)
        self.register_buffer("train_batches", torch.zeros(1), persistent=False)

    @property
    def n_params(self) -> int:
        return count_params(self.model)

    @property
    def activation(self) -> str:
        return activation_name(self.model.net)

    @property
    def fold_metrics(self) -> list[MetricCollection]:
        """The held-out metrics of each fold trained (one here)."""
        return [self.heldout_metrics]

    def setup(self, stage: str) -> None:
        self.model.set_standardization(self.trainer.datamodule.standardization)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """One optimizer step per mini-batch of the ``minibatches_per_step`` the data module hands over."""
        optimizer = self.optimizers(use_pl_optimizer=False)
        scheduler = self.lr_schedulers() if self.scheduler_factory is not None else None
        m = self.model
        size = self.trainer.datamodule.batch_size
        for x, y in zip(*(t.split(size) for t in batch)):
            optimizer.zero_grad(set_to_none=True)
            # Divided by the target's variance: lr then means the same for every teacher.
            loss = self.loss(m(x), y) / m.target_std.square()
            if not torch.isfinite(loss):
                raise _nonfinite_loss(loss, self.current_epoch)
            loss.backward()  # single-device fp32: nothing for Lightning's precision plugins to do
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            # Summed here, averaged per epoch by the metrics callback: self.log costs ~2 ms a step.
            self.train_loss_sum += loss.detach()
            self.train_batches += 1

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.heldout_metrics.update(self.model.predict(x).double(), y.double())

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        total = self.trainer.max_epochs * self.trainer.datamodule.minibatches_per_epoch
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": self.scheduler_factory(optimizer, total_steps=int(total)),
                "interval": "step",
            },
        }


# --- every fold at once --------------------------------------------------------------------------


class StackedNet(nn.Module):
    """K copies of one network (``nn.Linear`` layers and parameter-free activations), side by
    side: fold k's weights are row k of one ``[K, P]`` parameter, each layer a batched product."""

    def __init__(self, net: nn.Module, folds: int) -> None:
        super().__init__()
        layers = list(net) if isinstance(net, nn.Sequential) else [net]
        for layer in layers:
            if not isinstance(layer, nn.Linear) and any(True for _ in layer.parameters()):
                raise TinyVmafError(f"arch.net: layer {type(layer).__name__} has weights: only nn.Linear layers stack")
        self.layers = nn.ModuleList(copy.deepcopy(layers))  # the template: its weights are not trained
        for p in self.layers.parameters():
            p.requires_grad_(False)
        flat = [
            t.detach().reshape(-1)
            for layer in layers
            if isinstance(layer, nn.Linear)
            for t in (layer.weight, layer.bias)
        ]
        self.weights = nn.Parameter(torch.cat(flat).repeat(folds, 1))  # every fold starts from the same init

    def _linear_views(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each Linear's weight [K, out, in] and bias [K, 1, out], as views of ``weights`` (one split: one autograd node)."""
        linears = [layer for layer in self.layers if isinstance(layer, nn.Linear)]
        sizes = [n for layer in linears for n in (layer.out_features * layer.in_features, layer.out_features)]
        parts = self.weights.split(sizes, dim=1)
        k = len(self.weights)
        return [
            (
                parts[2 * i].view(k, layer.out_features, layer.in_features),
                parts[2 * i + 1].view(k, 1, layer.out_features),
            )
            for i, layer in enumerate(linears)
        ]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[K, B, in] -> [K, B, out]."""
        views = iter(self._linear_views())
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                w, b = next(views)
                z = torch.baddbmm(b, z, w.transpose(1, 2))
            else:
                z = layer(z)
        return z

    def fold(self, k: int) -> nn.Sequential:
        """Fold k's network as the plain module a separate run trains."""
        net = nn.Sequential(*copy.deepcopy(list(self.layers)))
        linears = [m for m in net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for layer, (w, b) in zip(linears, self._linear_views()):
                layer.weight.copy_(w[k])
                layer.bias.copy_(b[k, 0])
                layer.requires_grad_(True)
        return net


class StackedVmafNet(nn.Module):
    """``VmafNet`` for K folds at once: [K, B, 6] raw features -> [K, B] scores, each fold with its own standardization."""

    def __init__(self, net: nn.Module, folds: int, log_motion: bool = False) -> None:
        super().__init__()
        self.net = StackedNet(net, folds)
        self.log_motion = log_motion
        self.register_buffer("feature_mean", torch.zeros(folds, 1, N_FEATURES))
        self.register_buffer("feature_std", torch.ones(folds, 1, N_FEATURES))
        self.register_buffer("target_mean", torch.zeros(folds, 1))
        self.register_buffer("target_std", torch.ones(folds, 1))

    def set_standardization(self, folds: list[Standardization]) -> None:
        for k, s in enumerate(folds):
            self.feature_mean[k, 0] = torch.as_tensor(s.feature_mean)
            self.feature_std[k, 0] = torch.as_tensor(s.feature_std)
            self.target_mean[k] = s.target_mean
            self.target_std[k] = s.target_std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (transform_features(features, self.log_motion) - self.feature_mean) / self.feature_std
        return self.net(z).squeeze(-1) * self.target_std + self.target_mean

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.forward(features).clamp(*VMAF_RANGE)

    def fold(self, k: int) -> VmafNet:
        """Fold k as the ``VmafNet`` its separate run would have trained."""
        model = VmafNet(self.net.fold(k), self.log_motion).to(self.feature_mean.device)
        model.feature_mean.copy_(self.feature_mean[k, 0])
        model.feature_std.copy_(self.feature_std[k, 0])
        model.target_mean.copy_(self.target_mean[k, 0])
        model.target_std.copy_(self.target_std[k, 0])
        return model


def _schedule(
    optimizer: Callable[..., torch.optim.Optimizer],
    scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None,
    total_steps: int,
) -> np.ndarray:
    """[total_steps, 3]: lr, beta1, beta2 of each step, as the configured AdamW and schedule of a
    separate run of ``total_steps`` steps set them (asked of the real torch objects, on a probe)."""
    probe = optimizer([torch.zeros(1, requires_grad=True)])
    group = probe.param_groups[0]
    schedule = scheduler(probe, total_steps=total_steps) if scheduler is not None else None
    rows = np.empty((total_steps, 3))
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": the probe never learns
        warnings.simplefilter("ignore", UserWarning)
        for t in range(total_steps):
            rows[t] = group["lr"], *group["betas"]
            if schedule is not None and t + 1 < total_steps:
                schedule.step()
    return rows


# The per-step coefficients of AdamW's update, and those that leave a fold untouched.
_DECAY, _MOMENT1, _BETA2, _MOMENT2, _STEP_SIZE, _RMS_SCALE = range(6)
_UNTOUCHED = (1.0, 0.0, 1.0, 0.0, 0.0, 1.0)


def _coefficients(schedule: np.ndarray, weight_decay: float) -> np.ndarray:
    """[T, 6] per step of a schedule, computed in float64 as torch's AdamW computes its scalars:
    decay 1 - lr*wd, moment weights 1 - beta1, beta2, 1 - beta2, step size lr / (1 - beta1^t) and
    1 / sqrt(1 - beta2^t)."""
    lr, beta1, beta2 = schedule.T
    count = np.arange(1, len(schedule) + 1)
    return np.stack(
        [1 - lr * weight_decay, 1 - beta1, beta2, 1 - beta2, lr / (1 - beta1**count), 1 / np.sqrt(1 - beta2**count)],
        axis=1,
    )


class StackedAdamW(torch.optim.Optimizer):
    """``torch.optim.AdamW`` (and its lr schedule) for each fold of a stacked ``[K, P]`` parameter.

    Fold k's row is updated with AdamW's arithmetic at its own step count, lr and betas, so it
    follows the trajectory of a separate run; ``step(active)`` leaves the folds whose epoch is
    over (fewer training frames, fewer mini-batches) untouched, state and all.
    """

    def __init__(
        self,
        param: nn.Parameter,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None,
        total_steps: list[int],
    ) -> None:
        probe = optimizer([torch.zeros(1, requires_grad=True)])
        group = probe.param_groups[0]
        if type(probe) is not torch.optim.AdamW or group["amsgrad"] or group["maximize"]:
            raise TinyVmafError(
                f"model.optimizer={type(probe).__name__}: stacked folds train with AdamW (no amsgrad, no maximize); "
                "set stack_folds=false to train the folds one after the other"
            )
        super().__init__([param], {"eps": group["eps"]})
        tables = {t: _coefficients(_schedule(optimizer, scheduler, t), group["weight_decay"]) for t in set(total_steps)}
        longest = max(total_steps)
        # A fold past its last step (never asked for: it is inactive then) repeats its last row.
        table = np.stack([np.pad(tables[t], ((0, longest - t), (0, 0)), mode="edge") for t in total_steps])
        self.table = torch.as_tensor(table, dtype=param.dtype, device=param.device)  # [K, T, 6]
        self.untouched = torch.tensor(_UNTOUCHED, dtype=param.dtype, device=param.device)
        self.folds = torch.arange(len(total_steps), device=param.device)
        self.state[param] = {
            "step": torch.zeros(len(total_steps), dtype=torch.long, device=param.device),
            "exp_avg": torch.zeros_like(param),
            "exp_avg_sq": torch.zeros_like(param),
        }

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:  # type: ignore[override]
        param = self.param_groups[0]["params"][0]
        state = self.state[param]
        steps, m, v, grad = state["step"], state["exp_avg"], state["exp_avg_sq"], param.grad
        c = torch.where(
            active[:, None], self.table[self.folds, steps.clamp(max=self.table.shape[1] - 1)], self.untouched
        )
        c = c.T[:, :, None]  # [6, K, 1]: one column of coefficients per fold
        param.mul_(c[_DECAY])
        m.lerp_(grad, c[_MOMENT1])
        v.mul_(c[_BETA2]).add_(grad.square().mul_(c[_MOMENT2]))
        param.addcdiv_(m * c[_STEP_SIZE], v.sqrt().mul_(c[_RMS_SCALE]).add_(self.param_groups[0]["eps"]), value=-1.0)
        steps += active


class StackedTinyVmafModule(L.LightningModule):
    """Every fold of a LOSO at once: ``module``'s network, optimizer, schedule, loss and held-out
    metrics, one copy per fold. Batches come from ``StackedLosoDataModule``: [K, B] rows with a
    weight of 1 for real rows and 0 for the padding of folds with fewer rows."""

    def __init__(self, module: TinyVmafModule, folds: int) -> None:
        super().__init__()
        self.model = StackedVmafNet(module.model.net, folds, module.model.log_motion)
        self.optimizer_factory = module.optimizer_factory
        self.scheduler_factory = module.scheduler_factory
        if not isinstance(module.loss, nn.modules.loss._Loss):
            raise TinyVmafError(
                f"model.loss={type(module.loss).__name__}: stacked folds need a torch loss with `reduction`"
            )
        self.loss = copy.deepcopy(module.loss)
        self.loss.reduction = "none"  # each fold's mean over its own rows, padding left out
        self.automatic_optimization = False
        self.heldout_metrics = nn.ModuleList([module.heldout_metrics.clone() for _ in range(folds)])
        self.register_buffer("train_loss_sum", torch.zeros(folds), persistent=False)
        self.register_buffer("train_batches", torch.zeros(folds), persistent=False)

    @property
    def fold_metrics(self) -> list[MetricCollection]:
        return list(self.heldout_metrics)

    def setup(self, stage: str) -> None:
        self.model.set_standardization(self.trainer.datamodule.standardizations)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        optimizer = self.optimizers(use_pl_optimizer=False)
        m = self.model
        size = self.trainer.datamodule.batch_size
        for x, y, weight in zip(*(t.split(size, dim=1) for t in batch)):
            rows = weight.sum(1)
            active = rows > 0
            optimizer.zero_grad(set_to_none=True)
            # Each fold's mean over its real rows, divided by its target's variance as a separate run's
            # loss is; padding rows (copies of real ones: finite) weigh 0.
            scale = weight / (rows.clamp(min=1) * m.target_std.squeeze(1).square())[:, None]
            per_fold = (self.loss(m(x), y) * scale).sum(1)
            loss = per_fold.sum()
            if not torch.isfinite(loss):
                raise _nonfinite_loss(loss, self.current_epoch)
            loss.backward()
            optimizer.step(active)
            self.train_loss_sum += per_fold.detach()
            self.train_batches += active

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y, weight = batch
        predicted = self.model.predict(x).double()
        for k, metrics in enumerate(self.heldout_metrics):
            rows = weight[k] > 0
            metrics.update(predicted[k, rows], y[k, rows].double())

    def configure_optimizers(self) -> StackedAdamW:
        steps = [self.trainer.max_epochs * n for n in self.trainer.datamodule.minibatches_per_epoch]
        return StackedAdamW(self.model.net.weights, self.optimizer_factory, self.scheduler_factory, steps)
