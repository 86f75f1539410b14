"""Export: shipped files carry the LOSO of their recipe, follow their contract, register in MLflow,
drop into the reference toolchain's folder, and a run's model is rebuilt from its weights alone."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import set_artifact_uri
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.export import export_models, fresh_seeds_of, model_from_run
from tinyvmaf.ffmpeg import ffmpeg_exe
from tinyvmaf.metrics import DOMAIN_PROBE, conformal_radius
from tinyvmaf.teacher import FEATURE_NAMES
from tinyvmaf.teacher.function import domain_points, load_teacher
from tinyvmaf.tracking import Tracking


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
        "check_corpus=null", f"hydra.run.dir={tmp_path}/hydra",
    ]  # fmt: skip


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*")}


def test_export_runs_the_loso_of_its_recipe_when_the_store_has_none(swept, compose, tmp_path, capsys):
    """Sweep s1 trained mlp_small for 3 epochs: it does not vouch for a 4-epoch file, so export.py
    runs the 4-epoch LOSO itself, and the file carries that LOSO's figures; loso=false ships unvalidated."""
    tmp, base = swept
    overrides = [o for o in base if not o.startswith(("fold.", "trainer.max_epochs"))]
    options = ["export", "~experiment", *overrides, "trainer.max_epochs=4", "register=false", "check_corpus=null",
               f"exports.vmaf_tiny_v1.output={tmp_path}/a.onnx", "~exports.vmaf_tiny_v1_medium", "teacher_exports=[]",
               "fresh_seeds=[1]"]  # fmt: skip
    assert export_models(compose(*options)) == 0
    out = capsys.readouterr().out
    assert out.count("mlp_small: no finished LOSO of this recipe and corpus in the store: running one (2 folds") == 2
    meta = ort.InferenceSession(str(tmp_path / "a.onnx")).get_modelmeta().custom_metadata_map
    assert meta["loso_sweep_id"].startswith("export-mlp_small-") and meta["loso_folds"] == "2"
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    folds = client.search_runs([meta["loso_experiment_id"]], f"tags.mlflow.parentRunId = '{meta['loso_run_id']}'")
    assert sorted(r.data.params["fold"] for r in folds) == ["Bars", "Mandel"]
    assert {r.data.params["epochs"] for r in folds} == {"4"} and {r.data.params["seed"] for r in folds} == {"0"}
    # the same recipe's LOSO with seed 1, which no search chose on: its own sweep, its own figure
    fresh = client.search_runs(
        [meta["loso_experiment_id"]], "params.seed = '1' and params.epochs = '4' and tags.kind = 'fold'"
    )
    assert sorted(r.data.params["fold"] for r in fresh) == ["Bars", "Mandel"] and meta["loso_fresh_seeds"] == "1"
    fresh_rmse = np.mean([r.data.metrics["heldout_rmse"] for r in fresh])
    assert float(meta["loso_fresh_seeds_rmse_mean"]) == pytest.approx(fresh_rmse, abs=1e-6)
    assert fresh_rmse != pytest.approx(float(meta["loso_rmse_mean"]), abs=1e-6)
    assert f"the same recipe with seeds 1: LOSO mean RMSE {fresh_rmse:.4f}" in out
    rmse = [r.data.metrics["heldout_rmse"] for r in folds]
    assert float(meta["loso_rmse_mean"]) == pytest.approx(np.mean(rmse), abs=1e-6)
    assert float(meta["loso_rmse_worst"]) == pytest.approx(max(rmse), abs=1e-6)
    clip_rmse = [r.data.metrics["heldout_clip_rmse"] for r in folds]  # logged by training, recomputed by export
    assert float(meta["loso_clip_rmse_mean"]) == pytest.approx(np.mean(clip_rmse), abs=1e-5)
    residuals = []
    for r in folds:
        with np.load(client.download_artifacts(r.info.run_id, "heldout.npz", tmp_path)) as held:
            residuals.append(held["predicted"] - held["teacher"])
    for coverage in (90, 95):
        radius = conformal_radius(np.concatenate(residuals), coverage / 100)
        assert float(meta[f"interval_frame_{coverage}"]) == pytest.approx(radius, abs=1e-6)
        # 6 held-out clips and 2 sources cannot promise either share: no radius rather than an infinite one
        assert f"interval_clip_{coverage}" not in meta and f"interval_source_{coverage}" not in meta
    assert export_models(compose(*options)) == 0  # again: that LOSO is in the store now
    assert "running one" not in capsys.readouterr().out
    assert export_models(compose(*options, "loso=false")) == 0
    assert "warning: loso=false: the mlp_small file is not validated" in capsys.readouterr().out
    meta = ort.InferenceSession(str(tmp_path / "a.onnx")).get_modelmeta().custom_metadata_map
    assert meta["loso"] == "not run (loso=false): unvalidated" and not any(k.startswith("loso_") for k in meta)


