"""The teacher cache against real libvmaf on tiny generated clips."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS
from omegaconf import OmegaConf

from tinyvmaf.corpus.dataset_file import DatasetFileCorpus
from tinyvmaf.corpus.default import DefaultCorpus
from tinyvmaf.corpus.directory import DirectoryCorpus
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.ffmpeg import ffmpeg_exe
from tinyvmaf.teacher import FEATURE_NAMES


def direct_libvmaf(ref: Path, dis: Path, log: Path, scale: str = "null") -> dict:
    """libvmaf run by hand, the way its documentation shows, without any tinyvmaf code."""
    graph = f"[0:v]{scale}[d];[d][1:v]libvmaf=log_fmt=json:log_path={log}:model='version=vmaf_v0.6.1'"
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(dis), "-i", str(ref), "-lavfi", graph, "-f", "null", "-"], check=True
    )
    return json.loads(log.read_text())


def test_cached_values_equal_a_direct_libvmaf_run(tiny_corpus, tmp_path, cache_for):
    corpus = DirectoryCorpus(tiny_corpus)
    cache = cache_for(tmp_path)
    report = cache.build(corpus)
    assert not report.failures and len(report.built) == 6
    table = cache.load(corpus)
    for asset, scale in (("Bars__crf45", "null"), ("Mandel__half", "scale=64:48:flags=bicubic")):
        log = direct_libvmaf(
            tiny_corpus / "ref" / f"{asset.split('__')[0]}.y4m",
            tiny_corpus / "dis" / f"{asset}.mp4",
            tmp_path / "log.json",
            scale,
        )
        expected_features = np.array([[f["metrics"][n] for n in FEATURE_NAMES] for f in log["frames"]])
        expected_scores = np.array([f["metrics"]["vmaf"] for f in log["frames"]])
        rows = table.clip == table.clips.index(asset)
        np.testing.assert_allclose(table.features[rows], expected_features, atol=1e-6)
        np.testing.assert_allclose(table.scores["vmaf_v0.6.1"][rows], expected_scores, atol=1e-6)
    assert table.features.shape == (6 * 8, 6)
    assert set(table.scores) == set(MODELS)
    assert (
        table.scores["vmaf_v0.6.1"][table.clip == table.clips.index("Bars__crf45")].mean()
        < table.scores["vmaf_v0.6.1"][table.clip == table.clips.index("Bars__crf20")].mean()
    )


def test_warm_build_runs_no_libvmaf_and_changes_recompute_only_what_they_touch(
    tiny_corpus, tmp_path, cache_for, make_clip
):
    corpus = DirectoryCorpus(tiny_corpus)
    cache_for(tmp_path).build(corpus)

    warm = cache_for(tmp_path)
    report = warm.build(corpus)
    assert warm.libvmaf.scored == [] and len(report.reused) == 6

    make_clip(
        tiny_corpus / "dis" / "Bars__crf45.mp4", "testsrc2", codec=["-c:v", "libx264", "-crf", "35", "-threads", "1"]
    )
    changed = cache_for(tmp_path)
    changed.build(corpus)
    assert changed.libvmaf.scored == ["Bars__crf45"]

    make_clip(tiny_corpus / "ref" / "Mandel.y4m", "mandelbrot", vf="hflip")
    ref_changed = cache_for(tmp_path)
    ref_changed.build(corpus)
    assert sorted(ref_changed.libvmaf.scored) == ["Mandel__crf20", "Mandel__crf45", "Mandel__half"]

    new_teachers = cache_for(tmp_path, models=[*MODELS, "vmaf_4k_v0.6.1"])
    new_teachers.build(corpus)
    assert len(new_teachers.libvmaf.scored) == 6
    assert "vmaf_4k_v0.6.1" in new_teachers.load(corpus).scores


def test_an_interrupted_build_resumes_where_it_stopped(tiny_corpus, tmp_path, cache_for):
    corpus = DirectoryCorpus(tiny_corpus)
    cache = cache_for(tmp_path)
    cache.build(corpus)
    lost = ["Bars__half", "Mandel__crf20"]
    for asset in lost:  # as if the process had died before these entries were renamed into place
        cache.entry_path(corpus, asset).unlink()
    (cache.entry_path(corpus, "Bars__crf20").parent / ".Bars__half.json.123.partial").write_text(
        '{"schema": 1, "key": "trunc'
    )
    resumed = cache_for(tmp_path)
    resumed.build(corpus)
    assert sorted(resumed.libvmaf.scored) == lost
    assert len(resumed.load(corpus)) == 48


def test_build_cache_command_prints_summary_and_writes_json(tiny_corpus, tmp_path, run_entry):
    proc = run_entry(
        "build_cache.py", "corpus=directory", f"corpus.root={tiny_corpus}", f"paths.data_dir={tmp_path}/data"
    )
    assert proc.returncode == 0, proc.stderr
    assert "Bars" in proc.stdout and "6 clip(s) computed" in proc.stdout
    summary = json.loads((tmp_path / "data" / "cache" / "corpus" / "summary.json").read_text())
    assert summary["total"]["clips"] == 6 and summary["total"]["frames"] == 48
    assert summary["sources"]["Bars"]["clips"] == 3
    assert summary["libvmaf_version"] and summary["backend"] == "ffmpeg-libvmaf"


# -- dataset files --------------------------------------------------------------------------


def write_dataset(make_clip, folder: Path, fmt: str, extra: str = "") -> Path:
    suffix = "_10" if fmt == "yuv420p10le" else ""
    make_clip(folder / "ref" / f"src{suffix}.yuv", "testsrc2")
    make_clip(folder / "dis" / f"src_noisy{suffix}.yuv", "testsrc2", vf="noise=alls=30")
    make_clip(folder / "dis" / f"src_blur{suffix}.yuv", "testsrc2", vf="boxblur=2")
    path = folder / "dataset.py"
    path.write_text(
        f"""# a small dataset in the format of NFLX_dataset_public.py
