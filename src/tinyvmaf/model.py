"""Tiny VMAF models: an MLP (or linear map) on standardized libvmaf features, its loss, and the
LightningModule that trains one fold. Only the model: every fold at once is ``tinyvmaf.stacked``,
its ONNX form ``tinyvmaf.onnx_io``.

The standardization sits inside the model as buffers (not parameters), so a model takes raw
libvmaf features and returns VMAF-scale scores; ``n_params`` counts the trainable weights only.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.features import ChromaCorrection, Standardization, motion_column, transform_features
from tinyvmaf.teacher import FEATURE_NAMES

VMAF_RANGE = (0.0, 100.0)  # the score range of every model but the v1.0.16 4K 3H ones' [0, 110]


def mlp(hidden: list[int], activation: str = "ReLU", n_features: int = len(FEATURE_NAMES)) -> nn.Sequential:
    """n_features (6 for v0, 4 for v1) -> hidden... -> 1; ``hidden=[]`` is the linear control."""
    layers: list[nn.Module] = []
    width = n_features
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
    """Raw features (``inputs``, libvmaf's names) -> the input transform (``chroma``: the teacher's
    chroma correction; ``log_motion``) -> standardize -> net -> de-standardize. ``forward`` is
    unclipped (for the loss); ``predict`` clips to the teacher's ``score_range``."""

    def __init__(
        self,
        net: nn.Module,
        log_motion: bool = False,
        inputs: tuple[str, ...] = FEATURE_NAMES,
        score_range: tuple[float, float] = VMAF_RANGE,
        chroma: ChromaCorrection | None = None,
    ) -> None:
        super().__init__()
        width = next(m.in_features for m in net.modules() if isinstance(m, nn.Linear))
        if width != len(inputs):
            raise TinyVmafError(f"the net takes {width} features, but its teacher gives {len(inputs)}: {list(inputs)}")
        self.net = net
        self.log_motion = log_motion
        self.chroma = None if chroma is None else (float(chroma[0]), int(chroma[1]), int(chroma[2]))
        self.inputs, self.score_range = tuple(inputs), (float(score_range[0]), float(score_range[1]))
        self.register_buffer("feature_mean", torch.zeros(len(inputs)))
        self.register_buffer("feature_std", torch.ones(len(inputs)))
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))

    def set_standardization(self, s: Standardization) -> None:
        self.feature_mean.copy_(torch.as_tensor(s.feature_mean))
        self.feature_std.copy_(torch.as_tensor(s.feature_std))
        self.target_mean.fill_(s.target_mean)
        self.target_std.fill_(s.target_std)

    @property
    def motion(self) -> int | None:
        """The column taken through log1p, when ``log_motion``."""
        return motion_column(self.inputs) if self.log_motion else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (transform_features(features, self.motion, self.chroma) - self.feature_mean) / self.feature_std
        return self.net(z).squeeze(-1) * self.target_std + self.target_mean

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Scores as shipped: clipped to the teacher's range."""
        return self.forward(features).clamp(*self.score_range)


class CensoredMSELoss(nn.modules.loss._Loss):
    """MSE that knows both teacher and model are clipped to the score range (``bounds``; the
    module sets its teacher's).

    Where the teacher sits on a bound and the prediction lies beyond it, the clipped prediction
    is exact, so that residual counts zero: the net need not pin every "worse than 0" or "better
    than 100" feature vector to the bound, and spends its few weights where scores vary.
    ``reduction`` as in torch's losses (stacked folds take it per element).
    """

    def __init__(self, reduction: str = "mean", bounds: tuple[float, float] = VMAF_RANGE) -> None:
        super().__init__(reduction=reduction)
        self.low, self.high = bounds

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        beyond = ((target <= self.low) & (prediction <= self.low)) | ((target >= self.high) & (prediction >= self.high))
        squared = (prediction - target).masked_fill(beyond, 0.0).square()
        return squared.mean() if self.reduction == "mean" else squared


def nonfinite_loss(loss: torch.Tensor, epoch: int) -> TinyVmafError:
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
        inputs: tuple[str, ...] = FEATURE_NAMES,
        score_range: tuple[float, float] = VMAF_RANGE,
        chroma: ChromaCorrection | None = None,
    ) -> None:
        super().__init__()
        self.model = VmafNet(net, log_motion, tuple(inputs), tuple(score_range), chroma)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.loss = loss if loss is not None else CensoredMSELoss()
        if isinstance(self.loss, CensoredMSELoss):  # censored where this teacher clips
            self.loss.low, self.loss.high = self.model.score_range
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
                raise nonfinite_loss(loss, self.current_epoch)
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
