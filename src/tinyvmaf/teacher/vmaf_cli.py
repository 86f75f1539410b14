"""Backend: a ``vmaf`` command-line binary from a libvmaf build, named by its path.

Raw YUV pairs of one geometry go to it as they are. Anything else is decoded by ffmpeg and
streamed to it as raw frames through two named pipes, one per side: no temporary video is
written, and frame n of the distorted clip meets frame n of the reference whatever the
containers' rates and time bases (``-fps_mode passthrough``: ffmpeg neither drops nor repeats a
frame), exactly as the ffmpeg backend pairs them.
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
    NATIVE,
    Measurement,
    PairGeometry,
    TeacherResult,
    checked_result,
    frame_aligned_graph,
    libvmaf_failure,
    libvmaf_log_path,
    model_option,
    pair_geometry,
)
from tinyvmaf.teacher.log import result_from_log

# The CLI's -p/-b for each pixel format it reads (4:2:0, 4:2:2, 4:4:4 at 8 or 10 bits).
_RAW_ARGS = {
    "yuv420p": ("420", "8"), "yuv422p": ("422", "8"), "yuv444p": ("444", "8"),
    "yuv420p10le": ("420", "10"), "yuv422p10le": ("422", "10"), "yuv444p10le": ("444", "10"),
}  # fmt: skip


class VmafCli:
    backend = "vmaf-cli"

    def __init__(self, path: str | Path, n_threads: int = 1, gpumask: int | None = None) -> None:
        self.path = self.binary = str(Path(path).expanduser())
        self.n_threads = n_threads
        self.gpumask = gpumask

    def version(self) -> str:
        return _version(self.path)

    def check_models(self, models: list[str]) -> None:
        model_option(models, ":")
        _version(self.path)  # an unknown model is reported by the first scored clip

    def score(self, pair: ClipPair, models: list[str], measurement: Measurement = NATIVE) -> TeacherResult:
        geo = pair_geometry(pair, measurement)
        with tempfile.TemporaryDirectory(prefix="tinyvmaf-") as tmp:
            log_path = libvmaf_log_path(tmp)
            decoders, inputs = _inputs(pair, geo, Path(tmp))
            models_args = [a for m in model_option(models, ":") for a in ("--model", m)]
            gpu_args = ["--gpumask", str(self.gpumask)] if self.gpumask is not None else []
            vmaf = [
                self.path,
                *inputs,
                *models_args,
                "--threads",
                str(self.n_threads),
                *gpu_args,
                "--json",
                "-o",
                str(log_path),
                "-q",
            ]
            *decoded, scored = ffmpeg.run_tools([*decoders, vmaf])
            # The tool's own failure first: a decoder it left then fails only on a broken pipe.
            if scored.returncode != 0:
                raise libvmaf_failure(
                    str(pair.distorted.path), "vmaf CLI", models, scored.returncode, scored.stderr + scored.stdout
                )
            for proc, side in zip(decoded, (pair.reference, pair.distorted)):
                if proc.returncode != 0:
                    raise TinyVmafError(f"{side.path}: ffmpeg failed ({ffmpeg.last_error_line(proc.stderr)})")
            result = result_from_log(log_path, models)
        return checked_result(result, pair, geo)


def _inputs(pair: ClipPair, geo: PairGeometry, tmp: Path) -> tuple[list[list[str]], list[str]]:
    """ffmpeg decoders to start beside the CLI, and the CLI's input arguments.

    The CLI's ``-w/-h/-p/-b`` apply to both inputs, so a raw pair of one geometry is read as it
    is, and anything else has both sides decoded to the reference's size and pixel format.
    """
    ref, dis = pair.reference, pair.distorted
    if ref.raw is not None and ref.raw == dis.raw and ref.raw.pix_fmt == geo.pix_fmt and geo.as_read:
        return [], [
            "-r",
            str(ref.path),
            "-d",
            str(dis.path),
            *_geometry_args(ref.raw.width, ref.raw.height, ref.raw.pix_fmt),
        ]
    dis_chain, ref_chain = frame_aligned_graph(geo)
    pipes = tmp / "ref.pipe", tmp / "dis.pipe"
    for pipe in pipes:
        os.mkfifo(pipe)
    decoders = [_decoder(ref, ref_chain, geo, pipes[0]), _decoder(dis, dis_chain, geo, pipes[1])]
    return decoders, ["-r", str(pipes[0]), "-d", str(pipes[1]), *_geometry_args(geo.width, geo.height, geo.pix_fmt)]


def _geometry_args(width: int, height: int, pix_fmt: str) -> list[str]:
    pix, bits = _RAW_ARGS[pix_fmt]
    return ["-w", str(width), "-h", str(height), "-p", pix, "-b", bits]


def _decoder(video: Video, chain: str, geo: PairGeometry, pipe: Path) -> list[str]:
    return [
        ffmpeg.ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        *ffmpeg.input_args(video.path, video.raw), "-map", "0:v:0", "-vf", chain, "-fps_mode", "passthrough",
        "-pix_fmt", geo.pix_fmt, "-f", "rawvideo", ffmpeg.file_arg(pipe),
    ]  # fmt: skip


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
