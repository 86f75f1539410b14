"""Backend: the ``libvmaf`` filter of the ffmpeg binary that imageio-ffmpeg ships."""

from __future__ import annotations

import json
import re
import tempfile
from functools import cache
from pathlib import Path

from tinyvmaf import ffmpeg
from tinyvmaf.corpus import ClipPair
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.teacher import (
    NATIVE,
    Measurement,
    TeacherResult,
    checked_result,
    frame_aligned_graph,
    libvmaf_failure,
    libvmaf_log_path,
    model_option,
    pair_geometry,
)
from tinyvmaf.teacher.log import result_from_log

_UNKNOWN_MODEL = re.compile(r'no such built-in model: "([^"]+)"|could not load libvmaf model with version: (\S+)')


class FfmpegLibvmaf:
    backend = "ffmpeg-libvmaf"

    def __init__(self, n_threads: int = 1) -> None:
        self.n_threads = n_threads
        self.binary = ffmpeg.ffmpeg_exe()

    def version(self) -> str:
        return _probe(ffmpeg.ffmpeg_exe(), ("vmaf_v0.6.1",))

    def check_models(self, models: list[str]) -> None:
        _probe(ffmpeg.ffmpeg_exe(), tuple(models))

    def score(self, pair: ClipPair, models: list[str], measurement: Measurement = NATIVE) -> TeacherResult:
        geo = pair_geometry(pair, measurement)
        dis_chain, ref_chain = frame_aligned_graph(geo)
        with tempfile.TemporaryDirectory(prefix="tinyvmaf-") as tmp:
            log_path = libvmaf_log_path(tmp)
            graph = (
                f"[0:v]{dis_chain}[dis];[1:v]{ref_chain}[ref];"
                f"[dis][ref]{_libvmaf_filter(log_path, models, self.n_threads)}"
            )
            # The filter's first input is the distorted clip, the second the reference.
            _run_ffmpeg(
                [*ffmpeg.input_args(pair.distorted.path, pair.distorted.raw),
                 *ffmpeg.input_args(pair.reference.path, pair.reference.raw),
                 "-lavfi", graph, "-f", "null", "-"],
                what=str(pair.distorted.path),
                models=models,
            )  # fmt: skip
            result = result_from_log(log_path, models)
        return checked_result(result, pair, geo)


def _libvmaf_filter(log_path: Path, models: list[str], n_threads: int) -> str:
    model = ffmpeg.filter_option("|".join(model_option(models, separator=":")))
    return f"libvmaf=log_fmt=json:log_path={ffmpeg.filter_option(str(log_path))}:n_threads={n_threads}:model={model}"


def _run_ffmpeg(args: list[str], what: str, models: list[str]) -> None:
    proc = ffmpeg.run(args, what, check=False)
    if proc.returncode != 0:
        unknown = _UNKNOWN_MODEL.search(proc.stderr)
        if unknown:
            raise TinyVmafError(
                f"unknown teacher model {unknown.group(1) or unknown.group(2)!r}: libvmaf has no such built-in model"
            )
        raise libvmaf_failure(what, "libvmaf", models, proc.returncode, proc.stderr)


@cache
def _probe(exe: str, models: tuple[str, ...]) -> str:
    """Score two tiny synthetic frames: checks that the models load and reads libvmaf's version."""
    with tempfile.TemporaryDirectory(prefix="tinyvmaf-probe-") as tmp:
        log_path = Path(tmp) / "probe.json"
        # 640x360: every model runs there (at 64x64 the v1.0.16 models log no CAMBI and libvmaf
        # writes no log, yet exits 0; below 640x360 the phone and 4K 3H models crash).
        src = "testsrc2=size=640x360:rate=25:duration=0.08"
        _run_ffmpeg(
            ["-f", "lavfi", "-i", src, "-f", "lavfi", "-i", src, "-lavfi",
             f"[0:v][1:v]{_libvmaf_filter(log_path, list(models), 1)}", "-f", "null", "-"],
            what="libvmaf probe", models=list(models),
        )  # fmt: skip
        if not log_path.is_file():
            raise TinyVmafError(f"libvmaf probe of model(s) {', '.join(models)}: libvmaf wrote no log")
        return str(json.loads(log_path.read_text())["version"])
