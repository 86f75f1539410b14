"""The tiny models' input contract: their teacher's libvmaf features (vmaf_v0.6.1's six, or a
v1.0.16 model's four), read as the teacher reads them (its chroma correction), an optional log of
the motion feature, and their standardization. It is
fitted by the data module on the training sources and lives inside every model (and so inside
every shipped ONNX graph) as buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tinyvmaf.errors import TinyVmafError, boolean_option
from tinyvmaf.teacher.function import load_teacher, student_inputs


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


# libvmaf's chroma correction, as the stand-ins' inputs hold it: c, adm3's column, speed_chroma's column.
ChromaCorrection = tuple[float, int, int]


def chroma_correction(teacher: str, enabled: bool) -> ChromaCorrection | None:
    """The teacher's own chroma correction (the v1.0.16 models: c = 120) in its stand-ins' input
    order, when ``enabled`` (``teacher.chroma_correction``)."""
    if not boolean_option(enabled, "teacher.chroma_correction"):
        return None
    function = load_teacher(teacher)
    if function.chroma_correction is None:
        raise TinyVmafError(f"teacher.chroma_correction=true: teacher {teacher} has no chroma correction")
    c, guiding, guided = function.chroma_correction
    names, inputs = function.feature_columns, student_inputs(teacher)
    return c, inputs.index(names[guiding]), inputs.index(names[guided])


def transform_features(
    features: np.ndarray | torch.Tensor, motion: int | None, chroma: ChromaCorrection | None = None
) -> np.ndarray | torch.Tensor:
    """The models' input transform (features in the last dimension: [N, F], or [K, N, F] for
    stacked folds). ``chroma``: a speed_chroma of exactly 0 (content with no chroma at all) read as
    c (1 - adm3), as the teacher reads it. Without it the teacher jumps there and a smooth net
    cannot follow: on a greyscale 1080p frame (adm3 0.706) vmaf_v1.0.16_3d0h gives 4.4 at
    speed_chroma 0 and 26.3 at 0.001, and stand-ins trained without it missed greyscale content
    by 0.2 to 4.9 VMAF. ``motion``: log1p of that column (motion2's tail runs to ~100)."""
    if chroma is not None:
        c, guiding, guided = chroma
        corrected = c * (1 - features[..., guiding : guiding + 1])
        speed = features[..., guided : guided + 1]
        column = (
            torch.where(speed == 0, corrected, speed)
            if isinstance(features, torch.Tensor)
            else np.where(speed == 0, corrected, speed)
        )
        features = _with_column(features, guided, column)
    if motion is not None:
        motion_values = features[..., motion : motion + 1]
        if isinstance(features, torch.Tensor):
            logged = torch.log1p(motion_values.clamp(min=0))
        else:
            logged = np.log1p(np.maximum(motion_values, 0))
        features = _with_column(features, motion, logged)
    return features


def _with_column(features: np.ndarray | torch.Tensor, index: int, column: np.ndarray | torch.Tensor):
    """``features`` with its column ``index`` replaced (a new array: the caller's is untouched)."""
    if isinstance(features, torch.Tensor):
        return torch.cat([features[..., :index], column, features[..., index + 1 :]], dim=-1)
    out = features.copy()
    out[..., index : index + 1] = column
    return out