dataset_name = 'Tiny'
yuv_fmt = '{fmt}'
width = 64
height = 48
ref_dir = 'ref'
dis_dir = {str(folder / "dis")!r}
{extra}
ref_videos = [
    {{'content_id': 0, 'content_name': 'Src', 'path': ref_dir + '/src{suffix}.yuv'}},
]
dis_videos = [
    {{'content_id': 0, 'asset_id': 0, 'dmos': 3.5, 'path': dis_dir + '/src_noisy{suffix}.yuv'}},
    {{'content_id': 0, 'asset_id': 1, 'dmos': -1.0, 'path': 'src_blur{suffix}.yuv'}},
]
"""
    )
    return path


@pytest.mark.parametrize("fmt", ["yuv420p", "yuv420p10le"])
def test_dataset_file_corpus_8_and_10_bit(tmp_path, fmt, make_clip, cache_for):
    corpus = DatasetFileCorpus(write_dataset(make_clip, tmp_path, fmt))
    pairs = corpus.pairs()
    assert corpus.name == "Tiny" and [p.asset for p in pairs] == ["Src__0", "Src__1"]
    assert pairs[0].dmos == 3.5 and pairs[1].dmos == -1.0
    assert pairs[0].reference.path == tmp_path / "ref" / f"src{'_10' if '10' in fmt else ''}.yuv"
    assert pairs[1].distorted.raw.pix_fmt == fmt
    cache = cache_for(tmp_path)
    report = cache.build(corpus)
    assert not report.failures
    table = cache.load(corpus)
    assert len(table) == 16 and np.isfinite(table.features).all()
    noisy, blur = (table.scores["vmaf_v0.6.1"][table.clip == i].mean() for i in (0, 1))
    assert 0 <= noisy < 100 and 0 <= blur < 100


@pytest.mark.parametrize(
    "extra, found",
    [
        ("import os", "Import"),
        ("fps = __import__('os').system('true')", "__import__('os').system('true')"),
        ("def f(): pass", "FunctionDef"),
        ("x = width * 2", "width * 2"),
    ],
)
def test_dataset_file_with_anything_but_literal_assignments_is_refused(tmp_path, extra, found, make_clip):
    path = write_dataset(make_clip, tmp_path, "yuv420p", extra)
    with pytest.raises(
        TinyVmafError,
        match=rf"{path}:\d+: only literal assignments are allowed, found .*{__import__('re').escape(found)}",
    ):
        DatasetFileCorpus(path)


def test_default_corpus_generation_is_byte_for_byte_reproducible(tmp_path, compose):
    """Every source and an HRC, generated twice: the same bytes, hence the same teacher scores anywhere."""
    recipe = OmegaConf.to_container(compose("build_cache").corpus, resolve=True)
    sources = {name: {**spec, "frames": 5} for name, spec in recipe["sources"].items()}
    digests = []
    for run in ("a", "b"):
        corpus = DefaultCorpus(tmp_path / run, sources, recipe["hrcs"][-1:], n_jobs=2)
        corpus.generate()
        digests.append(
            {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / run).rglob("*.*"))}
        )
    assert len(digests[0]) == 2 * len(sources) and digests[0] == digests[1]