@pytest.mark.parametrize("seeds", ["[0,1]", "[1,1]", "3", "[x]", "[true]", "[-1]", "[4294967296]"])
def test_fresh_seeds_are_distinct_integers_other_than_the_recipes_own(seeds, compose):
    with pytest.raises(
        TinyVmafError,
        match=r"^fresh_seeds=.*: a list of distinct integer seeds from 0 to 2\*\*32 - 1, none of them seed=0",
    ):
        fresh_seeds_of(compose("export", f"fresh_seeds={seeds}"))
    assert fresh_seeds_of(compose("export")) == [1, 2] and fresh_seeds_of(compose("export_v1")) == []


@pytest.mark.parametrize(
    "option, message",
    [
        ("overwrite=no", "overwrite='no': must be true or false"),  # "no" is true to Python
        ("register=1", "register=1: must be true or false"),
        ("loso=off", "loso='off': must be true or false"),
        ("seed=-1", r"seed=-1: must be an integer from 0 to 2\*\*32 - 1"),
        ("check_corpus.name=default", "check_corpus.name=default: the training corpus's name; .*"),
        ("run_id=0123abc", r"run_id=0123abc: give output=<file>.onnx, where the fold run's model is written"),
    ],
)
def test_export_options_are_checked_before_any_work(option, message, compose, tmp_path):
    options = [f"lusoris_dir={tmp_path}/drop-in", f"teacher_output_dir={tmp_path}", "teacher_exports=[]",
               f"exports.vmaf_tiny_v1.output={tmp_path}/a.onnx", f"exports.vmaf_tiny_v1_medium.output={tmp_path}/b.onnx"]  # fmt: skip
    with pytest.raises(TinyVmafError, match=f"^{message}$"):
        export_models(compose("export", *options, option))
    assert list(tmp_path.iterdir()) == []


def test_the_lusoris_layout_drops_into_that_toolchains_folder(swept, compose, tmp_path):
    """layout=lusoris: input `input` [N, 6] raw adm2, vif_scale0..3, motion2 -> `score` [N, 1],
    equal to the standard file's scores; a sidecar; its entry added to the folder's registry.json."""
    tmp, base = swept
    folder = tmp_path / "model" / "tiny"
    folder.mkdir(parents=True)
    # the toolchain's own entries, in its own layout: kept byte for byte
    theirs = [{"id": "vmaf_tiny_v1", "kind": "fr", "onnx": "vmaf_tiny_v1.onnx", "sha256": "1" * 64, "license": "x"},
              {"id": "vmaf_tiny_v2", "kind": "fr", "onnx": "vmaf_tiny_v2.onnx", "sha256": "0" * 64, "smoke": True}]  # fmt: skip
    before = json.dumps({"schema_version": 1, "models": theirs, "zzz": [1]}, indent=4) + "\n"
    (folder / "registry.json").write_text(before)
    (folder / "vmaf_tiny_v1.onnx").write_bytes(b"their model")
    options = ["export", "~experiment", *[o for o in base if not o.startswith("fold.")], "loso=false", "register=false", "check_corpus=null",
               "~exports.vmaf_tiny_v1_medium", "teacher_exports=[]"]  # fmt: skip
    assert export_models(compose(*options, f"exports.vmaf_tiny_v1.output={tmp_path}/standard.onnx")) == 0
    assert export_models(compose(*options, "layout=lusoris", f"lusoris_dir={folder}")) == 0
    after = (folder / "registry.json").read_text()
    last = before.rindex("}", 0, before.index("]")) + 1  # the end of their last entry
    assert after.startswith(before[:last] + ",\n") and after.endswith(before[last:])
    assert (folder / "vmaf_tiny_v1.onnx").read_bytes() == b"their model"
    path = folder / "tinyvmaf_vmaf_tiny_v1.onnx"
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
    registry = json.loads(after)
    assert [m["id"] for m in registry["models"]] == ["vmaf_tiny_v1", "vmaf_tiny_v2", "tinyvmaf_vmaf_tiny_v1"]
    *kept, entry = registry["models"]
    assert kept == theirs and entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert re.fullmatch("[0-9a-f]{64}", entry["sha256"]) and (entry["kind"], entry["onnx"], entry["opset"]) == (
        "fr",
        "tinyvmaf_vmaf_tiny_v1.onnx",
        17,
    )
    assert entry["license"] and 0 < len(entry["notes"]) <= 512 and "Unvalidated" in entry["notes"]
    sidecar = json.loads((folder / "tinyvmaf_vmaf_tiny_v1.json").read_text())
    assert (sidecar["kind"], sidecar["name"], sidecar["input_name"], sidecar["output_name"], sidecar["onnx_opset"]) == (
        "fr", "tinyvmaf_vmaf_tiny_v1", "input", "score", 17)  # fmt: skip
    assert sidecar["features"] == ["adm2", "vif_scale0", "vif_scale1", "vif_scale2", "vif_scale3", "motion2"]
    assert sidecar["onnx_has_scaler"] is True  # that toolchain must not standardize the features again
    assert json.loads(session.get_modelmeta().custom_metadata_map["feature_names"]) == order
    assert (
        export_models(compose(*options, "layout=lusoris", f"lusoris_dir={folder}")) == 0
    )  # again: its own entry, in place
    again = (folder / "registry.json").read_text()
    assert again.startswith(before[:last] + ",\n") and again.endswith(before[last:])
    assert [m["id"] for m in json.loads(again)["models"]] == ["vmaf_tiny_v1", "vmaf_tiny_v2", "tinyvmaf_vmaf_tiny_v1"]


