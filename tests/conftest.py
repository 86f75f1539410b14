"""Tiny real clips, made by real ffmpeg, for tests that run real libvmaf."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tinyvmaf import ffmpeg

SIZE = "64x48"
FRAMES = 8


def make_clip(path: Path, lavfi: str, frames: int = FRAMES, vf: str = "null", codec: list[str] | None = None) -> Path:
    """Encode ``frames`` frames of an ffmpeg lavfi source; format by extension (.y4m, .yuv, .mp4)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".y4m": ["-f", "yuv4mpegpipe"], ".yuv": ["-f", "rawvideo"], ".mp4": ["-f", "mp4"]}[path.suffix]
    pix = "yuv420p10le" if "10" in path.stem.split("_")[-1:] else "yuv420p"
    codec = codec or (["-c:v", "libx264", "-threads", "1"] if path.suffix == ".mp4" else [])
    ffmpeg.run(
        ["-f", "lavfi", "-i", f"{lavfi}=size={SIZE}:rate=25", "-vf", f"{vf},format={pix}",
         "-frames:v", str(frames), *codec, *fmt, str(path)],
        what=str(path),
    )  # fmt: skip
    return path


@pytest.fixture(scope="session")
def tiny_corpus_master(tmp_path_factory) -> Path:
    """ref/ + dis/ folder: two sources, three distortions each (one at half size)."""
    root = tmp_path_factory.mktemp("tiny_corpus")
    for source, lavfi in (("Bars", "testsrc2"), ("Mandel", "mandelbrot")):
        make_clip(root / "ref" / f"{source}.y4m", lavfi)
        make_clip(root / "dis" / f"{source}__crf20.mp4", lavfi, codec=["-c:v", "libx264", "-crf", "20", "-threads", "1"])
        make_clip(root / "dis" / f"{source}__crf45.mp4", lavfi, codec=["-c:v", "libx264", "-crf", "45", "-threads", "1"])
        make_clip(root / "dis" / f"{source}__half.mp4", lavfi, vf="scale=32:24")
    return root


@pytest.fixture
def tiny_corpus(tiny_corpus_master, tmp_path) -> Path:
    """A private copy, so a test may break or change its files."""
    return Path(shutil.copytree(tiny_corpus_master, tmp_path / "corpus"))
