"""The ffmpeg binary shipped by imageio-ffmpeg, and the few things every stage asks of it.

It decodes, scales and encodes every clip, and its ``libvmaf`` filter is the default teacher.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import imageio_ffmpeg

from tinyvmaf.errors import TinyVmafError

# Bytes per pixel of the raw YUV formats libvmaf takes (4:2:0, 8 or 10 bits).
RAW_BYTES_PER_PIXEL = {"yuv420p": 1.5, "yuv420p10le": 3.0}


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
        if self.pix_fmt not in RAW_BYTES_PER_PIXEL:
            raise TinyVmafError(
                f"pix_fmt {self.pix_fmt!r} is not supported; use one of {sorted(RAW_BYTES_PER_PIXEL)}"
            )
        return int(self.width * self.height * RAW_BYTES_PER_PIXEL[self.pix_fmt])


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    pix_fmt: str
    n_frames: int


def input_args(path: Path, raw: RawFormat | None) -> list[str]:
    """ffmpeg arguments that open one video, raw YUV or any container."""
    if raw is None:
        return ["-i", str(path)]
    return [
        "-f", "rawvideo", "-pix_fmt", raw.pix_fmt, "-s", f"{raw.width}x{raw.height}",
        "-r", str(raw.fps), "-i", str(path),
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
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", *input_args(path, raw),
         "-map", "0:v:0", "-c", "copy", "-f", "null", "-"],
        capture_output=True, text=True, errors="replace",
    )  # fmt: skip
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


def run(args: list[str], what: str) -> None:
    """Run ffmpeg quietly; raise a one-line error naming ``what`` if it fails."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args],
        capture_output=True, text=True, errors="replace",
    )  # fmt: skip
    if proc.returncode != 0:
        raise TinyVmafError(f"{what}: ffmpeg failed ({last_error_line(proc.stderr)})")