def test_a_drop_in_folder_is_refused_before_any_training(swept, compose, tmp_path, monkeypatch):
    """What writing would refuse (here an entry of the same id that tinyvmaf did not write) is
    refused before the LOSO lookup and the training, and nothing in the folder changes."""
    _, base = swept
    folder = tmp_path / "tiny"
    folder.mkdir()
    theirs = {
        "id": "tinyvmaf_vmaf_tiny_v1",
        "kind": "fr",
        "onnx": "x.onnx",
        "sha256": "0" * 64,
        "license": "Proprietary",
    }
    (folder / "registry.json").write_text(json.dumps({"schema_version": 1, "models": [theirs]}))

    def trained(*args):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr("tinyvmaf.export.train_on_all_sources", trained)
    monkeypatch.setattr("tinyvmaf.export.validated", trained)
    options = ["export", "~experiment", *[o for o in base if not o.startswith("fold.")], "register=false",
               "teacher_exports=[]", "layout=lusoris", f"lusoris_dir={folder}", "check_corpus=null"]  # fmt: skip
    with pytest.raises(
        TinyVmafError, match="entry 'tinyvmaf_vmaf_tiny_v1' was not written by tinyvmaf; overwrite=true"
    ):
        export_models(compose(*options))
    assert sorted(p.name for p in folder.iterdir()) == ["registry.json"]


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


def test_each_shipped_file_carries_its_figures_on_the_check_corpus_of_unseen_codecs(exported, compose):
    """The check corpus (other sources, x265/VP9/AV1/MPEG-2, 320x180) is encoded with the codecs
    it names, shares no source or codec with the training corpora, and each exported file's check
    figures are what ONNX Runtime gives on it."""
    tmp, cfg = exported
    check = compose("export", "check_corpus.frames=8").check_corpus
    trained = {**compose("export", "corpus=v1").corpus.sources, **compose("export").corpus.sources}
    assert not set(check.sources) & set(trained)
    codecs = {h.get("codec", "libx264") for h in check.hrcs}
    assert codecs == {"libx265", "libvpx-vp9", "libsvtav1", "mpeg2video"}
    clips = sorted((tmp / "data" / "corpus" / "check" / "dis").glob("IhcRotate__*.mp4"))
    probed = {
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(c)], capture_output=True, text=True)
        .stderr.split("Video: ")[1]
        .split()[0]
        for c in clips
    }
    assert len(clips) == 10 and probed == {"hevc", "vp9", "av1", "mpeg2video"}
    table = instantiate(cfg.cache).load(instantiate(cfg.check_corpus))
    for name in ("a.onnx", "b.onnx"):
        session = ort.InferenceSession(str(tmp / "models" / name), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        got = session.run(["vmaf"], {"features": table.columns(FEATURE_NAMES).astype(np.float32)})[0]
        rmse = float(np.sqrt(np.mean((got - table.scores["vmaf_v0.6.1"]) ** 2)))
        assert meta["check_corpus"] == table.label and float(meta["check_rmse"]) == pytest.approx(rmse, abs=1e-3)
        within = np.mean(np.abs(got - table.scores["vmaf_v0.6.1"]) <= float(meta["interval_frame_95"]))
        assert float(meta["check_coverage_frame_95"]) == pytest.approx(within, abs=2e-3)
        assert float(meta["check_clip_rmse"]) > 0 and "check_coverage_clip_95" not in meta


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
        "check_corpus=null",
        "trainer.max_epochs=400",
        "teacher=vmaf_4k_v0.6.1",
    )
    assert export_models(cfg) == 0
    model, _, run = model_from_run(instantiate(cfg.tracking), run.info.run_id)
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


