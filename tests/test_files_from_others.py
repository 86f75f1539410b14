"""Stores, models, logs and dataset files from other people: no code runs, nothing is read or
written outside the configured folders, no unbounded memory, no wrong number with exit 0."""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from onnx import TensorProto, helper, numpy_helper

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.files import config_literal
from tinyvmaf.onnx_io import OnnxVmaf
from tinyvmaf.teacher import FEATURE_NAMES
from tinyvmaf.training import train

FEATURES = json.dumps(list(FEATURE_NAMES))


# --- ONNX models ------------------------------------------------------------------------------


def onnx_file(path: Path, nodes, outputs, initializers=(), feed=None, opset: int = 17) -> Path:
    """An ONNX file built with the onnx package, with the tiny models' feature_names metadata."""
    feed = feed or helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 6])
    graph = helper.make_graph(nodes, "g", [feed], outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    model.metadata_props.add(key="feature_names", value=FEATURES)
    onnx.save_model(model, str(path))
    return path


def mean_of_features(path: Path, then: list | None = None, out=None) -> Path:
    """A model that scores the mean of the six features (times 100), then whatever ``then`` does."""
    nodes = [
        helper.make_node("ReduceMean", ["features"], ["m"], keepdims=0, axes=[1]),
        helper.make_node("Mul", ["m", "hundred"], ["vmaf" if not then else "s"]),
        *(then or []),
    ]
    out = out or helper.make_tensor_value_info("vmaf", TensorProto.FLOAT, ["batch"])
    return onnx_file(path, nodes, [out], [numpy_helper.from_array(np.array(100.0, np.float32), "hundred")], opset=13)


def max_rss_kib(command: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Run a command; its exit and the peak memory of its process (ru_maxrss of children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300)
    return proc, max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)


def score_command(repo: Path, tmp_path: Path, model: Path, log: Path, fmt: str = "csv") -> list[str]:
    return [
        sys.executable, str(repo / "score.py"), f"onnx={model}", f"log={log}", f"format={fmt}",
        f"hydra.run.dir={tmp_path}/hydra",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def a_log(tmp_path_factory) -> Path:
    """A libvmaf-format JSON log of 20 frames (the features any libvmaf 2 run logs)."""
    rng = np.random.default_rng(0)
    frames = [
        {
            "frameNum": i,
            "metrics": {**{n: float(v) for n, v in zip(FEATURE_NAMES, rng.uniform(0.3, 1, 6))}, "vmaf": 50.0},
        }
        for i in range(20)
    ]
    path = tmp_path_factory.mktemp("log") / "log.json"
    path.write_text(json.dumps({"version": "3.0.0", "frames": frames}))
    return path


def test_a_tiny_graph_that_asks_for_gigabytes_is_refused_before_it_runs(tmp_path, repo, a_log):
    shape = numpy_helper.from_array(np.array([30000, 30000], np.int64), "shape")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        helper.make_node("ReduceMean", ["features"], ["m"], keepdims=0, axes=[1]),
        helper.make_node("Add", ["m", "total"], ["vmaf"]),
    ]
    out = helper.make_tensor_value_info("vmaf", TensorProto.FLOAT, ["batch"])
    model = onnx_file(tmp_path / "bomb.onnx", nodes, [out], [shape], opset=13)
    assert model.stat().st_size < 1000
    proc, peak = max_rss_kib(score_command(repo, tmp_path, model, a_log), tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: {model}: uses operator(s) ConstantOfShape, not among those a VMAF model needs"
    ]
    assert peak < 1_500_000  # KiB: the 3.6 GB tensor was never made


def test_a_model_that_broadcasts_to_huge_tensors_is_refused(tmp_path):
    wide = numpy_helper.from_array(np.zeros((1, 100_000), np.float32), "wide")
    nodes = [
        helper.make_node("ReduceMean", ["features"], ["m"], keepdims=1, axes=[1]),
        helper.make_node("Add", ["m", "wide"], ["w"]),  # [N, 100000]
        helper.make_node("ReduceMean", ["w"], ["vmaf"], keepdims=0, axes=[1]),
    ]
    out = helper.make_tensor_value_info("vmaf", TensorProto.FLOAT, ["batch"])
    with pytest.raises(
        TinyVmafError, match=r"tensor 'w' of shape \['batch', 100000\] holds more than 4,096 values per frame"
    ):
        OnnxVmaf(onnx_file(tmp_path / "wide.onnx", nodes, [out], [wide], opset=13))
    square = [
        helper.make_node("Gemm", ["features", "features"], ["nn"], transB=1),  # [N, N]
        helper.make_node("ReduceMean", ["nn"], ["vmaf"], keepdims=0, axes=[1]),
    ]
    with pytest.raises(TinyVmafError, match=r"tensor 'nn' has shape \['batch', 'batch'\]"):
        OnnxVmaf(onnx_file(tmp_path / "square.onnx", square, [out], opset=13))


@pytest.mark.parametrize("fmt", ["csv", "json", "table"])
def test_a_model_that_returns_nan_is_an_error_naming_the_frame(fmt, tmp_path, repo, a_log):
    then = [helper.make_node("Log", ["minus"], ["nan"]), helper.make_node("Add", ["s", "nan"], ["vmaf"])]
    model = mean_of_features(tmp_path / "nan.onnx", then)
    graph = onnx.load(str(model))
    graph.graph.initializer.append(numpy_helper.from_array(np.array(-1.0, np.float32), "minus"))
    onnx.save_model(graph, str(model))
    proc = subprocess.run(score_command(repo, tmp_path, model, a_log, fmt), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: {model}: frame 0: the model's score is nan, not a number in [0, 100] (20 such frame(s))"
    ]


def test_evaluate_refuses_scores_out_of_range_instead_of_correlating_them(tmp_path):
    then = [helper.make_node("Mul", ["s", "hundred"], ["vmaf"])]  # up to 10,000
    model = OnnxVmaf(mean_of_features(tmp_path / "big.onnx", then))
    with pytest.raises(TinyVmafError, match=r"frame 0: the model's score is \d+\.\d+, not a number in \[0, 100\]"):
        model.predict(np.full((10, 6), 0.9))


@pytest.mark.parametrize(
    "feed, why",
    [
        (helper.make_tensor_value_info("features", TensorProto.DOUBLE, ["batch", 6]), "is DOUBLE"),
        (helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 6, 1]), "is FLOAT"),
        (helper.make_tensor_value_info("features", TensorProto.FLOAT, [4, 6]), r"is FLOAT \[4, 6\]"),
        (helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 5]), r"is FLOAT \['batch', 5\]"),
    ],
    ids=["float64", "rank 3", "fixed batch", "5 features"],
)
def test_inputs_of_another_type_rank_or_batch_are_refused_in_one_line(feed, why, tmp_path):
    nodes = [helper.make_node("ReduceMean", ["features"], ["vmaf"], keepdims=0, axes=[1])]
    out = helper.make_tensor_value_info("vmaf", feed.type.tensor_type.elem_type, ["batch"])
    path = onnx_file(tmp_path / "m.onnx", nodes, [out], feed=feed, opset=13)
    with pytest.raises(TinyVmafError, match=rf"^{path}: input 'features' {why}.*not float32 \[N, 6\] for any N"):
        OnnxVmaf(path)


