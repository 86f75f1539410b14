"""The teacher: real libvmaf, run once per reference/distorted pair.

One pass yields, per frame, the six elementary features vmaf_v0.6.1 uses and the score of
every configured libvmaf model. Two backends compute it: ``FfmpegLibvmaf`` (the ``libvmaf``
filter of imageio-ffmpeg's ffmpeg, the default) and ``VmafCli`` (a ``vmaf`` binary from a
libvmaf build, as the reference users run it).
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from tinyvmaf import ffmpeg
from tinyvmaf.corpus import ClipPair
from tinyvmaf.errors import TinyVmafError

# The features of vmaf_v0.6.1, in the order its SVR reads them.
FEATURE_NAMES = (
    "integer_adm2",
    "integer_motion2",
    "integer_vif_scale0",
    "integer_vif_scale1",
    "integer_vif_scale2",
    "integer_vif_scale3",
)
# libvmaf formats its filter/CLI accept as they are; anything else is converted to yuv420p.
LIBVMAF_PIX_FMTS = {"yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "yuv422p10le", "yuv444p10le"}


@dataclass
class TeacherResult:
    features: np.ndarray  # [n_frames, 6], FEATURE_NAMES order
    scores: dict[str, np.ndarray]  # model name -> [n_frames]
    variants: dict[str, np.ndarray] = field(default_factory=dict)  # other features the models read -> [n_frames]

    def columns(self, names: list[str] | tuple[str, ...]) -> np.ndarray:
        """[n, len(names)] of features by libvmaf log name."""
        return named_columns(self.features, self.variants, names, "the libvmaf run")


def named_columns(
    features: np.ndarray, variants: dict[str, np.ndarray], names: list[str] | tuple[str, ...], holder: str
) -> np.ndarray:
    """Columns by libvmaf log name, from the six features (FEATURE_NAMES order) and the others."""
    index = {n: i for i, n in enumerate(FEATURE_NAMES)}
    missing = [n for n in names if n not in index and n not in variants]
    if missing:
        raise TinyVmafError(f"{holder} holds no {', '.join(missing)}; add the model that reads them to cache.models")
    return np.stack([features[:, index[n]] if n in index else variants[n] for n in names], axis=1)


class Libvmaf(Protocol):
    backend: str  # recorded with every cache entry
    binary: str  # the executable that runs libvmaf

    def version(self) -> str: ...

    def check_models(self, models: list[str]) -> None: ...

    def score(self, pair: ClipPair, models: list[str], measurement: Measurement | None = None) -> TeacherResult: ...


@dataclass(frozen=True)
class Measurement:
    """Where libvmaf sees a pair: both clips scaled (bicubic) to ``display`` and converted to
    ``bit_depth`` bits, as Netflix measures the v1.0.16 models (at the display's resolution, in
    10 bits); ``None`` keeps the reference's size and bit depth, as the v0.6.1 models are measured."""

    display: tuple[int, int] | None = None
    bit_depth: int | None = None

    def __post_init__(self) -> None:
        if self.display is not None:
            display = tuple(self.display)
            if len(display) != 2 or not all(type(v) is int and v > 0 and v % 2 == 0 for v in display):
                raise TinyVmafError(f"cache.display={list(display)!r:.40}: must be [width, height], even integers > 0")
            object.__setattr__(self, "display", display)
        if self.bit_depth is not None and (type(self.bit_depth) is not int or self.bit_depth not in (8, 10)):
            raise TinyVmafError(f"cache.bit_depth={self.bit_depth!r:.20}: must be 8, 10 or null")

    @property
    def label(self) -> str:
        """``1920x1080p10``; empty for the native measurement."""
        size = "x".join(map(str, self.display)) if self.display else "native"
        return "" if self == NATIVE else f"{size}p{self.bit_depth or 'native'}"

    def metadata(self) -> dict[str, str]:
        """What a stand-in's ONNX metadata says of where its features were measured (OnnxVmaf reads it)."""
        display = {"display": json.dumps(list(self.display))} if self.display else {}
        return display | ({"bit_depth": json.dumps(self.bit_depth)} if self.bit_depth else {})

    def pix_fmt(self, source: str) -> str:
        """The reference's chroma layout at this bit depth."""
        if self.bit_depth is None:
            return source
        layout = source.removesuffix("10le")
        return layout + ("10le" if self.bit_depth == 10 else "")


