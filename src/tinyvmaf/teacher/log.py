"""Reading libvmaf JSON logs, from the ffmpeg filter or the ``vmaf`` CLI, new and old naming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.teacher import FEATURE_NAMES, VARIANT_SUFFIXES, TeacherResult

# libvmaf < 2 and the float extractors write ``adm2``; libvmaf 2+ writes ``integer_adm2``.
LEGACY_NAMES = {name: name.removeprefix("integer_") for name in FEATURE_NAMES}


def read_log(path: Path) -> dict:
    try:
        log = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TinyVmafError(f"{path}: no such libvmaf log") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TinyVmafError(f"{path}: not a libvmaf JSON log ({exc})") from None
    if not isinstance(log, dict) or not isinstance(log.get("frames"), list):
        raise TinyVmafError(f"{path}: not a libvmaf JSON log (no 'frames' list)")
    return log


def features_from_log(log: dict, source: Path) -> np.ndarray:
    """The six features per frame, [n_frames, 6], whichever naming the log uses."""
    frames = log["frames"]
    if not frames:
        raise TinyVmafError(f"{source}: the libvmaf log has zero frames")
    metrics = frames[0].get("metrics", {})
    names = list(FEATURE_NAMES)
    if not all(n in metrics for n in names):
        names = [LEGACY_NAMES[n] for n in FEATURE_NAMES]
    missing = [n for n in FEATURE_NAMES if n not in metrics and LEGACY_NAMES[n] not in metrics]
    if missing:
        raise TinyVmafError(f"{source}: the libvmaf log lacks feature(s) {', '.join(missing)}")
    try:
        return np.array([[f["metrics"][n] for n in names] for f in frames], dtype=np.float64)
    except KeyError as exc:
        raise TinyVmafError(f"{source}: a frame of the libvmaf log lacks {exc}") from None


def scores_from_log(log: dict, models: list[str], source: Path) -> dict[str, np.ndarray]:
    metrics = log["frames"][0]["metrics"]
    missing = [m for m in models if m not in metrics]
    if missing:
        raise TinyVmafError(f"{source}: the libvmaf log has no score for {', '.join(missing)}")
    return {m: np.array([f["metrics"][m] for f in log["frames"]], dtype=np.float64) for m in models}


def variants_from_log(log: dict) -> dict[str, np.ndarray]:
    """Feature variants the log holds (logged when a model such as vmaf_v0.6.1neg needs them)."""
    metrics = log["frames"][0]["metrics"]
    names = [n + s for n in FEATURE_NAMES for s in VARIANT_SUFFIXES if n + s in metrics]
    return {n: np.array([f["metrics"][n] for f in log["frames"]], dtype=np.float64) for n in names}


def result_from_log(path: Path, models: list[str]) -> TeacherResult:
    log = read_log(path)
    return TeacherResult(features_from_log(log, path), scores_from_log(log, models, path), variants_from_log(log))
