"""Backend: a ``vmaf`` command-line binary from a libvmaf build, named by its path.

Raw YUV inputs go to it as they are (``-w -h -p 420 -b 8|10``); any other container is
decoded by ffmpeg to a temporary ``.y4m`` first, scaled to the reference's size if needed.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from tinyvmaf import ffmpeg
from tinyvmaf.corpus import ClipPair, Video
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.teacher import (
    PairGeometry,
    TeacherResult,
    check_finite,
    frame_aligned_graph,
    model_option,
    pair_geometry,
    write_log_path,
)
from tinyvmaf.teacher.log import result_from_log

_RAW_ARGS = {"yuv420p": ("420", "8"), "yuv420p10le": ("420", "10")}


class VmafCli:
    backend = "vmaf-cli"

    def __init__(self, path: str | Path, n_threads: int = 1) -> None:
        self.path = self.binary = str(Path(path).expanduser())
        self.n_threads = n_threads

    def version(self) -> str:
        return _version(self.path)

    def check_models(self, models: list[str]) -> None:
        _version(self.path)  # an unknown model is reported by the first scored clip

    def score(self, pair: ClipPair, models: list[str]) -> TeacherResult:
        geo = pair_geometry(pair)
        with tempfile.TemporaryDirectory(prefix="tinyvmaf-") as tmp:
            log_path = write_log_path(tmp, pair)
            models_args = [a for m in model_option(models, ":") for a in ("--model", m)]
            proc = subprocess.run(
                [self.path, *_input_args(pair, geo, Path(tmp)), *models_args,
                 "--threads", str(self.n_threads), "--json", "-o", str(log_path), "-q"],
                capture_output=True, text=True, errors="replace",
            )  # fmt: skip
            if proc.returncode != 0:
                last = ffmpeg.last_error_line(proc.stderr + proc.stdout)
                raise TinyVmafError(f"{pair.distorted.path}: vmaf CLI failed ({last})")
            result = result_from_log(log_path, models)
        return check_finite(result, pair)


def _input_args(pair: ClipPair, geo: PairGeometry, tmp: Path) -> list[str]:
    """Raw YUV pairs of one geometry go as they are; anything else is decoded to .y4m first.

    The CLI's ``-w/-h/-p/-b`` apply to both inputs, so the two sides cannot be mixed.
    """
    ref, dis = pair.reference, pair.distorted
    if ref.raw is not None and ref.raw == dis.raw and ref.raw.pix_fmt in _RAW_ARGS:
        pix, bits = _RAW_ARGS[ref.raw.pix_fmt]
        return ["-r", str(ref.path), "-d", str(dis.path), "-w", str(ref.raw.width),
                "-h", str(ref.raw.height), "-p", pix, "-b", bits]  # fmt: skip
    dis_chain, ref_chain = frame_aligned_graph(geo)
    return ["-r", _to_y4m(ref, ref_chain, tmp / "ref.y4m"), "-d", _to_y4m(dis, dis_chain, tmp / "dis.y4m")]


def _to_y4m(video: Video, chain: str, y4m: Path) -> str:
    ffmpeg.run(
        [*ffmpeg.input_args(video.path, video.raw), "-vf", chain, "-f", "yuv4mpegpipe",
         "-strict", "-1", str(y4m)],
        what=str(video.path),
    )  # fmt: skip
    return str(y4m)


@cache
def _version(path: str) -> str:
    """libvmaf's version, after checking that ``path`` really is libvmaf's ``vmaf`` tool."""
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise TinyVmafError(f"libvmaf.path={path}: not an executable file")
    try:
        usage = subprocess.run([path], capture_output=True, text=True, errors="replace", timeout=20)
        version = subprocess.run([path, "--version"], capture_output=True, text=True, errors="replace", timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TinyVmafError(f"libvmaf.path={path}: cannot run it ({exc})") from None
    text = (version.stdout + version.stderr).strip()
    if "path to reference .y4m or .yuv" not in usage.stderr + usage.stdout or version.returncode or not text:
        raise TinyVmafError(f"libvmaf.path={path}: not libvmaf's vmaf command-line tool")
    match = re.search(r"\S+", text.splitlines()[-1])
    return match.group(0) if match else text
