"""The teacher cache against real libvmaf on tiny generated clips."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS
from helpers import LAUNCHERS
from omegaconf import OmegaConf

from tinyvmaf.cache import TeacherCache, shard_of
from tinyvmaf.corpus import ClipPair, Video
from tinyvmaf.corpus.dataset_file import DatasetFileCorpus
from tinyvmaf.corpus.directory import DirectoryCorpus
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.ffmpeg import RawFormat, ffmpeg_exe
from tinyvmaf.files import folder_lock
from tinyvmaf.teacher import FEATURE_NAMES
from tinyvmaf.teacher.ffmpeg_filter import FfmpegLibvmaf


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

    @property
    def location(self) -> Path:
        return self.pair.reference.path.parent

    def pairs(self) -> list[ClipPair]:
        return [self.pair]


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def children_of(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


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


def test_a_full_disk_while_consolidating_is_one_line_after_the_failures_and_a_rerun_resumes(
    tiny_corpus, tmp_path, cache_for, monkeypatch, capsys
):
    import errno

    from tinyvmaf.cache import build_cache

    (tiny_corpus / "dis" / "Bars__broken.mp4").write_bytes(b"not a video")
    cfg = OmegaConf.create(
        {"corpus": {"_target_": "tinyvmaf.corpus.directory.DirectoryCorpus", "root": str(tiny_corpus)},
         "cache": {"_target_": "tinyvmaf.cache.TeacherCache", "root": str(tmp_path / "cache"),
                   "libvmaf": {"_target_": "tinyvmaf.teacher.ffmpeg_filter.FfmpegLibvmaf"},
                   "models": ["vmaf_v0.6.1"], "n_jobs": 2}}
    )  # fmt: skip

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(TinyVmafError, match=r"frames.npz cannot be written \(No space left on device\); every clip"):
        build_cache(cfg)
    assert "failed Bars__broken" in capsys.readouterr().out  # the failure list came first
    entries = list((tmp_path / "cache" / "corpus" / "clips").glob("*.json"))
    assert len(entries) == 6 and not list((tmp_path / "cache").rglob("frames.npz"))
    monkeypatch.undo()
    assert build_cache(cfg) == 1  # the broken clip still fails; the other six are consolidated, none recomputed
    assert "0 clip(s) computed, 6 reused" in capsys.readouterr().out


@pytest.mark.slow
def test_build_cache_multirun_builds_every_corpus(tiny_corpus, make_clip, run_entry, tmp_path):
    other = tmp_path / "other"
    make_clip(other / "ref" / "Solo.y4m", "testsrc2")
    make_clip(other / "dis" / "Solo__noisy.mp4", "testsrc2", vf="noise=alls=20")
    proc = run_entry(
        "build_cache.py",
        "-m",
        "corpus=directory",
        f"corpus.root={tiny_corpus},{other}",
        f"paths.data_dir={tmp_path}/data",
        *LAUNCHERS["joblib"],
    )
    assert proc.returncode == 0, proc.stderr
    assert {p.parent.name for p in (tmp_path / "data" / "cache").glob("*/summary.json")} == {"corpus", "other"}
    (other / "dis" / "Solo__noisy.mp4").write_bytes(b"broken")
    proc = run_entry(
        "build_cache.py",
        "-m",
        "corpus=directory",
        f"corpus.root={tiny_corpus},{other}",
        f"paths.data_dir={tmp_path}/data",
    )
    assert proc.returncode == 1 and "1 of 2 jobs failed" in proc.stderr and "exit status 1" in proc.stderr


@pytest.mark.slow
def test_a_sharded_build_over_two_jobs_equals_a_single_build(tiny_corpus, run_entry, tmp_path):
    corpus = ["corpus=directory", f"corpus.root={tiny_corpus}", "cache.models=[vmaf_v0.6.1]"]
    single = run_entry("build_cache.py", *corpus, f"paths.data_dir={tmp_path}/single")
    assert single.returncode == 0, single.stderr
    sharded = run_entry(
        "build_cache.py",
        "-m",
        *corpus,
        f"paths.data_dir={tmp_path}/sharded",
        "cache.num_shards=2",
        "cache.shard=0,1",
        *LAUNCHERS["joblib"],
    )
    assert sharded.returncode == 0, sharded.stderr
    assert "consolidated 6 clip(s) of corpus 'corpus'" in sharded.stdout
    with (
        np.load(tmp_path / "single" / "cache" / "corpus" / "frames.npz") as a,
        np.load(tmp_path / "sharded" / "cache" / "corpus" / "frames.npz") as b,
    ):
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    # an entry from a machine with another libvmaf: the consolidation refuses the mixed cache
    entry = next((tmp_path / "sharded" / "cache" / "corpus" / "clips").glob("*.json"))
    document = json.loads(entry.read_text())
    entry.write_text(json.dumps({**document, "libvmaf_version": "0.0.0-other", "key": "0" * 64}))
    proc = run_entry("build_cache.py", *corpus, f"paths.data_dir={tmp_path}/sharded", "compute=false")
    assert proc.returncode == 1 and "computed with libvmaf 0.0.0-other, but this machine has" in proc.stderr


def test_shards_split_the_corpus_by_cost(tiny_corpus, make_clip):
    make_clip(tiny_corpus / "ref" / "Long.y4m", "testsrc2", frames=40)
    make_clip(tiny_corpus / "dis" / "Long__a.mp4", "testsrc2", frames=40)
    pairs = DirectoryCorpus(tiny_corpus).pairs()
    shards = [shard_of(pairs, i, 2) for i in range(2)]
    assert sorted(p.asset for s in shards for p in s) == sorted(p.asset for p in pairs)  # each pair in one shard
    # longest first to the lightest shard: 40 frames + 8 against 5 x 8, not 3 clips against 4
    assert "Long__a" in {p.asset for p in shards[0]} and (len(shards[0]), len(shards[1])) == (2, 5)
    with pytest.raises(TinyVmafError, match=r"cache.shard=2: must be an integer in \[0, 2\)"):
        TeacherCache("/tmp/x", None, ["vmaf_v0.6.1"], num_shards=2, shard=2)


def test_clip_names_with_quotes_colons_commas_and_brackets_work_end_to_end(tmp_path, make_clip, cache_for, monkeypatch):
    """The same clips under hostile and plain names: the same features, nothing written elsewhere."""
    odd, plain = tmp_path / "odd", tmp_path / "plain"
    names = ["a:b,c;d [x]", "S__z:log_path=x", "Bob's clip", "é\\'=%"]
    make_clip(odd / "ref" / "Src's [1], a;b.y4m", "testsrc2")
    make_clip(plain / "ref" / "Src.y4m", "testsrc2")
    for i, name in enumerate(names):
        make_clip(
            odd / "dis" / f"Src's [1], a;b__{name}.mp4",
            "testsrc2",
            codec=["-c:v", "libx264", "-crf", str(20 + 8 * i), "-threads", "1"],
        )
        make_clip(
            plain / "dis" / f"Src__{i}.mp4",
            "testsrc2",
            codec=["-c:v", "libx264", "-crf", str(20 + 8 * i), "-threads", "1"],
        )
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = files_under(tmp_path)
    tables = []
    for root in (odd, plain):
        cache = cache_for(tmp_path / root.name)
        report = cache.build(DirectoryCorpus(root))
        assert not report.failures, report.failures
        tables.append(cache.load(DirectoryCorpus(root)))
    odd_table, plain_table = tables
    assert odd_table.sources == ["Src's [1], a;b"] and sorted(odd_table.clips) == sorted(
        f"Src's [1], a;b__{n}" for n in names
    )
    for i, name in enumerate(names):
        rows = odd_table.clip == odd_table.clips.index(f"Src's [1], a;b__{name}")
        np.testing.assert_array_equal(
            odd_table.features[rows], plain_table.features[plain_table.clip == plain_table.clips.index(f"Src__{i}")]
        )
    written = files_under(tmp_path) - before
    assert written and all(
        p.is_relative_to(tmp_path / "odd" / "cache") or p.is_relative_to(tmp_path / "plain" / "cache") for p in written
    )
    assert not list(work.iterdir())  # no x.json from a name parsed as a filter option


def test_names_from_a_dataset_file_never_leave_the_cache(tmp_path, make_clip, cache_for, monkeypatch):
    make_clip(tmp_path / "ref.yuv", "testsrc2")
    make_clip(tmp_path / "dis.yuv", "testsrc2", vf="noise=alls=20")
    outside = tmp_path / "outside"
    dataset = tmp_path / "dataset.py"
    dataset.write_text(
        f"dataset_name = {str(outside)!r}\nyuv_fmt = 'yuv420p'\nwidth = 64\nheight = 48\n"
        "ref_videos = [{'content_id': 0, 'content_name': '../../../escape', 'path': 'ref.yuv'}]\n"
        "dis_videos = [{'content_id': 0, 'asset_id': '../../x', 'path': 'dis.yuv'}]\n"
    )
    monkeypatch.chdir(tmp_path)
    cache = cache_for(tmp_path / "store")
    corpus = DatasetFileCorpus(dataset)
    assert not cache.build(corpus).failures
    assert not outside.exists() and not (tmp_path / "escape").exists()
    assert all(p.is_relative_to(tmp_path / "store" / "cache") for p in files_under(tmp_path) if p.parent != tmp_path)
    assert cache.load(corpus).sources == ["../../../escape"]


def _edited(edit):
    return lambda entry: entry.write_text(edit(entry.read_text()))


def _replaced_by(make):
    return lambda entry: (entry.unlink(), make(entry))


@pytest.mark.parametrize(
    "damage, said",
    [
        (_edited(lambda text: text[:200]), "does not parse"),  # truncated after its first bytes: the key survives
        (_edited(lambda text: text.replace('"n_frames": 8', '"n_frames": 9')), "shapes disagree"),
        (_edited(lambda text: text.replace('"schema": 2', '"schema": "x"')), "is not a schema-2 cache entry"),
        # Read whole, a link to /dev/zero would fill memory, and a FIFO would hang the build.
        (_replaced_by(lambda entry: entry.symlink_to("/dev/zero")), "(a symbolic link)"),
        (_replaced_by(os.mkfifo), "Bars__crf45.json: not a regular file"),
    ],
    ids=["truncated", "frame count", "schema", "link to /dev/zero", "FIFO"],
)
def test_a_damaged_entry_is_recomputed_and_reported(tiny_corpus, tmp_path, cache_for, damage, said):
    corpus = DirectoryCorpus(tiny_corpus)
    cache_for(tmp_path).build(corpus)
    good = cache_for(tmp_path).load(corpus)
    entry = cache_for(tmp_path).entry_path(corpus, "Bars__crf45")
    damage(entry)
    cache = cache_for(tmp_path)
    report = cache.build(corpus)
    assert cache.libvmaf.scored == ["Bars__crf45"] and [r.asset for r in report.repaired] == ["Bars__crf45"]
    assert said in report.repaired[0].error
    assert not report.failures and len(report.reused) == 5 and entry.is_file() and not entry.is_symlink()
    np.testing.assert_array_equal(cache.load(corpus).features, good.features)


def test_build_cache_command_says_what_it_repaired(tiny_corpus, tmp_path, run_entry):
    args = ("build_cache.py", "corpus=directory", f"corpus.root={tiny_corpus}", f"paths.data_dir={tmp_path}/data")
    assert run_entry(*args).returncode == 0
    entry = tmp_path / "data" / "cache" / "corpus" / "clips" / "Mandel__half.json"
    entry.write_bytes(entry.read_bytes()[:100])
    proc = run_entry(*args)
    assert proc.returncode == 0, proc.stderr
    assert (
        "repaired Mandel__half: Mandel__half.json does not parse" in proc.stdout
        and "1 clip(s) computed, 5 reused" in proc.stdout
    )


@pytest.mark.slow
def test_sigterm_stops_a_cache_build_its_ffmpeg_children_and_their_temporary_folders(
    tmp_path, make_clip, run_entry, repo
):
    root = tmp_path / "corpus"
    make_clip(root / "ref" / "Big.y4m", "testsrc2", frames=300, size="640x360")
    for i in range(6):
        make_clip(
            root / "dis" / f"Big__{i}.mp4",
            "testsrc2",
            frames=300,
            size="640x360",
            codec=["-c:v", "libx264", "-preset", "ultrafast", "-crf", str(20 + 4 * i), "-threads", "1"],
        )
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    args = [
        "build_cache.py",
        "corpus=directory",
        f"corpus.root={root}",
        f"paths.data_dir={tmp_path}/data",
        "n_jobs=2",
        "cache.models=[vmaf_v0.6.1]",
    ]
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen(
        [os.sys.executable, str(repo / args[0]), *args[1:], f"hydra.run.dir={tmp_path}/h"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    tools: set[int] = set()
    while time.monotonic() < deadline and not (len(tools) >= 2 and list(tmp.glob("tinyvmaf-*"))):
        tools = children_of(proc.pid)
        time.sleep(0.05)
    assert len(tools) >= 2 and list(tmp.glob("tinyvmaf-*")), "the build never ran two libvmaf jobs at once"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and stderr.strip().endswith("error: interrupted")
    assert not any(Path(f"/proc/{pid}").exists() for pid in tools)
    assert not list(tmp.iterdir())
    finished = list((tmp_path / "data" / "cache" / "corpus" / "clips").glob("*.json"))
    assert len(finished) < 6, "the build went on after SIGTERM"
    rerun = subprocess.run(
        [os.sys.executable, str(repo / args[0]), *args[1:], f"hydra.run.dir={tmp_path}/h"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0 and "repaired" not in rerun.stdout
    assert f"{6 - len(finished)} clip(s) computed, {len(finished)} reused" in rerun.stdout


def _object_arrays(npz):
    np.savez(npz, manifest=np.array(np.load(npz)["manifest"]), models=np.array([{"a": 1}], dtype=object))


@pytest.mark.parametrize(
    "damage, said",
    [
        (
            lambda npz: npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2]),
            "damaged (BadZipFile: File is not a zip file)",
        ),
        (_object_arrays, "damaged (ValueError: Object arrays cannot be loaded when allow_pickle=False)"),
        (lambda npz: (npz.unlink(), os.mkfifo(npz)), "not a regular file"),
    ],
    ids=["truncated", "object arrays", "a FIFO"],
)
def test_a_damaged_frames_npz_is_one_line_then_written_anew_by_the_next_build(
    tiny_corpus, tmp_path, cache_for, damage, said
):
    corpus = DirectoryCorpus(tiny_corpus)
    cache_for(tmp_path).build(corpus)
    good = cache_for(tmp_path).load(corpus)
    npz = cache_for(tmp_path).folder(corpus) / "frames.npz"
    damage(npz)
    with pytest.raises(TinyVmafError) as refused:
        cache_for(tmp_path).load(corpus)
    assert str(refused.value) == f"{npz}: {said}; build_cache.py writes it anew"
    cache = cache_for(tmp_path)
    report = cache.build(corpus)
    assert cache.libvmaf.scored == [] and len(report.reused) == 6 and not report.failures
    np.testing.assert_array_equal(cache.load(corpus).features, good.features)


def test_a_display_measurement_has_a_cache_of_its_own_and_the_native_one_stays_valid(tiny_corpus, tmp_path, cache_for):
    corpus = DirectoryCorpus(tiny_corpus)
    cache_for(tmp_path).build(corpus)
    native = cache_for(tmp_path).folder(corpus)
    before = {p: p.read_bytes() for p in native.rglob("*") if p.is_file()}
    at_display = cache_for(tmp_path, ["vmaf_v0.6.1"], display=[128, 96], bit_depth=10)
    report = at_display.build(corpus)
    assert len(report.built) == 6 and at_display.folder(corpus) == native.parent / "@128x96p10" / native.name
    assert {p: p.read_bytes() for p in native.rglob("*") if p.is_file()} == before
    again = cache_for(tmp_path)
    assert len(again.build(corpus).reused) == 6 and again.libvmaf.scored == []
    scaled, plain = at_display.load(corpus), again.load(corpus)
    assert np.abs(scaled.scores["vmaf_v0.6.1"] - plain.scores["vmaf_v0.6.1"]).max() > 1


def _one_clip_corpus(root: Path, lavfi: str, make_clip) -> Path:
    make_clip(root / "ref" / "Src.y4m", lavfi, frames=4)
    make_clip(
        root / "dis" / "Src__crf40.mp4", lavfi, frames=4, codec=["-c:v", "libx264", "-crf", "40", "-threads", "1"]
    )
    return root


def _start_builds(data: Path, *corpora: Path, names: tuple[str, ...] = ()) -> list[tuple[subprocess.Popen, Path]]:
    """build_cache.py on each corpus as real processes started together, one cache under ``data``;
    each with its output file."""
    started = []
    for i, root in enumerate(corpora):
        named = [f"corpus.name={names[i]}"] if names else []
        args = [
            "corpus=directory",
            f"corpus.root={root}",
            *named,
            f"paths.data_dir={data}",
            "cache.models=[vmaf_v0.6.1]",
        ]
        out = data.parent / f"build{i}-{len(names)}.out"
        with open(out, "w") as f:
            proc = subprocess.Popen(
                [os.sys.executable, str(Path(__file__).parents[1] / "build_cache.py"), *args, f"hydra.run.dir={data}/h{i}"],
                stdout=f, stderr=subprocess.STDOUT, text=True, cwd=data.parent,
            )  # fmt: skip
        started.append((proc, out))
    return started


def _finished(started: list[tuple[subprocess.Popen, Path]]) -> list[tuple[int, str]]:
    return [(proc.wait(timeout=300), out.read_text()) for proc, out in started]


@pytest.mark.parametrize("round_", range(3))
def test_two_corpora_of_one_name_built_at_once_never_share_a_cache(tmp_path, make_clip, round_):
    """Two folders both called ``clips`` (other content, same clip names), built at once into one
    cache: one is refused in one line, the other's entries are its own; named apart, both build."""
    a = _one_clip_corpus(tmp_path / "a" / "clips", "testsrc2", make_clip)
    b = _one_clip_corpus(tmp_path / "b" / "clips", "mandelbrot", make_clip)
    data = tmp_path / "data"
    results = _finished(_start_builds(data, a, b))
    assert sorted(code for code, _ in results) == [0, 1], results
    winner, loser = (a, b) if results[0][0] == 0 else (b, a)
    refused = next(out for code, out in results if code == 1)
    assert refused.strip().splitlines()[-1] == (
        f"error: {data}/cache/clips: holds the cache of corpus 'clips' at {winner}; the corpus at {loser} "
        "has the same name: set corpus.name to tell them apart"
    )
    cache = TeacherCache(data / "cache", FfmpegLibvmaf(), ["vmaf_v0.6.1"])
    report = cache.build(DirectoryCorpus(winner), compute=False)
    assert len(report.reused) == 1 and not report.failures  # every entry is the winner's own
    results = _finished(_start_builds(data, winner, loser, names=("clips", "clips_2")))
    assert [code for code, _ in results] == [0, 0], results


def test_two_builds_of_one_corpus_at_once_take_turns_and_compute_each_clip_once(tiny_corpus, tmp_path):
    folder = tmp_path / "data" / "cache" / "corpus"
    folder.mkdir(parents=True)
    with folder_lock(folder):  # held until both builds wait on it, so they surely overlap
        started = _start_builds(tmp_path / "data", tiny_corpus, tiny_corpus)
        deadline = time.monotonic() + 120
        while not all("waiting for another build" in out.read_text() for _, out in started):
            assert time.monotonic() < deadline and all(p.poll() is None for p, _ in started), _finished(started)
            time.sleep(0.1)
    results = _finished(started)
    assert [code for code, _ in results] == [0, 0], results
    said = sorted(re.search(r"(\d+) clip\(s\) computed, (\d+) reused", out).groups() for _, out in results)
    assert said == [("0", "6"), ("6", "0")]
