"""The tiny models' input contract: their teacher's libvmaf features (vmaf_v0.6.1's six, or a
v1.0.16 model's four), an optional log of the motion feature, and their standardization. It is
fitted by the data module on the training sources and lives inside every model (and so inside
every shipped ONNX graph) as buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def motion_column(inputs: tuple[str, ...]) -> int:
    """Which input is the motion feature (motion2 of v0, motion3 of v1), whose tail runs long."""
    (column,) = [i for i, name in enumerate(inputs) if "motion" in name]
    return column


@dataclass(frozen=True)
class Standardization:
    """Mean and standard deviation of each feature and of the teacher score (float64)."""

    feature_mean: np.ndarray
    feature_std: np.ndarray
    target_mean: float
    target_std: float

    @classmethod
    def fit(cls, features: np.ndarray, target: np.ndarray) -> Standardization:
        std = features.std(axis=0)
        return cls(features.mean(axis=0), np.where(std > 0, std, 1.0), float(target.mean()), float(target.std() or 1.0))


def transform_features(features: np.ndarray | torch.Tensor, motion: int | None) -> np.ndarray | torch.Tensor:
    """The models' input transform: log1p of the ``motion`` column when given (motion2's tail runs
    to ~100; features in the last dimension: [N, F], or [K, N, F] for stacked folds)."""
    if motion is None:
        return features
    if isinstance(features, torch.Tensor):
        logged = torch.log1p(features[..., motion : motion + 1].clamp(min=0))
        return torch.cat([features[..., :motion], logged, features[..., motion + 1 :]], dim=-1)
    out = features.copy()
    out[..., motion] = np.log1p(np.maximum(features[..., motion], 0))
    return out
