"""Reading libvmaf JSON logs, from the ffmpeg filter or the ``vmaf`` CLI, new and old naming.

Logs can come from another machine or another tool, so every value is checked: a frame that
is not an object, or a value that is missing, null, non-numeric or non-finite, is one line
naming the frame and the metric.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.teacher import FEATURE_NAMES, VARIANT_SUFFIXES, TeacherResult

# libvmaf < 2 and the float extractors write ``adm2``; libvmaf 2+ writes ``integer_adm2``.
LEGACY_NAMES = {name: name.removeprefix("integer_") for name in FEATURE_NAMES}


def read_log(path: Path) -> dict:
    try:
        log = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise TinyVmafError(f"{path}: no such libvmaf log") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise TinyVmafError(f"{path}: not a libvmaf JSON log ({' '.join(str(exc).split())})") from None
    if not isinstance(log, dict) or not isinstance(log.get("frames"), list):
        raise TinyVmafError(f"{path}: not a libvmaf JSON log (no 'frames' list)")
    if not log["frames"]:
        raise TinyVmafError(f"{path}: the libvmaf log has zero frames")
    for i, frame in enumerate(log["frames"]):
        if not isinstance(frame, dict) or not isinstance(frame.get("metrics"), dict):
            raise TinyVmafError(f"{path}: frame {i} of the libvmaf log is not an object with 'metrics'")
    return log


def column(log: dict, name: str, source: Path) -> np.ndarray:
    """One metric of every frame of a log that ``read_log`` accepted, each value a finite number."""
    values = []
    for i, frame in enumerate(log["frames"]):
        value = frame["metrics"].get(name)
        if value is None:
            raise TinyVmafError(f"{source}: frame {i}: {name} is {'null' if name in frame['metrics'] else 'missing'}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TinyVmafError(f"{source}: frame {i}: {name} is not a number ({value!r:.40})")
        if not math.isfinite(value):
            raise TinyVmafError(f"{source}: frame {i}: {name} is not finite ({value})")
        values.append(value)
    return np.array(values, dtype=np.float64)


def features_from_log(log: dict, source: Path) -> np.ndarray:
    """The six features per frame, [n_frames, 6], whichever naming the log uses."""
    metrics = log["frames"][0]["metrics"]
    names = list(FEATURE_NAMES)
    if not all(n in metrics for n in names):
        names = [LEGACY_NAMES[n] for n in FEATURE_NAMES]
    missing = [n for n in FEATURE_NAMES if n not in metrics and LEGACY_NAMES[n] not in metrics]
    if missing:
        raise TinyVmafError(f"{source}: the libvmaf log lacks feature(s) {', '.join(missing)}")
    return np.stack([column(log, n, source) for n in names], axis=1)


def scores_from_log(log: dict, models: list[str], source: Path) -> dict[str, np.ndarray]:
    metrics = log["frames"][0]["metrics"]
    missing = [m for m in models if m not in metrics]
    if missing:
        raise TinyVmafError(f"{source}: the libvmaf log has no score for {', '.join(missing)}")
    return {m: column(log, m, source) for m in models}


def variants_from_log(log: dict, source: Path) -> dict[str, np.ndarray]:
    """Feature variants the log holds (logged when a model such as vmaf_v0.6.1neg needs them)."""
    metrics = log["frames"][0]["metrics"]
    names = [n + s for n in FEATURE_NAMES for s in VARIANT_SUFFIXES if n + s in metrics]
    return {n: column(log, n, source) for n in names}


def result_from_log(path: Path, models: list[str]) -> TeacherResult:
    log = read_log(path)
    return TeacherResult(features_from_log(log, path), scores_from_log(log, models, path), variants_from_log(log, path))
