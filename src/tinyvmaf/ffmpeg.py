"""The ffmpeg binary shipped by imageio-ffmpeg, and the few things every stage asks of it.

It decodes, scales and encodes every clip, and its ``libvmaf`` filter is the default teacher.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import imageio_ffmpeg

from tinyvmaf.errors import TinyVmafError

# Bytes per sample of the raw YUV formats libvmaf takes (4:2:0, 8 or 10 bits).
RAW_SAMPLE_BYTES = {"yuv420p": 1, "yuv420p10le": 2}


@cache
def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class RawFormat:
    """What a headerless ``.yuv`` file cannot say about itself."""

    width: int
    height: int
    pix_fmt: str = "yuv420p"
    fps: float = 25.0

    @property
    def frame_bytes(self) -> int:
        if self.pix_fmt not in RAW_SAMPLE_BYTES:
            raise TinyVmafError(f"pix_fmt {self.pix_fmt!r} is not supported; use one of {sorted(RAW_SAMPLE_BYTES)}")
        # 4:2:0: each chroma plane has half the width and height, rounded up (a 19x19 frame: 10x10)
        chroma = ((self.width + 1) // 2) * ((self.height + 1) // 2)
        return (self.width * self.height + 2 * chroma) * RAW_SAMPLE_BYTES[self.pix_fmt]


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    pix_fmt: str
    n_frames: int


def file_arg(path: Path) -> str:
    """A path as ffmpeg must get it: with ``file:``, so no name is taken for a protocol
    (``concat:``, ``http:``), an option (``-x``) or a pipe (``-``)."""
    return f"file:{Path(path).absolute()}"


def filter_option(value: str) -> str:
    """``value`` escaped for one filter option inside a filtergraph (ffmpeg's two levels of
    escaping), so no character of it can end the option, the filter or the graph."""
    option_level = re.sub(r"([\\':])", r"\\\1", value)
    return re.sub(r"([\\'\[\],;])", r"\\\1", option_level)


# Images: ffmpeg opens a name such as ``%03d.png`` with its image2 demuxer as the pattern of a
# numbered sequence (001.png is read instead: VMAF 3.9 for 44.3) and others with a pipe demuxer
# that takes no pattern option; image2 with patterns off reads every one by its literal name.
IMAGE_SUFFIXES = frozenset(
    ".bmp .dpx .exr .hdr .j2c .j2k .jp2 .jpc .jpeg .jpg .jls .pam .pbm .pfm .pgm .pgmyuv .phm .png .ppm .qoi .sgi "
    ".tga .tif .tiff .webp .xbm .xpm .xwd".split()
)


def input_args(path: Path, raw: RawFormat | None) -> list[str]:
    """ffmpeg arguments that open one video, raw YUV, any container, or one image by its literal name."""
    if raw is None:
        literal = ["-f", "image2", "-pattern_type", "none"] if Path(path).suffix.lower() in IMAGE_SUFFIXES else []
        return [*literal, "-i", file_arg(path)]
    return [
        "-f", "rawvideo", "-pix_fmt", raw.pix_fmt, "-s", f"{raw.width}x{raw.height}",
        "-r", str(raw.fps), "-i", file_arg(path),
    ]  # fmt: skip


_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: [^,]+(?:\([^)]*\))?, (\w+)(?:\([^)]*\))?, (\d+)x(\d+)")
_FRAMES = re.compile(r"frame=\s*(\d+)")


def probe(path: Path, raw: RawFormat | None = None) -> VideoInfo:
    """Size, pixel format and frame count of a video, raising a one-line error if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise TinyVmafError(f"{path}: no such file")
    if raw is not None:
        return _probe_raw(path, raw)
    # Stream copy counts frames from packets: no decoding, so it is fast even for long clips.
    proc = run_tool(
        [
            ffmpeg_exe(),
            "-hide_banner",
            "-nostdin",
            *input_args(path, raw),
            "-map",
            "0:v:0",
            "-c",
            "copy",
            "-f",
            "null",
            "-",
        ]
    )
    stream = _STREAM.search(proc.stderr)
    if proc.returncode != 0 or stream is None:
        raise TinyVmafError(f"{path}: not a decodable video ({last_error_line(proc.stderr)})")
    counts = _FRAMES.findall(proc.stderr)
    n_frames = int(counts[-1]) if counts else 0
    if n_frames == 0:
        raise TinyVmafError(f"{path}: the video has zero frames")
    pix_fmt, width, height = stream.group(1), int(stream.group(2)), int(stream.group(3))
    return VideoInfo(width, height, pix_fmt, n_frames)