def test_outputs_of_the_wrong_shape_are_refused_in_one_line(tmp_path):
    nodes = [helper.make_node("Identity", ["features"], ["vmaf"])]
    out = helper.make_tensor_value_info("vmaf", TensorProto.FLOAT, ["batch", 6])
    path = onnx_file(tmp_path / "m.onnx", nodes, [out], opset=13)
    with pytest.raises(TinyVmafError, match=r"output 'vmaf' is FLOAT \['batch', 6\], not float32 \[N\] or \[N, 1\]"):
        OnnxVmaf(path)
    two = [helper.make_node("Identity", ["features"], ["a"]), helper.make_node("Identity", ["features"], ["b"])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 6]) for n in "ab"]
    with pytest.raises(TinyVmafError, match=r"has 1 input\(s\) and 2 output\(s\)"):
        OnnxVmaf(onnx_file(tmp_path / "two.onnx", two, outs, opset=13))


def test_a_model_of_the_right_contract_scores(tmp_path):
    model = OnnxVmaf(mean_of_features(tmp_path / "ok.onnx"))
    x = np.full((5000, 6), 0.5)  # more than one run of frames
    assert np.allclose(model.predict(x), 50.0)
    nonregular = tmp_path / "fifo.onnx"
    os.mkfifo(nonregular)
    with pytest.raises(TinyVmafError, match="not a regular file"):
        OnnxVmaf(nonregular)


