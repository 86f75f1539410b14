"""Held-out metrics on the VMAF scale: PLCC, SROCC and RMSE from torchmetrics, in float64.

float64 because ``PearsonCorrCoef`` in float32 can return NaN on data with an outlier.
"""

from __future__ import annotations

import functools
import math

import lightning as L
import numpy as np
import torch
from scipy import stats
from torchmetrics import MeanSquaredError, MetricCollection, PearsonCorrCoef, SpearmanCorrCoef

from tinyvmaf.model import TinyVmafModule, VmafNet
from tinyvmaf.runs import CLIP, COVERAGES, HELDOUT, INTERVAL, METRIC_NAMES, SOURCE_CONFIDENCE, Metric
from tinyvmaf.stacked import StackedTinyVmafModule
from tinyvmaf.teacher.function import domain_points, load_teacher

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


def pooled_per_clip(values: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Each clip's score as libvmaf pools its frames by default (their mean), clips in index order."""
    _, index = np.unique(clip, return_inverse=True)
    return np.bincount(index, weights=values.astype(np.float64)) / np.bincount(index)


MIN_CLIPS = 3  # fewer clips leave PLCC and SROCC undefined (one) or +-1 by construction (two)


def clip_metrics(predicted: np.ndarray, teacher: np.ndarray, clip: np.ndarray) -> dict[str, float]:
    """PLCC, SROCC, RMSE over the clips' pooled scores (``CLIP`` keys); empty below ``MIN_CLIPS`` clips."""
    if len(np.unique(clip)) < MIN_CLIPS:
        return {}
    pooled = [torch.from_numpy(pooled_per_clip(v, clip)) for v in (predicted, teacher)]
    return {CLIP[m]: v for m, v in score_metrics(*pooled).items()}


def conformal_radius(residuals: np.ndarray, coverage: float) -> float:
    """The split-conformal radius: the ceil((n + 1) c)-th smallest |residual|, so that a new
    exchangeable residual falls within it with probability at least ``c`` (inf if n is too small)."""
    magnitudes = np.sort(np.abs(np.asarray(residuals, dtype=np.float64)))
    k = int(np.ceil((len(magnitudes) + 1) * coverage))
    return float(magnitudes[k - 1]) if k <= len(magnitudes) else math.inf


def paired_comparison(a: dict[str, float], b: dict[str, float], seed: int = 0) -> dict[str, float] | None:
    """A minus B on the folds both have (held-out source -> metric, e.g. RMSE): the mean
    difference, a paired bootstrap 95 % CI of it over sources (10,000 resamples, percentile), and
    the two-sided Wilcoxon signed-rank p (exact at these sizes). None below two shared folds."""
    folds = sorted(set(a) & set(b))
    if len(folds) < 2:
        return None
    diff = np.array([a[f] - b[f] for f in folds], dtype=np.float64)
    if not diff.any():
        return {"folds": len(folds), "mean": 0.0, "low": 0.0, "high": 0.0, "p": 1.0}
    ci = stats.bootstrap(
        (diff,),
        np.mean,
        confidence_level=0.95,
        n_resamples=10_000,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    p = float(stats.wilcoxon(diff).pvalue)
    return {"folds": len(folds), "mean": float(diff.mean()), "low": float(ci.low), "high": float(ci.high), "p": p}


def source_radius(per_source: list[np.ndarray], coverage: float, confidence: float) -> float:
    """A radius holding ``coverage`` of a new source's frames for at least ``confidence`` of
    sources: the conformal radius over the held-out sources' own ``coverage``-quantiles of
    |residual|. Frames of one source err together, so a pooled radius under-covers a source
    unlike the others; this one does not, at the price of width (inf below 9 sources at 0.9)."""
    quantiles = [np.quantile(np.abs(r), coverage, method="higher") for r in per_source]
    return conformal_radius(np.array(quantiles), confidence)


def loso_radii(folds: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> dict[str, float]:
    """A LOSO's conformal radii (``INTERVAL`` keys) from each fold's held-out ``(predicted,
    teacher, clip)``: per frame and per clip pooled over every fold, per source over the folds'
    own quantiles. Those too few residuals cannot promise are left out; no clip radii unless
    every fold has its clips."""
    frames = [p.astype(np.float64) - t.astype(np.float64) for p, t, _ in folds]
    pooled = [("frame", frames)]
    if all(clip is not None for _, _, clip in folds):
        pooled.append(("clip", [pooled_per_clip(p, clip) - pooled_per_clip(t, clip) for p, t, clip in folds]))
    radii = {INTERVAL[(unit, c)]: conformal_radius(np.concatenate(r), c / 100) for unit, r in pooled for c in COVERAGES}
    radii |= {INTERVAL[("source", c)]: source_radius(frames, c / 100, SOURCE_CONFIDENCE) for c in COVERAGES}
    return {k: v for k, v in radii.items() if math.isfinite(v)}


# The teacher's box of valid feature values as the shipped models' test probes it: a 5^F grid (its
# faces and corners, where an MLP drifts most) and 20,000 uniform points. For vmaf_v0.6.1, 35,625
# points: 0.04 s of teacher and a few ms of a 257-parameter model on one core.
DOMAIN_PROBE = {"grid_steps": 5, "n_random": 20_000, "seed": 42}


@functools.cache
def _domain_probe(teacher: str) -> tuple[torch.Tensor, np.ndarray]:
    """``DOMAIN_PROBE``'s points of the teacher's box as a shipped model sees them (float32), and
    the teacher's scores there: the same for every fold of a job, so computed once per process."""
    function = load_teacher(teacher)
    x = domain_points(**DOMAIN_PROBE, low=function.domain[0], high=function.domain[1]).astype(np.float32)
    return torch.from_numpy(x), function(x.astype(np.float64))


def domain_max_error(model: VmafNet, teacher: str) -> float:
    """The largest |model - teacher| over ``DOMAIN_PROBE``'s points of the teacher's box: how far
    the model strays from its teacher where no training frame lies (other content, other codecs).
    Both see the float32 features a shipped model sees."""
    x, scores = _domain_probe(teacher)
    with torch.no_grad():
        predicted = model.eval().predict(x).double().numpy()
    return float(np.abs(predicted - scores).max())


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