def _probe_raw(path: Path, raw: RawFormat) -> VideoInfo:
    size = path.stat().st_size
    frame = raw.frame_bytes
    if size == 0:
        raise TinyVmafError(f"{path}: the video has zero frames (empty file)")
    if size % frame:
        raise TinyVmafError(
            f"{path}: size {size} bytes is not a whole number of {raw.width}x{raw.height} "
            f"{raw.pix_fmt} frames ({frame} bytes each)"
        )
    return VideoInfo(raw.width, raw.height, raw.pix_fmt, size // frame)


def last_error_line(stderr: str) -> str:
    """The line of ffmpeg's stderr that says what went wrong, for one-line errors."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "rror" in line or "nvalid" in line or "could not" in line or "No such" in line:
            return line
    return lines[-1] if lines else "no output"


def run(args: list[str], what: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ffmpeg; with ``check``, raise a one-line error naming ``what`` if it fails."""
    proc = run_tool([ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", *args])
    if check and proc.returncode != 0:
        raise TinyVmafError(f"{what}: ffmpeg failed ({last_error_line(proc.stderr)})")
    return proc


# -- external tools (ffmpeg, vmaf), stoppable all at once ------------------------------------
_running: set[subprocess.Popen] = set()
_running_lock = threading.Lock()
_stopped = threading.Event()


def run_tool(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run an external tool to its end, output captured; ``tools_stopped_on_interrupt`` can end it early."""
    return run_tools([cmd])[0]


def run_tools(cmds: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Run tools side by side (a decoder feeding libvmaf through a pipe, say) until all end.

    The first to fail ends the others, which could otherwise wait for ever on a pipe that
    no process will open. Output goes to files, so a chatty tool never blocks on a full pipe.
    """
    with contextlib.ExitStack() as stack:
        outputs = [
            (stack.enter_context(tempfile.TemporaryFile()), stack.enter_context(tempfile.TemporaryFile())) for _ in cmds
        ]
        with _running_lock:
            if _stopped.is_set():
                raise TinyVmafError("interrupted")
            procs = [
                subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
                for cmd, (out, err) in zip(cmds, outputs)
            ]
            _running.update(procs)
        try:
            while any(p.poll() is None for p in procs):
                if any(p.returncode for p in procs):
                    for p in procs:
                        if p.poll() is None:
                            p.kill()
                time.sleep(0.005)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
            with _running_lock:
                _running.difference_update(procs)
        return [
            subprocess.CompletedProcess(cmd, p.returncode, _text(out), _text(err))
            for cmd, p, (out, err) in zip(cmds, procs, outputs)
        ]


def _text(file) -> str:
    file.seek(0)
    return file.read().decode("utf-8", errors="replace")


@contextlib.contextmanager
def tools_stopped_on_interrupt(pool: Executor) -> Iterator[None]:
    """On Ctrl-C or SIGTERM (or any error) inside the block, kill every running tool, refuse new
    ones until ``pool`` has dropped its queue and its threads have ended, so that they end at once
    and clean up their temporary folders. Tools run normally again afterwards."""
    _stopped.clear()
    try:
        yield
    except BaseException:
        with _running_lock:
            _stopped.set()
            for proc in _running:
                proc.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        _stopped.clear()
