"""Held-out metrics on the VMAF scale: PLCC, SROCC and RMSE from torchmetrics, in float64.

float64 because ``PearsonCorrCoef`` in float32 can return NaN on data with an outlier.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torchmetrics import MeanSquaredError, MetricCollection, PearsonCorrCoef, SpearmanCorrCoef

from tinyvmaf.model import TinyVmafModule
from tinyvmaf.runs import HELDOUT, METRIC_NAMES, Metric
from tinyvmaf.stacked import StackedTinyVmafModule

# Each of tinyvmaf.runs.METRIC_NAMES, as torchmetrics computes it.
_METRICS = {"plcc": PearsonCorrCoef, "srocc": SpearmanCorrCoef, "rmse": lambda: MeanSquaredError(squared=False)}


def heldout_metrics() -> MetricCollection:
    return MetricCollection({name: _METRICS[name]() for name in METRIC_NAMES}).double()


def score_metrics(predicted: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """PLCC, SROCC, RMSE of clipped predictions against the teacher's scores."""
    metrics = heldout_metrics()
    values = metrics(predicted.detach().double().cpu(), teacher.detach().double().cpu())
    return {name: float(values[name]) for name in METRIC_NAMES}


def metrics_per_source(
    predicted: np.ndarray, reference: np.ndarray, source_of_frame: np.ndarray, sources: list[str]
) -> list[dict]:
    """``{"source", "n", "plcc", "srocc", "rmse"}`` for each source, in ``sources`` order."""
    rows = []
    for i, source in enumerate(sources):
        mask = source_of_frame == i
        m = score_metrics(torch.from_numpy(predicted[mask]), torch.from_numpy(reference[mask]))
        rows.append({"source": source, "n": int(mask.sum()), **m})
    return rows


class HeldoutHistory(L.Callback):
    """Per-epoch ``train_loss`` and held-out metrics of each fold the module trains (one, or every
    fold of a stacked module), kept in memory for one batched MLflow write per fold."""

    def __init__(self) -> None:
        self.histories: list[list[dict[str, float]]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: TinyVmafModule | StackedTinyVmafModule) -> None:
        collections = pl_module.fold_metrics
        if not self.histories:
            self.histories = [[] for _ in collections]
        for history, metrics in zip(self.histories, collections):
            values = metrics.compute()
            metrics.reset()
            row = {HELDOUT[name]: float(values[name]) for name in METRIC_NAMES}
            row["epoch"] = trainer.current_epoch
            history.append(row)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: TinyVmafModule | StackedTinyVmafModule) -> None:
        losses = (pl_module.train_loss_sum / pl_module.train_batches.clamp(min=1)).tolist()
        for history, loss in zip(self.histories, losses):
            if history and history[-1]["epoch"] == trainer.current_epoch:
                history[-1][Metric.TRAIN_LOSS] = loss
        pl_module.train_loss_sum.zero_()
        pl_module.train_batches.zero_()

    @property
    def history(self) -> list[dict[str, float]]:
        """The first (for a single fold: the only) fold's history."""
        return self.histories[0] if self.histories else []

    def final(self, fold: int = 0) -> dict[str, float]:
        return {k: v for k, v in self.histories[fold][-1].items() if k != "epoch"}
