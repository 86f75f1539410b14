"""The teacher as code against real libvmaf, augmentation's no-leakage rule, the extrapolation guard."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hydra.utils import instantiate

from tinyvmaf.cache import TeacherCache
from tinyvmaf.corpus.directory import DirectoryCorpus
from tinyvmaf.data import Augmentation, LosoDataModule
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.export import export_teacher
from tinyvmaf.teacher.ffmpeg_filter import FfmpegLibvmaf
from tinyvmaf.teacher.function import DOMAIN_HIGH, DOMAIN_LOW, domain_points, load_teacher

MODELS = ["vmaf_v0.6.1", "vmaf_v0.6.1neg", "vmaf_4k_v0.6.1"]


def default_table(compose):
    cfg = compose("build_cache")
    corpus, cache = instantiate(cfg.corpus), instantiate(cfg.cache)
    cache.build(corpus)  # generates the corpus and runs libvmaf on a fresh machine (~75 s), else instant
    return cache.load(corpus)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_teacher_function_matches_libvmaf_on_every_frame_of_the_default_corpus(model, compose):
    table = default_table(compose)
    teacher = load_teacher(model)
    predicted = teacher(table.columns(teacher.feature_columns))
    assert len(predicted) == len(table) > 8000
    assert np.abs(predicted - table.scores[model]).max() <= 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_teacher_as_onnx_matches_libvmaf_on_every_frame_of_the_default_corpus(model, compose, tmp_path):
    table = default_table(compose)
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
def test_shipped_vmaf_v061_onnx_matches_libvmaf_on_every_frame_of_the_default_corpus(compose, repo):
    table = default_table(compose)
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


def test_augmentation_never_touches_the_heldout_source(tiny_corpus, tmp_path, monkeypatch):
    corpus = DirectoryCorpus(tiny_corpus)
    cache = TeacherCache(tmp_path / "cache", FfmpegLibvmaf(), ["vmaf_v0.6.1"], n_jobs=2)
    cache.build(corpus)
    seen = []
    original = Augmentation.sample

    def spy(self, features, teacher, seed):
        seen.append(features.copy())
        return original(self, features, teacher, seed)

    monkeypatch.setattr(Augmentation, "sample", spy)
    dm = LosoDataModule(corpus, cache, "vmaf_v0.6.1", heldout="Mandel", augment=Augmentation(enabled=True, amount=3.0))
    dm.setup()
    batches = list(dm.train_dataloader())  # noqa: F841
    table = cache.load(corpus)
    held = table.features[table.source_of_frame == table.sources.index("Mandel")]
    train = table.features[table.source_of_frame == table.sources.index("Bars")]
    assert len(seen) == 1 and np.array_equal(np.sort(seen[0], axis=0), np.sort(train, axis=0))
    assert sum(len(x) for x, _ in batches) == 24 + 72
    # the standardization is the training source's, with or without augmentation
    np.testing.assert_allclose(dm.standardization.feature_mean, train.mean(axis=0))
    assert not any(np.isclose(seen[0], row).all(axis=1).any() for row in held)


def test_augmented_labels_are_the_teacher_function():
    rng = np.random.default_rng(0)
    real = np.column_stack(
        [rng.uniform(0.7, 1, 200), rng.uniform(0, 20, 200), *(rng.uniform(0.3, 1, 200) for _ in range(4))]
    )
    x, y = Augmentation(enabled=True, amount=5.0).sample(real, "vmaf_v0.6.1", seed=1)
    assert x.shape == (1000, 6) and (x >= DOMAIN_LOW).all() and (x <= DOMAIN_HIGH).all()
    np.testing.assert_allclose(y, load_teacher("vmaf_v0.6.1")(x))
    assert x[:, 1].max() > 50  # the across-domain draws reach high motion


@pytest.mark.parametrize("name", ["vmaf_tiny_v1", "vmaf_tiny_v1_medium"])
def test_shipped_models_stay_within_5_vmaf_of_the_teacher_over_the_valid_domain(name, repo):
    session = ort.InferenceSession(str(repo / "models" / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    x = domain_points(grid_steps=5, n_random=20000, seed=42)
    predicted = session.run(None, {"features": x.astype(np.float32)})[0]
    teacher = load_teacher(session.get_modelmeta().custom_metadata_map["teacher"])(
        x.astype(np.float32).astype(np.float64)
    )
    assert np.abs(predicted - teacher).max() <= 5.0