# --- MLflow stores -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def received_store(tiny_corpus_master, tmp_path_factory, training_overrides, compose):
    """A store made by a real tiny training run (two folds of mlp_small), to be edited as an attacker would."""
    folder = tmp_path_factory.mktemp("store")
    base = training_overrides(tiny_corpus_master, folder)
    for fold in ("Bars", "Mandel"):
        train(compose("train", *base, f"fold.heldout={fold}", "sweep_id=theirs", "tracking.log_models=false"))
    return folder, base


@pytest.fixture
def their_store(received_store, tmp_path):
    """A private copy of the received store; (folder, training overrides pointing at it, a fold run id)."""
    original, base = received_store
    folder = Path(shutil.copytree(original / "mlruns", tmp_path / "received" / "mlruns")).parent
    base = [o.replace(str(original / "mlruns"), str(folder / "mlruns")) for o in base]
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("tinyvmaf-loso").experiment_id
    run = client.search_runs([experiment], "tags.kind = 'fold'")[0]
    return folder, base, run


def replace_artifact(client: MlflowClient, run_id: str, name: str, make) -> None:
    """Overwrite a run's artifact in place, as someone editing the store would."""
    root = Path(client.tracking_uri.removeprefix("sqlite:///")).parent / "artifacts"
    (target,) = [p for p in root.rglob(name) if run_id in str(p)]
    make(target)


class RunsACommand:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def export_command(repo: Path, tmp_path: Path, base: list[str], run_id: str) -> list[str]:
    corpus = [o for o in base if o.startswith(("corpus", "paths.", "cache.", "tracking."))]
    return [
        sys.executable, str(repo / "export.py"), *corpus, f"run_id={run_id}", f"output={tmp_path}/out.onnx",
        f"hydra.run.dir={tmp_path}/hydra",
    ]  # fmt: skip


