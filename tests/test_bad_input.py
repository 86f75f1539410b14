"""Bad input: a one-line error naming the file and the problem, no partial entry, the rest built."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tinyvmaf.corpus import ClipPair, Video
from tinyvmaf.corpus.directory import DirectoryCorpus
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.ffmpeg import RawFormat
from tinyvmaf.teacher.vmaf_cli import VmafCli


def break_clips(corpus: Path, make_clip) -> dict[str, str]:
    """Spoil some distorted clips of a tiny corpus; returns asset -> expected message fragment."""
    dis = corpus / "dis"
    (dis / "Bars__crf45.mp4").write_bytes(os.urandom(3000))  # corrupt
    (dis / "Bars__half.mp4").write_bytes(b"")  # empty file
    make_clip(dis / "Mandel__crf20.mp4", "mandelbrot", frames=5)  # 5 frames vs 8 in the reference
    return {
        "Bars__crf45": "Bars__crf45.mp4: not a decodable video",
        "Bars__half": "Bars__half.mp4: not a decodable video",
        "Mandel__crf20": "Mandel__crf20.mp4: 5 frames, but its reference",
    }


def test_bad_clips_fail_alone_with_one_line_errors_and_no_entry(tiny_corpus, tmp_path, cache_for, make_clip):
    expected = break_clips(tiny_corpus, make_clip)
    corpus = DirectoryCorpus(tiny_corpus)
    cache = cache_for(tmp_path)
    report = cache.build(corpus)
    failures = {f.asset: f.error for f in report.failures}
    assert set(failures) == set(expected)
    for asset, fragment in expected.items():
        assert fragment in failures[asset] and "\n" not in failures[asset]
        assert not cache.entry_path(corpus, asset).exists()
    assert sorted(report.built) == ["Bars__crf20", "Mandel__crf45", "Mandel__half"]
    assert not list(cache.folder(corpus).rglob("*.partial"))
    assert len(cache.load(corpus)) == 3 * 8


def test_build_cache_command_lists_every_failure_and_exits_non_zero(tiny_corpus, tmp_path, run_entry, make_clip):
    expected = break_clips(tiny_corpus, make_clip)
    proc = run_entry(
        "build_cache.py", "corpus=directory", f"corpus.root={tiny_corpus}", f"paths.data_dir={tmp_path}/data"
    )
    assert proc.returncode == 1
    for asset, fragment in expected.items():
        assert f"failed {asset}: " in proc.stdout and fragment in proc.stdout
    assert "3 clip(s) failed" in proc.stdout and "3 clip(s) computed" in proc.stdout


def raw_pair(make_clip, tmp_path: Path, ref_bytes: bytes | None, dis_bytes: bytes | None) -> ClipPair:
    raw = RawFormat(64, 48)
    ref, dis = tmp_path / "ref.yuv", tmp_path / "dis.yuv"
    make_clip(ref, "testsrc2")
    make_clip(dis, "testsrc2", vf="noise=alls=20")
    if ref_bytes is not None:
        ref.write_bytes(ref_bytes)
    if dis_bytes is not None:
        dis.write_bytes(dis_bytes)
    return ClipPair("Src", "Src__x", Video(ref, raw), Video(dis, raw))


class OnePairCorpus:
    name = "one"

    def __init__(self, pair: ClipPair) -> None:
        self.pair = pair

    def pairs(self) -> list[ClipPair]:
        return [self.pair]


@pytest.mark.parametrize(
    "spoil, message",
    [
        ("missing", r"dis.yuv: no such file"),
        (
            "partial_frame",
            r"dis.yuv: size 18000 bytes is not a whole number of 64x48 yuv420p frames \(4608 bytes each\)",
        ),
        ("zero_frames", r"dis.yuv: the video has zero frames"),
    ],
)
def test_raw_yuv_problems(tmp_path, spoil, message, make_clip, cache_for):
    pair = raw_pair(
        make_clip,
        tmp_path,
        None,
        b"\0" * 18000 if spoil == "partial_frame" else b"" if spoil == "zero_frames" else None,
    )
    if spoil == "missing":
        pair.distorted.path.unlink()
    cache = cache_for(tmp_path)
    report = cache.build(OnePairCorpus(pair))
    assert len(report.failures) == 1
    assert re.search(message, report.failures[0].error)
    assert not cache.entry_path(OnePairCorpus(pair), "Src__x").exists()


def test_unknown_teacher_model_is_named(tiny_corpus, tmp_path, cache_for):
    cache = cache_for(tmp_path, models=["vmaf_v0.6.1", "vmaf_v9"])
    with pytest.raises(TinyVmafError, match="unknown teacher model 'vmaf_v9'"):
        cache.build(DirectoryCorpus(tiny_corpus))
    assert not (cache.folder(DirectoryCorpus(tiny_corpus)) / "clips").exists()


def test_unknown_teacher_model_from_the_command_line(tiny_corpus, tmp_path, run_entry):
    proc = run_entry(
        "build_cache.py",
        "corpus=directory",
        f"corpus.root={tiny_corpus}",
        "cache.models=[vmaf_v0.6.1,nope]",
        f"paths.data_dir={tmp_path}/data",
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "error: unknown teacher model 'nope': libvmaf has no such built-in model"
    )


def test_vmaf_path_that_is_not_libvmaf(tmp_path):
    script = tmp_path / "vmaf"
    script.write_text("#!/bin/sh\necho hello\n")
    with pytest.raises(TinyVmafError, match=rf"libvmaf.path={tmp_path}/missing: not an executable file"):
        VmafCli(tmp_path / "missing").version()
    with pytest.raises(TinyVmafError, match=rf"libvmaf.path={script}: not an executable file"):
        VmafCli(script).version()
    script.chmod(0o755)
    with pytest.raises(TinyVmafError, match=rf"libvmaf.path={script}: not libvmaf's vmaf command-line tool"):
        VmafCli(script).version()


def test_directory_corpus_problems(tmp_path, make_clip):
    with pytest.raises(TinyVmafError, match=rf"{tmp_path}/ref: no such folder"):
        DirectoryCorpus(tmp_path).pairs()
    make_clip(tmp_path / "ref" / "A.y4m", "testsrc2")
    make_clip(tmp_path / "dis" / "B__x.mp4", "testsrc2")
    with pytest.raises(TinyVmafError, match=r"B__x.mp4: no reference .*/ref/B\.\* for source 'B'"):
        DirectoryCorpus(tmp_path).pairs()
