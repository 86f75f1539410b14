"""Input from other people: names that must stay names, dataset files and logs that must not hurt,
options that must be checked, damaged caches and killed sweeps that must not leave a wrong result."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from tinyvmaf.corpus.dataset_file import DatasetFileCorpus, read_dataset_file
from tinyvmaf.corpus.directory import DirectoryCorpus
from tinyvmaf.digest import sweep_status
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.files import config_key, safe_name
from tinyvmaf.onnx_io import OnnxVmaf
from tinyvmaf.score import score_log
from tinyvmaf.training import train

HOSTILE = st.text(
    alphabet=st.sampled_from(list("ab./\\'\":,;[]=%\n\t ~.-_é中\x00")) | st.characters(), min_size=1, max_size=300
)


def hydra_string(value: str) -> str:
    """A value as a quoted Hydra override string (README: how to pass paths with odd characters)."""
    return '"' + value.replace('"', '\\"') + '"'


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


# -- names ---------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(HOSTILE, HOSTILE)
@example("'", "%27")  # an encoded character against its own code
@example(".x", "%2Ex")
@example("a" * 300, "a" * 301)  # cut names
@example("a" * 300 + "b", "a" * 300 + "c")
def test_safe_names_stay_in_their_folder_are_stable_and_never_collide(a, b):
    for name in (a, b):
        safe = safe_name(name)
        assert safe == safe_name(name) and "/" not in safe and "\x00" not in safe
        assert not safe.startswith(".") and len(safe.encode()) <= 200
        folder = Path("/cache/clips")
        assert (folder / f"{safe}.json").resolve().parent == folder
        assert re.fullmatch(r"[A-Za-z0-9_-]+", config_key(name)) and config_key(name) == config_key(name)
    if a != b:
        assert safe_name(a) != safe_name(b) and config_key(a) != config_key(b)


def test_readable_names_are_kept_and_empty_ones_refused():
    assert safe_name("BigBuckBunny__full_crf18") == "BigBuckBunny__full_crf18"
    assert safe_name("..") == "%2E." and safe_name("Bob's clip") == "Bob%27s%20clip"
    with pytest.raises(TinyVmafError, match="corpus name: an empty name cannot be used"):
        safe_name("", "corpus name")


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


def test_score_command_takes_a_hostile_pair_name(tmp_path, make_clip, run_entry, repo):
    ref = make_clip(tmp_path / "in" / "Bob's ref [1].y4m", "testsrc2")
    dis = make_clip(
        tmp_path / "in" / "S__z:log_path=x, a;b.mp4",
        "testsrc2",
        codec=["-c:v", "libx264", "-crf", "35", "-threads", "1"],
    )
    proc = run_entry(
        "score.py",
        f"reference={hydra_string(str(ref))}",
        f"distorted={hydra_string(str(dis))}",
        "format=json",
        f"onnx={repo}/models/vmaf_tiny_v1.onnx",
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["frames"]) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hydra", "in"]


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


# -- dataset files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, refusal",
    [
        ("a = 'xx'\n" + "a = a + a\n" * 40, r":21: a value of 2097152 characters or items, more than 1048576"),
        ("a = " + "[" * 40 + "]" * 40, r":1: nested more than 32 deep"),
        ("a = 1\nb = " + " + ".join(["a"] * 100000), r": too deeply nested or too large to read"),
        ("a = {[1]: 2}", r":1: a dict key must be a string or a number, found list"),
        ("a = 1 + 'a'", r":1: \+ joins strings, lists or numbers of one kind, found number \+ str"),
        ("a = b'x'", r":1: only literal assignments are allowed, found \"b'x'\""),
        ("a = {**b}", r":1: only literal assignments are allowed"),
        ("x = 1\nimport os", r":2: only literal assignments are allowed, found Import"),
    ],
)
def test_dataset_reader_refusals_are_one_line_with_file_and_line(tmp_path, text, refusal):
    path = tmp_path / "d.py"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(TinyVmafError, match=f"^{path}{refusal}") as caught:
        read_dataset_file(path)
    assert time.perf_counter() - start < 1.0 and "\n" not in str(caught.value)


def test_dataset_file_size_is_capped(tmp_path):
    path = tmp_path / "big.py"
    path.write_text("a = '" + "x" * (17 * 2**20) + "'\n")
    with pytest.raises(TinyVmafError, match=r"big.py: \d+ bytes, more than a dataset file may hold"):
        read_dataset_file(path)


LITERALS = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(LITERALS)
def test_literal_files_read_as_python_reads_them(tmp_path_factory, value):
    path = tmp_path_factory.mktemp("lit") / "d.py"
    path.write_text(f"value = {value!r}\n")
    assert read_dataset_file(path).values["value"] == ast.literal_eval(repr(value))


@pytest.mark.parametrize(
    "change, message",
    [
        ("width = 'abc'", r"d.py:3: width must be int, found 'abc'"),
        ("width = -4", r"d.py:3: width must be > 0, found -4"),
        ("width = True", r"d.py:3: width must be int, found True"),
        ("yuv_fmt = 'rgb24'", r"d.py:2: yuv_fmt 'rgb24' is not supported; use one of yuv420p, yuv420p10le"),
        ("dataset_name = ''", r"d.py:1: dataset_name is empty"),
        (
            "ref_videos = [{'content_id': 0, 'content_name': 'S', 'path': 7}]",
            r"d.py:\d+: ref_videos\[0\]: path must be str, found 7",
        ),
        ("dis_videos = ['x']", r"d.py:\d+: dis_videos\[0\]: must be a dict, found 'x'"),
        (
            "dis_videos = [{'content_id': 5, 'path': 'd.yuv'}]",
            r"d.py:\d+: dis_videos\[0\]: content_id 5 names no ref_videos entry",
        ),
        (
            "dis_videos = [{'content_id': 0, 'path': 'd.yuv', 'dmos': 'good'}]",
            r"d.py:\d+: dis_videos\[0\]: dmos must be int or float or NoneType, found 'good'",
        ),
    ],
)
def test_dataset_fields_are_type_checked(tmp_path, change, message):
    lines = {
        "dataset_name": "dataset_name = 'D'", "yuv_fmt": "yuv_fmt = 'yuv420p'", "width": "width = 64", "height": "height = 48",
        "ref_videos": "ref_videos = [{'content_id': 0, 'content_name': 'S', 'path': 'r.yuv'}]",
        "dis_videos": "dis_videos = [{'content_id': 0, 'path': 'd.yuv'}]",
    }  # fmt: skip
    lines[change.split(" =")[0]] = change
    path = tmp_path / "d.py"
    path.write_text("\n".join(lines.values()) + "\n")
    with pytest.raises(TinyVmafError, match=message):
        DatasetFileCorpus(path).pairs()


def test_entry_points_print_errors_raised_inside_instantiate_as_one_line(tmp_path, run_entry):
    proc = run_entry(
        "build_cache.py", "corpus=dataset_file", f"corpus.path={tmp_path}/missing.py", f"paths.data_dir={tmp_path}/data"
    )
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {tmp_path}/missing.py: no such dataset file"
    proc = run_entry("build_cache.py", "corpus=directory", f"paths.data_dir={tmp_path}/data")
    assert (
        proc.returncode == 1
        and proc.stderr.strip() == "error: corpus.root: missing value; give it on the command line (corpus.root=...)"
    )


# -- training options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, message",
    [
        ("trainer.max_epochs=0", "trainer.max_epochs=0: must be an integer >= 1"),
        ("trainer.max_epochs=-1", "trainer.max_epochs=-1: must be an integer >= 1"),
        ("data.batch_size=0", "data.batch_size=0: must be an integer >= 1"),
        ("data.batch_size=-5", "data.batch_size=-5: must be an integer >= 1"),
        ("model.optimizer.lr=nan", "model.optimizer.lr=nan: must be a finite number > 0"),
        ("model.optimizer.lr=0", "model.optimizer.lr=0: must be a finite number > 0"),
        ("data.augment.edge=1.5", r"data.augment.edge=1.5: must be in \[0, 1\]"),
        ("data.augment.amount=-1", "data.augment.amount=-1: must be a finite number >= 0"),
    ],
)
def test_training_options_are_checked_before_anything_is_logged(tiny_overrides, compose, tmp_path, option, message):
    cfg = compose("train", *tiny_overrides, "fold.heldout=Bars", "model.scheduler=null", option)
    with pytest.raises(TinyVmafError, match=f"^{message}$"):
        train(cfg)
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_a_bad_option_is_one_line_from_the_command_line(tiny_overrides, run_entry):
    proc = run_entry("train.py", *tiny_overrides, "trainer.max_epochs=0")
    assert proc.returncode == 1 and proc.stderr.strip() == "error: trainer.max_epochs=0: must be an integer >= 1"


# -- damaged cache entries -----------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[:200],  # truncated after its first bytes: the key survives
        lambda text: text.replace('"n_frames": 8', '"n_frames": 9'),
        lambda text: text.replace('"schema": 2', '"schema": "x"'),
    ],
)
def test_a_damaged_entry_is_recomputed_and_reported(tiny_corpus, tmp_path, cache_for, damage):
    corpus = DirectoryCorpus(tiny_corpus)
    cache_for(tmp_path).build(corpus)
    good = cache_for(tmp_path).load(corpus)
    entry = cache_for(tmp_path).entry_path(corpus, "Bars__crf45")
    entry.write_text(damage(entry.read_text()))
    cache = cache_for(tmp_path)
    report = cache.build(corpus)
    assert cache.libvmaf.scored == ["Bars__crf45"] and [r.asset for r in report.repaired] == ["Bars__crf45"]
    assert not report.failures and len(report.reused) == 5
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


# -- interrupted builds and sweeps ---------------------------------------------------------


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


def test_a_rerun_sweep_trains_only_what_it_lacks(tiny_overrides, compose, capsys):
    base = [*tiny_overrides, "arch=linear", "sweep_id=S"]
    first = train(compose("train", *base, "fold.heldout=Bars"))
    again = train(compose("train", *base, "fold.heldout=Bars"))
    train(compose("train", *base, "fold.heldout=Mandel"))
    assert again == first and "linear fold=Bars: finished earlier in sweep S" in capsys.readouterr().out
    cfg = compose("train", *base)
    client = MlflowClient(cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert sorted(r.data.params["fold"] for r in runs) == ["Bars", "Mandel"]
    with pytest.raises(TinyVmafError, match="sweep_id=S: linear fold=Bars already finished there with another recipe"):
        train(compose("train", *base, "fold.heldout=Bars", "model.optimizer.lr=1e-3"))


def test_the_digest_states_missing_killed_and_duplicate_runs(tiny_overrides, compose, run_entry, tmp_path):
    base = [*tiny_overrides, "arch=linear", "sweep_id=K"]
    train(compose("train", *base, "fold.heldout=Bars"))
    cfg = compose("train", *base)
    client = MlflowClient(cfg.tracking.uri)
    experiment_id = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    finished = client.search_runs([experiment_id])[0]
    # a copy of the finished run (an older store, a manual rerun): a duplicate of (linear, Bars)
    twin = client.create_run(experiment_id, tags=finished.data.tags)
    for k, v in finished.data.params.items():
        client.log_param(twin.info.run_id, k, v)
    for k, v in finished.data.metrics.items():
        client.log_metric(twin.info.run_id, k, v + 1.0)
    client.set_terminated(twin.info.run_id)
    # a run whose process was killed with -9: RUNNING for ever
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = client.create_run(experiment_id, tags={**finished.data.tags, "pid": str(dead.pid)})
    for k, v in {**finished.data.params, "fold": "Mandel"}.items():
        client.log_param(killed.info.run_id, k, v)
    status = sweep_status(client.search_runs([experiment_id]))
    assert (status.expected, len(status.finished), len(status.running), len(status.missing)) == (2, 1, 1, 0)
    assert status.finished[("linear", "Bars")].info.run_id == twin.info.run_id
    assert "is gone (killed)" in status.running[0]["process"]
    evaluate = [
        "evaluate.py",
        *[o for o in tiny_overrides if o.startswith(("tracking.", "corpus", "paths.", "cache."))],
        "sweep_id=K",
        f"paths.reports_dir={tmp_path}/reports",
    ]
    proc = run_entry(*evaluate)
    assert proc.returncode == 3, proc.stderr  # written, and incomplete
    assert (
        "1 finished, 0 failed, 1 still RUNNING, 0 missing. **Incomplete: the means above cover the finished folds only.**"
        in proc.stdout
    )
    assert "duplicates: linear fold Bars finished 2 times; only the latest" in proc.stdout
    digest = json.loads((tmp_path / "reports" / "K" / "digest.json").read_text())
    assert [f["rmse"] for f in digest["archs"]["linear"]["folds"]] == [finished.data.metrics["heldout_rmse"] + 1.0]
    proc = run_entry(*evaluate, "fail_running=true")
    assert "1 finished, 1 failed, 0 still RUNNING" in proc.stdout
    assert [r.info.status for r in client.search_runs([experiment_id], "params.fold = 'Mandel'")] == ["FAILED"]


# -- libvmaf logs and read-only commands ---------------------------------------------------


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda log: log["frames"][3]["metrics"].update(integer_adm2=None), "frame 3: integer_adm2 is null"),
        (
            lambda log: log["frames"][0]["metrics"].update(integer_motion2=float("nan")),
            r"frame 0: integer_motion2 is not finite \(nan\)",
        ),
        (
            lambda log: log["frames"][2]["metrics"].update(integer_vif_scale1="0.5"),
            r"frame 2: integer_vif_scale1 is not a number \('0.5'\)",
        ),
        (lambda log: log["frames"][5]["metrics"].pop("integer_vif_scale3"), "frame 5: integer_vif_scale3 is missing"),
        (
            lambda log: log["frames"].__setitem__(1, "oops"),
            "frame 1 of the libvmaf log is not an object with 'metrics'",
        ),
        (lambda log: log["frames"][4]["metrics"].update(vmaf=float("inf")), r"frame 4: vmaf is not finite \(inf\)"),
    ],
)
def test_a_damaged_libvmaf_log_is_one_line_naming_frame_and_feature(tmp_path, spoil, message, repo):
    frames = [{"frameNum": i, "metrics": {"integer_adm2": 0.9, "integer_motion2": 2.0, "integer_vif_scale0": 0.5, "integer_vif_scale1": 0.6,
                                          "integer_vif_scale2": 0.7, "integer_vif_scale3": 0.8, "vmaf": 80.0}} for i in range(8)]  # fmt: skip
    log = {"frames": frames}
    spoil(log)
    path = tmp_path / "log.json"
    path.write_text(json.dumps(log))
    with pytest.raises(TinyVmafError, match=f"log.json: {message}"):
        score_log(OnnxVmaf(repo / "models" / "vmaf_tiny_v1.onnx"), path)


def test_read_only_commands_create_no_store(tmp_path, run_entry):
    proc = run_entry("evaluate.py", f"tracking.uri=sqlite:///{tmp_path}/nowhere/x/mlflow.db")
    assert (
        proc.returncode == 1
        and proc.stderr.strip()
        == f"error: tracking.uri=sqlite:///{tmp_path}/nowhere/x/mlflow.db: no MLflow store at {tmp_path}/nowhere/x/mlflow.db"
    )
    assert not (tmp_path / "nowhere").exists()
    store = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    MlflowClient(store).create_experiment("tinyvmaf-loso", artifact_location="mlflow-artifacts:/tinyvmaf-loso")
    proc = run_entry("export.py", f"tracking.uri={store}", "run_id=0123abc", f"output={tmp_path}/x.onnx")
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: run_id=0123abc: no such run in {store}"
    assert not (tmp_path / "x.onnx").exists()