def test_a_checkpoint_that_runs_a_command_is_refused_and_runs_nothing(their_store, tmp_path, repo):
    folder, base, run = their_store
    marker = tmp_path / "ran"
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    replace_artifact(
        client, run.info.run_id, "model.pt", lambda p: p.write_bytes(pickle.dumps(RunsACommand(str(marker))))
    )
    proc = subprocess.run(
        export_command(repo, tmp_path, base, run.info.run_id), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1 and not marker.exists()
    assert proc.stderr.strip().splitlines() == [
        f"error: run_id={run.info.run_id}: model.pt holds more than weights, so it is not loaded (Unsupported operand 149)"
    ]
    assert not (tmp_path / "out.onnx").exists()


def test_a_stored_config_never_chooses_what_runs(their_store, tmp_path, repo):
    """A plain-dict checkpoint (weights_only accepts it) whose arch names a callable: never instantiated."""
    folder, base, run = their_store
    victim, copied = tmp_path / "victim.txt", tmp_path / "copied.txt"
    victim.write_text("secret")
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")

    def hostile(path: Path) -> None:
        saved = torch.load(path, weights_only=True)
        saved["arch"] = {"name": "x", "net": {"_target_": "shutil.copyfile", "src": str(victim), "dst": str(copied)}}
        torch.save(saved, path)

    replace_artifact(client, run.info.run_id, "model.pt", hostile)
    proc = subprocess.run(
        export_command(repo, tmp_path, base, run.info.run_id), capture_output=True, text=True, timeout=300
    )
    assert not copied.exists()
    assert proc.returncode == 0, proc.stderr  # the weights are sound: the model is rebuilt from their shapes
    assert (tmp_path / "out.onnx").is_file()


def test_weights_that_are_not_a_tiny_vmaf_mlp_are_one_line(their_store, tmp_path, repo):
    folder, base, run = their_store
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")

    def wider(path: Path) -> None:
        saved = torch.load(path, weights_only=True)
        saved["state_dict"]["net.0.weight"] = torch.zeros(16, 7)
        torch.save(saved, path)

    replace_artifact(client, run.info.run_id, "model.pt", wider)
    proc = subprocess.run(
        export_command(repo, tmp_path, base, run.info.run_id), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: run_id={run.info.run_id}: model.pt: layer net.0 of shape (16, 7) does not continue a 6-input MLP"
    ]


def set_artifact_uri(folder: Path, run_id: str, uri: str) -> None:
    with sqlite3.connect(folder / "mlruns" / "mlflow.db") as db:
        db.execute("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", (uri, run_id))


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*")}


@pytest.mark.parametrize("form", ["file://{}", "{}"], ids=["file URI", "bare path"])
def test_a_run_whose_artifacts_point_outside_the_store_is_never_read(form, their_store, tmp_path, repo):
    folder, base, run = their_store
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(folder / "mlruns" / "artifacts", elsewhere)  # a model.pt to find there, were it read
    set_artifact_uri(folder, run.info.run_id, form.format(elsewhere))
    before = snapshot(elsewhere)
    atimes = {p: p.stat().st_atime_ns for p in elsewhere.rglob("model.pt")}
    proc = subprocess.run(
        export_command(repo, tmp_path, base, run.info.run_id), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(
        f"error: run_id={run.info.run_id}: its artifact location '{form.format(elsewhere)}' lies outside"
    )
    assert snapshot(elsewhere) == before and atimes == {p: p.stat().st_atime_ns for p in elsewhere.rglob("model.pt")}


def test_evaluate_writes_no_digest_outside_the_store(their_store, tmp_path, repo):
    folder, base, run = their_store
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("tinyvmaf-loso").experiment_id
    corpus = [o for o in base if o.startswith(("corpus", "paths.", "cache.", "tracking."))]
    evaluate = [
        sys.executable, str(repo / "evaluate.py"), *corpus, "sweep_id=theirs", f"paths.reports_dir={tmp_path}/reports",
        f"hydra.run.dir={tmp_path}/hydra",
    ]  # fmt: skip
    assert subprocess.run(evaluate, capture_output=True, timeout=300).returncode == 0  # opens the sweep's run
    (sweep,) = client.search_runs([experiment], "tags.kind = 'sweep'")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    set_artifact_uri(folder, sweep.info.run_id, f"file://{elsewhere}")
    proc = subprocess.run(evaluate, capture_output=True, text=True, timeout=300)
    assert list(elsewhere.iterdir()) == []
    assert proc.returncode == 1 and "lies outside the store's artifact folder" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_an_experiment_whose_artifacts_point_outside_the_store_gets_no_run(their_store, tmp_path, compose):
    folder, base, _ = their_store
    elsewhere = tmp_path / "elsewhere"
    with sqlite3.connect(folder / "mlruns" / "mlflow.db") as db:
        db.execute("UPDATE experiments SET artifact_location = ?", (f"file://{elsewhere}",))
    with pytest.raises(
        TinyVmafError, match=r"^tracking.experiment=tinyvmaf-loso: its artifact location .* lies outside"
    ):
        train(compose("train", *base, "fold.heldout=Bars", "sweep_id=mine"))
    assert not elsewhere.exists()


def test_a_log_from_dev_zero_or_a_fifo_is_refused_at_once(tmp_path, repo):
    model = mean_of_features(tmp_path / "ok.onnx")
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    for log in (Path("/dev/zero"), fifo):
        start = time.monotonic()
        proc, peak = max_rss_kib(score_command(repo, tmp_path, model, log), tmp_path)
        assert time.monotonic() - start < 60 and proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [f"error: {log}: not a regular file"]
        assert peak < 1_500_000


# --- dataset files -------------------------------------------------------------------------------


DATASET = """dataset_name = 'D'
yuv_fmt = 'yuv420p'
width = 64
height = 48
ref_videos = [
    {{'content_id': 0, 'content_name': 'A', 'path': 'a.yuv'}},
    {{'content_id': {second_ref}, 'content_name': 'B', 'path': 'b.yuv'}},
]
dis_videos = [
    {{'content_id': 0, 'asset_id': 1, 'path': 'a1.yuv'}},
    {{'content_id': 1, 'asset_id': 2, 'path': 'b2.yuv'}},
    {{'content_id': 0, 'asset_id': {third_asset}, 'path': 'a3.yuv'}},
]
"""


@pytest.mark.parametrize(
    "second_ref, third_asset, refusal",
    [
        (
            1,
            1,
            r"d.py:12 \(dis_videos\[2\]\): asset_id 1 of content_id 0 is also that of .*d.py:10 \(dis_videos\[0\]\)",
        ),
        (
            1,
            "'1'",
            r"d.py:12 \(dis_videos\[2\]\): asset_id '1' of content_id 0 is also that of .*d.py:10 \(dis_videos\[0\]\)",
        ),
        ("'0'", 3, r"d.py:7 \(ref_videos\[1\]\): content_id '0' is also that of .*d.py:6 \(ref_videos\[0\]\)"),
    ],
    ids=["same asset_id", "1 and '1'", "same content_id"],
)
def test_dataset_entries_that_would_share_a_clip_or_a_reference_are_one_line(
    second_ref, third_asset, refusal, tmp_path
):
    from tinyvmaf.corpus.dataset_file import DatasetFileCorpus

    path = tmp_path / "d.py"
    path.write_text(DATASET.format(second_ref=second_ref, third_asset=third_asset))
    with pytest.raises(TinyVmafError, match=rf"^{tmp_path}/{refusal}: each entry needs its own$"):
        DatasetFileCorpus(path).pairs()
    path.write_text(DATASET.format(second_ref=1, third_asset=3))
    assert [p.asset for p in DatasetFileCorpus(path).pairs()] == ["A__1", "B__2", "A__3"]


# --- names that Hydra would interpolate --------------------------------------------------------


@given(st.text(alphabet="${}\\:.abc", max_size=30))
def test_a_name_written_into_a_config_reads_back_as_itself(name):
    written = {"heldout": config_literal(name)}
    assert OmegaConf.create(written).heldout == name
    assert OmegaConf.create(yaml.safe_load(yaml.safe_dump(written))).heldout == name


@pytest.mark.slow
def test_a_source_named_like_an_interpolation_is_trained_under_its_own_name(
    tiny_corpus_master, tmp_path, repo, run_entry
):
    name = "${oc.env:HOME}"
    root = Path(shutil.copytree(tiny_corpus_master, tmp_path / "corpus"))
    (root / "ref" / "Mandel.y4m").rename(root / "ref" / f"{name}.y4m")
    for clip in (root / "dis").glob("Mandel__*"):
        clip.rename(clip.with_name(clip.name.replace("Mandel", name)))
    corpus = ["corpus=directory", f"corpus.root={root}", "corpus.name=interpolated"]
    store = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    common = [*corpus, f"paths.data_dir={tmp_path}/data", f"tracking.uri={store}", "trainer.max_epochs=1",
              "data.batch_size=8", "cache.models=[vmaf_v0.6.1]", "arch=linear"]  # fmt: skip
    group = repo / "configs" / "fold" / "interpolated"
    try:
        assert run_entry("make_folds.py", *corpus, f"paths.data_dir={tmp_path}/data").returncode == 0
        proc = run_entry("train.py", "-m", *common, "+fold/interpolated=glob(*)", "sweep_id=by-fold")
        assert proc.returncode == 0, proc.stderr
    finally:
        shutil.rmtree(group, ignore_errors=True)
    assert f"linear fold={name}: " in proc.stdout and os.environ["HOME"] not in proc.stdout.replace(str(tmp_path), "")
    proc = run_entry("train.py", *common, "fold.heldout=all", "fold.corpus=interpolated", "sweep_id=stacked")
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("tinyvmaf-loso").experiment_id
    for sweep in ("by-fold", "stacked"):
        runs = client.search_runs([experiment], f"tags.sweep_id = '{sweep}' and tags.kind = 'fold'")
        assert sorted(r.data.params["fold"] for r in runs) == sorted(["Bars", name])
        assert all(r.info.status == "FINISHED" for r in runs)


# --- credentials -------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["postgresql://alice:s3cretpw@127.0.0.1:9/x", "http://alice:s3cretpw@127.0.0.1:9"])
def test_an_unreachable_store_is_one_line_within_seconds_and_shows_no_password(uri, tmp_path, run_entry):
    start = time.monotonic()
    proc = run_entry("evaluate.py", f"tracking.uri={uri}")
    assert time.monotonic() - start < 30 and proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: tracking.uri={uri.replace('s3cretpw', '***')}: ")
    assert "s3cretpw" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_database_that_refuses_the_connection_shows_no_password(mlflow_server, tmp_path, run_entry):
    _, _, database = mlflow_server  # postgresql+psycopg://postgres@127.0.0.1:PORT/optuna
    uri = database.replace("postgres@", "postgres:s3cretpw@").rsplit("/", 1)[0] + "/no_such_database"
    start = time.monotonic()
    proc = run_entry("train.py", f"tracking.uri={uri}", "fold.heldout=Bars")
    assert time.monotonic() - start < 30 and proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: tracking.uri={uri.replace('s3cretpw', '***')}: cannot connect to the database "
        f'(OperationalError: connection failed: connection to server at "127.0.0.1", port {uri.split(":")[3].split("/")[0]} '
        f'failed: FATAL: database "no_such_database" does not exist)'
    ]


# --- libvmaf logs ------------------------------------------------------------------------------


def log_of(numbers: list[int]) -> dict:
    metrics = {n: 0.5 for n in FEATURE_NAMES}
    return {"frames": [{"frameNum": n, "metrics": {**metrics, "vmaf": float(i)}} for i, n in enumerate(numbers)]}


@given(numbers=st.lists(st.integers(0, 12), min_size=2, max_size=12))
def test_frames_out_of_order_repeated_or_missing_are_refused(tmp_path_factory, numbers):
    from tinyvmaf.teacher.log import read_log

    path = tmp_path_factory.mktemp("log") / "log.json"
    path.write_text(json.dumps(log_of(numbers)))
    if numbers == list(range(len(numbers))):
        assert read_log(path).column("vmaf").tolist() == [float(i) for i in range(len(numbers))]
        return
    first = next(i for i, n in enumerate(numbers) if n != i)
    with pytest.raises(
        TinyVmafError, match=rf"frame {first} of the libvmaf log has frameNum {numbers[first]}: frames must"
    ):
        read_log(path)


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"frames": [', "not valid JSON"),
        ('{"frames": []}', "zero frames"),
        ('{"version": "3", "fps": 25}', "no 'frames' list"),
        ('{"frames": [{"frameNum": 0, "metrics": {}}], "frames": []}', "two 'frames' lists"),
        ('{"frames": [{"frameNum": 0, "metrics": {"integer_adm2": 1}}]} trailing', "more after"),
        ("[1, 2]", "expected '{'"),
    ],
)
def test_a_broken_log_is_one_line(text, why, tmp_path):
    from tinyvmaf.teacher.log import read_log

    path = tmp_path / "log.json"
    path.write_text(text)
    with pytest.raises(TinyVmafError, match=rf"^{path}: .*{why}"):
        read_log(path)


