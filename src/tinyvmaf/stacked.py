"""Every fold of a LOSO trained at once, as one stacked network and its data.

The weights of every fold sit side by side in one ``[K, P]`` parameter and each layer is one
batched matrix product; ``StackedAdamW`` updates each fold's row as ``torch.optim.AdamW`` and its
schedule would update a separate run's weights, and ``StackedLosoDataModule`` hands each fold
exactly the data its own ``LosoDataModule`` holds. On the CPU an MLP's steps run in the fused
kernel (``tinyvmaf.fused``), each fold on its own; elsewhere through autograd, where at these
sizes each op costs its dispatch, not its arithmetic, so stacking the folds pays there too
(docs/benchmarks.md).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics import MetricCollection

from tinyvmaf.data import LosoDataModule
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.features import Standardization, transform_features
from tinyvmaf.fused import FusedRows, FusedSteps, fused_activation, kernel
from tinyvmaf.model import CensoredMSELoss, TinyVmafModule, VmafNet, nonfinite_loss

# --- the data: every fold's batches side by side ---


class StackedBatches:
    """Every fold's mini-batches side by side, as ``TensorBatches`` would cut them for each fold
    alone (same shuffling from the same seed, same last partial mini-batch), as row numbers into
    the folds' rows laid side by side (``rows[k]`` real rows of fold k from ``k * stride``): an
    item holds ``minibatches_per_step`` mini-batches of each fold as ``(index [K, M*B], weight
    [K, M*B])``. Past a fold's rows, its index repeats its first row with weight 0."""

    def __init__(
        self,
        rows: list[int],
        stride: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        minibatches_per_step: int = 1,
    ) -> None:
        self.rows, self.stride = rows, stride
        self.batch_size, self.shuffle, self.minibatches_per_step = batch_size, shuffle, minibatches_per_step
        self.generators = [torch.Generator().manual_seed(seed) for _ in rows]
        self.span = -(-max(rows) // batch_size) * batch_size  # rows per fold per epoch, padding included

    def __len__(self) -> int:
        return -(-self.span // (self.batch_size * self.minibatches_per_step))

    def __iter__(self):
        folds = len(self.rows)
        index = torch.zeros(folds, self.span, dtype=torch.long)
        weight = torch.zeros(folds, self.span)
        for k, (n, generator) in enumerate(zip(self.rows, self.generators)):
            index[k, :n] = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
            weight[k, :n] = 1.0
        index += torch.arange(folds)[:, None] * self.stride
        step = self.batch_size * self.minibatches_per_step
        for start in range(0, self.span, step):
            yield index[:, start : start + step], weight[:, start : start + step]


class HeldoutBatch:
    """Every fold's held-out source in one item: x [K, N, F], y [K, N], weight [K, N] (0: padding)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> None:
        self.item = (x, y, weight)

    @classmethod
    def of(cls, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> HeldoutBatch:
        """Each fold's held-out rows, side by side."""
        longest = max(len(x) for x in xs)
        weight = torch.stack([(torch.arange(longest) < len(x)).float() for x in xs])
        return cls(side_by_side(xs), side_by_side(ys), weight)

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        yield self.item


def side_by_side(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[K, N, ...]: each fold's rows, padded to the longest with copies of its first row."""
    longest = max(len(t) for t in tensors)
    return torch.stack([torch.cat([t, t[:1].expand(longest - len(t), *t.shape[1:])]) for t in tensors])


class StackedLosoDataModule(L.LightningDataModule):
    """The folds of a LOSO side by side, each one's data from its own ``LosoDataModule``
    (configured exactly as its separate run): its training and held-out sources, standardization,
    augmentation draws and shuffling."""

    def __init__(self, folds: list[LosoDataModule]) -> None:
        super().__init__()
        self.folds = folds
        first = folds[0]
        self.batch_size, self.seed, self.minibatches_per_step = first.batch_size, first.seed, first.minibatches_per_step

    def prepare_data(self) -> None:
        self.folds[0].prepare_data()  # one corpus, one cache

    def setup(self, stage: str | None = None) -> None:
        for fold in self.folds:
            fold.setup(stage)

    @property
    def standardizations(self) -> list[Standardization]:
        return [f.standardization for f in self.folds]

    @property
    def minibatches_per_epoch(self) -> list[int]:
        return [f.minibatches_per_epoch for f in self.folds]

    @property
    def train_rows(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Every fold's training rows (real, then synthetic) side by side: x [K, N, F], y [K, N],
        and each fold's number of rows."""
        xs = [torch.cat([f.train_x, f.synthetic_x]) for f in self.folds]
        ys = [torch.cat([f.train_y, f.synthetic_y]) for f in self.folds]
        return side_by_side(xs), side_by_side(ys), [len(x) for x in xs]

    def train_dataloader(self) -> StackedBatches:
        rows = [len(f.train_x) + len(f.synthetic_x) for f in self.folds]
        return StackedBatches(rows, max(rows), self.batch_size, True, self.seed, self.minibatches_per_step)

    def val_dataloader(self) -> HeldoutBatch:
        return HeldoutBatch.of([f.test_x for f in self.folds], [f.test_y for f in self.folds])


# --- the network, its optimizer and its module ---


def _layers(net: nn.Module) -> list[nn.Module]:
    return list(net) if isinstance(net, nn.Sequential) else [net]


def _probe(optimizer: Callable[..., torch.optim.Optimizer]) -> torch.optim.Optimizer:
    """The optimizer ``optimizer`` makes, on a throwaway parameter: its type and settings."""
    return optimizer([torch.zeros(1, requires_grad=True)])


def _stacks(probe: torch.optim.Optimizer) -> bool:
    """Whether StackedAdamW reproduces it: AdamW, no amsgrad, no maximize."""
    group = probe.param_groups[0]
    return type(probe) is torch.optim.AdamW and not group["amsgrad"] and not group["maximize"]


def stacks(module: TinyVmafModule) -> bool:
    """Whether ``module`` trains stacked: AdamW, a torch loss with ``reduction``, and only
    ``nn.Linear`` layers with weights. A single fold then trains as a stack of one, through the
    same (fused) step as every fold of a stacked LOSO."""
    return (
        _stacks(_probe(module.optimizer_factory))
        and isinstance(module.loss, nn.modules.loss._Loss)
        and all(isinstance(m, nn.Linear) or not any(True for _ in m.parameters()) for m in _layers(module.model.net))
    )


class StackedNet(nn.Module):
    """K copies of one network (``nn.Linear`` layers and parameter-free activations), side by
    side: fold k's weights are row k of one ``[K, P]`` parameter, each layer a batched product."""

    def __init__(self, net: nn.Module, folds: int) -> None:
        super().__init__()
        layers = _layers(net)
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
    """``VmafNet`` for K folds at once: [K, B, F] raw features -> [K, B] scores, each fold with its
    own standardization; ``like`` gives the net, inputs, motion and score range."""

    def __init__(self, like: VmafNet, folds: int) -> None:
        super().__init__()
        self.net = StackedNet(like.net, folds)
        self.log_motion, self.inputs, self.score_range, self.motion, self.chroma = (
            like.log_motion,
            like.inputs,
            like.score_range,
            like.motion,
            like.chroma,
        )
        self.register_buffer("feature_mean", torch.zeros(folds, 1, len(like.inputs)))
        self.register_buffer("feature_std", torch.ones(folds, 1, len(like.inputs)))
        self.register_buffer("target_mean", torch.zeros(folds, 1))
        self.register_buffer("target_std", torch.ones(folds, 1))

    def set_standardization(self, folds: list[Standardization]) -> None:
        for k, s in enumerate(folds):
            self.feature_mean[k, 0] = torch.as_tensor(s.feature_mean)
            self.feature_std[k, 0] = torch.as_tensor(s.feature_std)
            self.target_mean[k] = s.target_mean
            self.target_std[k] = s.target_std

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        """[K, B, F] raw features -> what each fold's net takes."""
        return (transform_features(features, self.motion, self.chroma) - self.feature_mean) / self.feature_std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardize(features)).squeeze(-1) * self.target_std + self.target_mean

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.forward(features).clamp(*self.score_range)

    def fold(self, k: int) -> VmafNet:
        """Fold k as the ``VmafNet`` its separate run would have trained."""
        model = VmafNet(self.net.fold(k), self.log_motion, self.inputs, self.score_range, self.chroma)
        model = model.to(self.feature_mean.device)
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
        probe = _probe(optimizer)
        if not _stacks(probe):
            raise TinyVmafError(
                f"model.optimizer={type(probe).__name__}: stacked folds train with AdamW (no amsgrad, no maximize); "
                "set stack_folds=false to train the folds one after the other"
            )
        group = probe.param_groups[0]
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


def fused_rows(model: StackedVmafNet, x: torch.Tensor, y: torch.Tensor, loss: nn.Module, rows: list[int]) -> FusedRows:
    """The folds' rows (x [K, N, F], y [K, N]) as the fused step reads them: standardized by each
    fold's model, with the censored loss's bounds where the teacher sits on them."""
    mean, std = model.target_mean, model.target_std
    low, high = torch.full_like(y, -math.inf), torch.full_like(y, math.inf)
    if isinstance(loss, CensoredMSELoss):
        low = torch.where(y <= loss.low, (loss.low - mean) / std, low)
        high = torch.where(y >= loss.high, (loss.high - mean) / std, high)
    z = model.standardize(x)
    return FusedRows(
        z.reshape(-1, z.shape[-1]).contiguous(),
        ((y - mean) / std).reshape(-1).contiguous(),
        low.reshape(-1).contiguous(),
        high.reshape(-1).contiguous(),
        torch.tensor(rows, dtype=torch.long),
    )


class StackedTinyVmafModule(L.LightningModule):
    """Every fold of a LOSO at once: ``module``'s network, optimizer, schedule, loss and held-out
    metrics, one copy per fold. Batches come from ``StackedLosoDataModule``: [K, B] row numbers
    into its folds' rows, with a weight of 1 for real rows and 0 for the padding of folds with
    fewer rows. On the CPU an MLP trains through the fused step (``tinyvmaf.fused``,
    ``fused=True``, its folds spread over ``threads`` threads); anything else, or ``fused=False``,
    through autograd."""

    def __init__(self, module: TinyVmafModule, folds: int, fused: bool = True, threads: int = 1) -> None:
        super().__init__()
        self.model = StackedVmafNet(module.model, folds)
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
        self.fused, self.threads = fused, threads
        self.steps: FusedSteps | None = None  # the fused step, when it serves this job (on_train_start)
        self.register_buffer("train_loss_sum", torch.zeros(folds, dtype=torch.float64), persistent=False)
        self.register_buffer("train_batches", torch.zeros(folds, dtype=torch.float64), persistent=False)

    @property
    def fold_metrics(self) -> list[MetricCollection]:
        return list(self.heldout_metrics)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        self.model.set_standardization(datamodule.standardizations)
        self.hold_rows(*datamodule.train_rows)

    def hold_rows(self, x: torch.Tensor, y: torch.Tensor, rows: list[int]) -> None:
        """The folds' training rows (x [K, N, F], y [K, N], rows[k] real), as buffers, so that
        they move with the module to the Trainer's device (trainer=gpu)."""
        self.register_buffer("train_x", x.reshape(-1, x.shape[-1]), persistent=False)
        self.register_buffer("train_y", y.reshape(-1), persistent=False)
        self.train_rows = rows

    def on_train_start(self) -> None:
        self.steps = self.fused_steps() if self.fused and self.device.type == "cpu" else None

    def on_train_end(self) -> None:
        if self.steps is not None:
            self.steps.close()
            self.steps = None

    def fused_steps(self) -> FusedSteps | None:
        """The fused step for this net, loss and the rows held, or None where it does not serve them."""
        layers = list(self.model.net.layers)
        activation = fused_activation(layers)
        if activation is None or type(self.loss) not in (CensoredMSELoss, nn.MSELoss) or kernel() is None:
            return None
        folds = len(self.train_rows)
        x, y = self.train_x.view(folds, -1, self.train_x.shape[-1]), self.train_y.view(folds, -1)
        with torch.no_grad():
            rows = fused_rows(self.model, x, y, self.loss, self.train_rows)
        widths = [layers[0].in_features, *(layer.out_features for layer in layers[::2])]
        return FusedSteps(widths, activation, rows, self.threads)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        datamodule = self.trainer.datamodule
        first = batch_idx * datamodule.minibatches_per_step
        self.train_chunk(self.optimizers(use_pl_optimizer=False), *batch, first, datamodule.batch_size)

    def train_chunk(
        self, optimizer: StackedAdamW, index: torch.Tensor, weight: torch.Tensor, first: int, size: int
    ) -> None:
        """One optimizer step per mini-batch of ``size`` rows in the chunk (mini-batches ``first``
        .. of the epoch): fused where ``steps`` is set, else through autograd."""
        if self.steps is not None:
            status = self.steps.run(
                self.model.net.weights.data, optimizer.state[self.model.net.weights], optimizer.table,
                optimizer.param_groups[0]["eps"], index, first, size, self.train_loss_sum, self.train_batches,
            )  # fmt: skip
            if status:
                raise nonfinite_loss(torch.tensor(math.nan), self.current_epoch)
            return
        m = self.model
        for rows, w in zip(index.split(size, dim=1), weight.split(size, dim=1)):
            counts = w.sum(1)
            active = counts > 0
            optimizer.zero_grad(set_to_none=True)
            # Each fold's mean over its real rows, divided by its target's variance as a separate run's
            # loss is; padding rows (copies of real ones: finite) weigh 0.
            scale = w / (counts.clamp(min=1) * m.target_std.squeeze(1).square())[:, None]
            per_fold = (self.loss(m(self.train_x[rows]), self.train_y[rows]) * scale).sum(1)
            loss = per_fold.sum()
            if not torch.isfinite(loss):
                raise nonfinite_loss(loss, self.current_epoch)
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