NATIVE = Measurement()
# libvmaf 3.2.0 dies by SIGSEGV on a frame with a side under 18 pixels (measured with vmaf_v0.6.1:
# 18x18, 64x18 and 18x64 run; 17x17, 64x17, 17x64 and 32x16 crash).
MIN_SIDE = 18


@dataclass(frozen=True)
class PairGeometry:
    """What both backends must settle before libvmaf sees a pair."""

    width: int
    height: int
    pix_fmt: str
    n_frames: int
    rescale: bool  # the distorted clip is at another size: bicubic to the measured size
    rescale_reference: bool = False  # the reference too (a display-resolution measurement)

    @property
    def as_read(self) -> bool:
        """Both clips go to libvmaf as they are (no scaling)."""
        return not (self.rescale or self.rescale_reference)


def pair_geometry(pair: ClipPair, measurement: Measurement = NATIVE) -> PairGeometry:
    """Probe both clips; refuse pairs whose frame counts differ (no silent truncation)."""
    ref = ffmpeg.probe(pair.reference.path, pair.reference.raw)
    dis = ffmpeg.probe(pair.distorted.path, pair.distorted.raw)
    if ref.n_frames != dis.n_frames:
        raise TinyVmafError(
            f"{pair.distorted.path}: {dis.n_frames} frames, but its reference {pair.reference.path} has {ref.n_frames}"
        )
    pix_fmt = measurement.pix_fmt(ref.pix_fmt if ref.pix_fmt in LIBVMAF_PIX_FMTS else "yuv420p")
    width, height = measurement.display or (ref.width, ref.height)
    if min(width, height) < MIN_SIDE:
        raise TinyVmafError(
            f"{pair.reference.path}: {width}x{height} frames; libvmaf measures frames of at least "
            f"{MIN_SIDE}x{MIN_SIDE} (smaller ones crash it)"
        )
    return PairGeometry(
        width,
        height,
        pix_fmt,
        ref.n_frames,
        (dis.width, dis.height) != (width, height),
        (ref.width, ref.height) != (width, height),
    )


def frame_aligned_graph(geo: PairGeometry) -> tuple[str, str]:
    """Filter chains for distorted and reference: same size and format, frames paired by index.

    Timestamps are rewritten to the frame index so that clips from containers with other
    frame rates or start times (mp4 vs raw YUV) still pair frame n with frame n.
    """
    common = f"format={geo.pix_fmt},settb=1/25,setpts=N"
    scale = f"scale={geo.width}:{geo.height}:flags=bicubic,"
    return (scale if geo.rescale else "") + common, (scale if geo.rescale_reference else "") + common


def checked_result(result: TeacherResult, pair: ClipPair, geo: PairGeometry) -> TeacherResult:
    """What every backend checks before a result is cached: one score per frame of the pair
    (libvmaf neither dropped nor repeated a frame). Reading the log checked that every value is finite."""
    if len(result.features) != geo.n_frames:
        raise TinyVmafError(
            f"{pair.distorted.path}: libvmaf scored {len(result.features)} frames, expected {geo.n_frames}"
        )
    return result


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def model_option(models: list[str], separator: str) -> list[str]:
    """``version=X:name=X`` per model, so each score is logged under its model's name.

    libvmaf's built-in model names are plain words; anything else is refused here, so a model
    name can never carry options of its own into libvmaf's option string.
    """
    for m in models:
        if not isinstance(m, str) or not _MODEL_NAME.fullmatch(m):
            raise TinyVmafError(f"cache.models: {m!r} is not a libvmaf model name (letters, digits, '.', '_', '-')")
    return [f"version={m}{separator}name={m}" for m in models]


def libvmaf_log_path(tmp_dir: str) -> Path:
    """The JSON log inside a pair's private temporary folder: a fixed name, never a clip's."""
    return Path(tmp_dir) / "libvmaf.json"


def libvmaf_failure(what: str, tool: str, models: list[str], returncode: int, output: str) -> TinyVmafError:
    """One line for a libvmaf run that failed; one killed by a signal says which, and which models
    it ran (the v1.0.16 phone and 4K 3H models die by SIGSEGV below 640x360: SpEED's prescale
    leaves it no image), so the clip's other models and the corpus's other clips are not blamed."""
    last = ffmpeg.last_error_line(output)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return TinyVmafError(f"{what}: {tool} killed by {name} running model(s) {', '.join(models)} ({last})")
    return TinyVmafError(f"{what}: {tool} failed ({last})")