def test_a_store_whose_run_was_changed_ships_nothing(their_store, tmp_path, repo):
    """The run's activation param changed from SiLU to ReLU6 (a name tinyvmaf knows): the rebuilt
    model no longer predicts what the run logged on its held-out frames, so nothing is exported
    under that run's evidence (the untouched run exports: test_a_stored_config_never_chooses_what_runs)."""
    folder, base, run = their_store
    with sqlite3.connect(folder / "mlruns" / "mlflow.db") as db:
        db.execute("UPDATE params SET value = 'ReLU6' WHERE run_uuid = ? AND key = 'activation'", (run.info.run_id,))
    proc = subprocess.run(export_command(repo, tmp_path, base, run.info.run_id), capture_output=True, text=True)
    assert proc.returncode == 1 and not (tmp_path / "out.onnx").exists()
    assert re.fullmatch(
        rf"error: run_id={run.info.run_id}: its weights and params do not reproduce its own held-out predictions on "
        rf"{run.data.params['fold']} \(max \|difference\| [0-9.e+-]+\): the store was changed since; not exported",
        proc.stderr.strip(),
    ), proc.stderr


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


def test_a_model_pt_over_the_cap_is_refused_before_it_is_copied(their_store, monkeypatch, tmp_path):
    folder, _, run = their_store
    tracking = Tracking(f"sqlite:///{folder}/mlruns/mlflow.db", "tinyvmaf-loso")
    monkeypatch.setattr("tinyvmaf.export.MAX_MODEL_BYTES", 100)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(downloads))  # where a download would land
    with pytest.raises(TinyVmafError, match=r"model.pt: [\d,]+ bytes, more than the 100 a model may hold$"):
        model_from_run(tracking, run.info.run_id)
    assert list(downloads.iterdir()) == []


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


SHIPPED = ["vmaf_tiny_v1", "vmaf_tiny_v1_medium"] + [
    f"v1.0.16/vmaf_v1.0.16_{teacher}_tiny_{arch}"
    for teacher in ("3d0h", "5d0h", "1d5h_2160")
    for arch in ("small", "medium")
]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_models_stay_within_5_vmaf_of_the_teacher_over_the_valid_domain(name, repo):
    """... its teacher's box of valid features (the v1 files' includes speed_chroma_uv 0, which
    the teacher reads as 120 (1 - adm3)), and say so in their metadata (``domain_max_error``, from
    torch at export: the same figure)."""
    session = ort.InferenceSession(str(repo / "models" / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    function = load_teacher(metadata["teacher"])
    x = domain_points(**DOMAIN_PROBE, low=function.domain[0], high=function.domain[1])
    predicted = session.run(None, {"features": x.astype(np.float32)})[0]
    teacher = function(x.astype(np.float32).astype(np.float64))
    worst = np.abs(predicted - teacher).max()
    assert worst <= 5.0 and float(metadata["domain_max_error"]) == pytest.approx(worst, abs=1e-3)


@pytest.mark.parametrize("name", ["vmaf_tiny_v1", "vmaf_tiny_v1_medium"])
def test_the_front_pages_headline_is_the_files_own_unselected_figure(name, repo):
    """README's bold LOSO RMSE is the file's fresh-seed LOSO (no search chose on it), its check
    corpus figure is the file's too, and the two agree within the 1.5x the check corpus allows."""
    metadata = ort.InferenceSession(str(repo / "models" / f"{name}.onnx")).get_modelmeta().custom_metadata_map
    row = next(line for line in (repo / "README.md").read_text().splitlines() if f"`models/{name}.onnx`" in line)
    headline = float(re.search(r"\*\*([\d.]+)\*\*", row).group(1))
    check = float(row.rstrip(" |").rsplit("|", 1)[1])
    assert headline == round(float(metadata["loso_fresh_seeds_rmse_mean"]), 3)
    assert check == round(float(metadata["check_rmse"]), 3) and max(headline, check) <= 1.5 * min(headline, check)