def test_a_log_split_across_read_chunks_reads_as_a_whole(tmp_path, monkeypatch):
    """Values cut by the reader's chunk boundary (numbers, strings, frames) are read whole."""
    from tinyvmaf.teacher import log as reader

    monkeypatch.setattr(reader, "_CHUNK", 7)
    path = tmp_path / "log.json"
    data = log_of(list(range(30)))
    data["version"] = "3.0.0 and a long string"
    path.write_text(json.dumps(data, indent=4))
    assert reader.read_log(path).column("vmaf").tolist() == [float(i) for i in range(30)]


# --- corpus folders ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "yuv, refusal",
    [
        ({"width": 64, "height": 48, "fps": 0}, "corpus.yuv.fps=0: must be a finite number > 0"),
        ({"width": 64, "height": 48, "fps": -25}, "corpus.yuv.fps=-25: must be a finite number > 0"),
        ({"width": 64, "height": 48, "fps": float("nan")}, "corpus.yuv.fps=nan: must be a finite number > 0"),
        ({"width": 0, "height": 48}, "corpus.yuv.width=0: must be an integer > 0"),
        ({"width": 64, "height": 48, "colour": 1}, "corpus.yuv: unknown key\\(s\\) colour"),
        ({"width": 64, "height": 48, "pix_fmt": "rgb24"}, "corpus.yuv.pix_fmt='rgb24': use one of"),
    ],
)
def test_a_bad_yuv_format_is_one_line_naming_the_option(yuv, refusal, tmp_path):
    from tinyvmaf.corpus.directory import DirectoryCorpus

    with pytest.raises(TinyVmafError, match=f"^{refusal}"):
        DirectoryCorpus(tmp_path, yuv=yuv)


