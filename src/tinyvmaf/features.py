"""The tiny models' input contract: libvmaf's six features in vmaf_v0.6.1's order, an optional
log of motion2, and their standardization. It is fitted by the data module on the training
sources and lives inside every model (and so inside every shipped ONNX graph) as buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tinyvmaf.teacher import FEATURE_NAMES

MOTION = FEATURE_NAMES.index("integer_motion2")


@dataclass(frozen=True)
class Standardization:
    """Mean and standard deviation of the six features and of the teacher score (float64)."""

    feature_mean: np.ndarray
    feature_std: np.ndarray
    target_mean: float
    target_std: float

    @classmethod
    def fit(cls, features: np.ndarray, target: np.ndarray) -> Standardization:
        std = features.std(axis=0)
        return cls(features.mean(axis=0), np.where(std > 0, std, 1.0), float(target.mean()), float(target.std() or 1.0))


def transform_features(features: np.ndarray | torch.Tensor, log_motion: bool) -> np.ndarray | torch.Tensor:
    """The models' input transform: optionally log1p of motion2, whose tail runs to ~100 (features
    in the last dimension: [N, 6], or [K, N, 6] for stacked folds)."""
    if not log_motion:
        return features
    if isinstance(features, torch.Tensor):
        motion = torch.log1p(features[..., MOTION : MOTION + 1].clamp(min=0))
        return torch.cat([features[..., :MOTION], motion, features[..., MOTION + 1 :]], dim=-1)
    out = features.copy()
    out[..., MOTION] = np.log1p(np.maximum(features[..., MOTION], 0))
    return out