@pytest.mark.parametrize(
    "make, said",
    [
        (lambda p: os.mkfifo(p), "a FIFO, not a regular file"),
        (lambda p: p.mkdir(), "a folder, not a regular file"),
        (lambda p: p.symlink_to(p.parent / "nothing-here"), "a link to nothing"),
        (lambda p: p.symlink_to("/dev/zero"), "a link to a device or socket, not a regular file"),
    ],
    ids=["fifo", "folder", "dangling link", "link to /dev/zero"],
)
@pytest.mark.parametrize("where", ["ref/Bars.y4m", "dis/Bars__odd.mp4"])
def test_a_corpus_entry_that_is_not_a_file_is_named_not_skipped(make, said, where, tiny_corpus):
    from tinyvmaf.corpus.directory import DirectoryCorpus

    path = tiny_corpus / where
    path.unlink(missing_ok=True)
    make(path)
    with pytest.raises(TinyVmafError, match=rf"^{path}: {said}"):
        DirectoryCorpus(tiny_corpus).pairs()


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


# --- telemetry ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_and_scoring_write_nothing_under_home(tiny_overrides, tmp_path, run_entry, repo, a_log):
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    clean = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_DISABLE_TELEMETRY", "ORT_DISABLE_TELEMETRY")}
    for command in (
        [sys.executable, str(repo / "train.py"), *tiny_overrides, "fold.heldout=Bars", f"hydra.run.dir={tmp_path}/h1"],
        score_command(repo, tmp_path, repo / "models" / "vmaf_tiny_v1.onnx", a_log),
    ):
        proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env={**clean, **env}, timeout=300)
        assert proc.returncode == 0, proc.stderr
    # matplotlib (imported by torchmetrics) keeps its font list there, which it offers no switch for
    assert [p for p in home.rglob("*") if p.is_file() and "matplotlib" not in p.parts] == []
