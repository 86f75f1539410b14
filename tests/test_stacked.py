"""Every fold of a LOSO at once: stacked against separate training, per-fold data, the stacked
optimizer against torch's AdamW, ONNX written from the weights against torch."""

from __future__ import annotations

import dataclasses
import json
from functools import partial

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from torch import nn

from tinyvmaf.cache import TeacherCache
from tinyvmaf.corpus.directory import DirectoryCorpus
from tinyvmaf.data import Augmentation, LosoDataModule, TensorBatches
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.export import export_models
from tinyvmaf.features import Standardization, chroma_correction
from tinyvmaf.onnx_io import OnnxVmaf
from tinyvmaf.score import score_pair
from tinyvmaf.stacked import StackedAdamW, StackedBatches, StackedLosoDataModule, side_by_side
from tinyvmaf.teacher.ffmpeg_filter import FfmpegLibvmaf
from tinyvmaf.teacher.function import load_teacher
from tinyvmaf.training import train

# Sources of different lengths: their folds train on different numbers of rows, so their epochs
# have different numbers of mini-batches and their lr schedules different lengths.
SOURCES = {"Bars": ("testsrc2", 8), "Mandel": ("mandelbrot", 12), "Rgb": ("rgbtestsrc", 10)}


@pytest.fixture(scope="module")
def uneven_corpus(tmp_path_factory, make_clip):
    root = tmp_path_factory.mktemp("uneven")
    for source, (lavfi, frames) in SOURCES.items():
        make_clip(root / "ref" / f"{source}.y4m", lavfi, frames=frames)
        for crf in (22, 40):
            codec = ["-c:v", "libx264", "-crf", str(crf), "-threads", "1"]
            make_clip(root / "dis" / f"{source}__crf{crf}.mp4", lavfi, frames=frames, codec=codec)
        make_clip(root / "dis" / f"{source}__half.mp4", lavfi, frames=frames, vf="scale=32:24")
    return root


@pytest.fixture
def uneven_overrides(uneven_corpus, tmp_path, training_overrides):
    overrides = [o for o in training_overrides(uneven_corpus, tmp_path) if not o.startswith("trainer.max_epochs")]
    return [*overrides, "trainer.max_epochs=12", "fold.heldout=all"]


def fold_rmse(tracking_uri: str, sweep: str) -> dict[str, float]:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tinyvmaf-loso").experiment_id
    runs = client.search_runs([experiment], f"tags.sweep_id = '{sweep}' and tags.kind = 'fold'")
    return {r.data.params["fold"]: r.data.metrics["heldout_rmse"] for r in runs if r.info.status == "FINISHED"}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mlp_small", "mlp_medium", "linear"])
def test_stacked_folds_agree_with_separate_runs(arch, uneven_overrides, tmp_path, compose):
    uri = next(o for o in uneven_overrides if o.startswith("tracking.uri=")).split("=", 1)[1]
    train(compose("train", *uneven_overrides, f"arch={arch}", "stack_folds=false", "sweep_id=one-by-one"))
    train(compose("train", *uneven_overrides, f"arch={arch}", "stack_folds=true", "sweep_id=stacked"))
    sequential, stacked = fold_rmse(uri, "one-by-one"), fold_rmse(uri, "stacked")
    assert set(sequential) == set(stacked) == set(SOURCES)
    for fold, rmse in sequential.items():
        assert abs(stacked[fold] - rmse) <= max(0.01 * rmse, 2e-3), (fold, rmse, stacked[fold])


@pytest.fixture(scope="module")
def uneven_cache(uneven_corpus, tmp_path_factory):
    corpus = DirectoryCorpus(uneven_corpus)
    cache = TeacherCache(tmp_path_factory.mktemp("cache"), FfmpegLibvmaf(), ["vmaf_v0.6.1"], n_jobs=2)
    cache.build(corpus)
    return corpus, cache


def assert_same_standardization(a: Standardization, b: Standardization) -> None:
    for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b)):
        np.testing.assert_array_equal(x, y)


def fold_modules(corpus, cache, sources) -> list[LosoDataModule]:
    augment = Augmentation(enabled=True, amount=1.5)
    return [LosoDataModule(corpus, cache, "vmaf_v0.6.1", heldout=s, batch_size=8, augment=augment) for s in sources]


def test_each_stacked_fold_holds_the_data_of_its_separate_run(uneven_cache):
    corpus, cache = uneven_cache
    sources = list(SOURCES)
    stacked = StackedLosoDataModule(fold_modules(corpus, cache, sources))
    stacked.setup("fit")
    epochs = 2
    for k, source in enumerate(sources):
        alone = fold_modules(corpus, cache, [source])[0]
        alone.setup("fit")
        assert_same_standardization(stacked.standardizations[k], alone.standardization)
        assert torch.equal(stacked.folds[k].synthetic_x, alone.synthetic_x)  # its own augmentation draws
        assert torch.equal(stacked.folds[k].test_x, alone.test_x)
        # its mini-batches, in its own order: the rows of weight 1 of its slice, epoch after epoch
        loader, mine = alone.train_dataloader(), stacked.train_dataloader()
        x, _, _ = stacked.train_rows
        for _ in range(epochs):
            rows = torch.cat([x for x, _ in loader])
            got = torch.cat([x.view(-1, x.shape[-1])[i[k][w[k] > 0]] for i, w in mine])
            assert torch.equal(rows, got)
    steps = [f.minibatches_per_epoch for f in stacked.folds]
    assert len(set(steps)) > 1  # the folds' epochs differ in length: the padding is exercised
    assert len(list(stacked.train_dataloader())) == -(-max(steps) // stacked.minibatches_per_step)


def test_changing_the_heldout_source_changes_no_other_fold_of_it(uneven_cache, monkeypatch):
    """Fold k holds out source k: source k's frames may change its test data, never its training."""
    corpus, cache = uneven_cache
    sources = list(SOURCES)
    before = StackedLosoDataModule(fold_modules(corpus, cache, sources))
    before.setup("fit")
    table = cache.load(corpus)
    changed = dataclasses.replace(
        table, features=table.features.copy(), scores={k: v.copy() for k, v in table.scores.items()}
    )
    rows = changed.source_of_frame == changed.sources.index("Mandel")
    changed.features[rows] *= 0.5
    changed.scores["vmaf_v0.6.1"][rows] = 1.0
    monkeypatch.setattr(TeacherCache, "load", lambda self, corpus: changed)
    after = StackedLosoDataModule(fold_modules(corpus, cache, sources))
    after.setup("fit")
    k = sources.index("Mandel")
    mine_before, mine_after = before.folds[k], after.folds[k]
    for name in ("train_x", "train_y", "synthetic_x", "synthetic_y"):
        assert torch.equal(getattr(mine_before, name), getattr(mine_after, name)), name
    assert_same_standardization(before.standardizations[k], after.standardizations[k])
    assert not torch.equal(mine_before.test_x, mine_after.test_x)
    (x_before, y_before, _), (x_after, y_after, _) = before.train_rows, after.train_rows
    assert torch.equal(x_before[k], x_after[k]) and torch.equal(y_before[k], y_after[k])
    for a, b in zip(before.train_dataloader(), after.train_dataloader()):
        assert torch.equal(a[0][k], b[0][k]) and torch.equal(a[1][k], b[1][k])
    others = [i for i in range(len(sources)) if i != k]
    assert all(not torch.equal(before.folds[i].train_x, after.folds[i].train_x) for i in others)


def test_stacked_adamw_is_torch_adamw_and_its_schedule_per_fold():
    """Two folds of 30 and 24 steps: each row follows its own torch AdamW + OneCycleLR, the
    shorter one untouched once its steps are done."""
    torch.manual_seed(0)
    optimizer = partial(torch.optim.AdamW, lr=3e-2, weight_decay=1e-3, fused=True)
    scheduler = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=3e-2)
    start = torch.randn(2, 5)
    stacked = nn.Parameter(start.clone())
    steps = [30, 24]
    mine = StackedAdamW(stacked, optimizer, scheduler, steps)
    separate = [nn.Parameter(start[k].clone()) for k in range(2)]
    torch_optimizers = [optimizer([p]) for p in separate]
    schedules = [scheduler(o, total_steps=t) for o, t in zip(torch_optimizers, steps)]
    for t in range(30):
        grad = torch.randn(2, 5)
        active = torch.tensor([t < n for n in steps])
        stacked.grad = grad * active[:, None]
        mine.step(active)
        for k in range(2):
            if active[k]:
                separate[k].grad = grad[k].clone()
                torch_optimizers[k].step()
                schedules[k].step()
        for k in range(2):
            torch.testing.assert_close(stacked.detach()[k], separate[k].detach(), rtol=1e-5, atol=1e-6)


def test_stacked_training_refuses_another_optimizer():
    with pytest.raises(TinyVmafError, match=r"^model.optimizer=SGD: stacked folds train with AdamW"):
        StackedAdamW(nn.Parameter(torch.zeros(2, 3)), partial(torch.optim.SGD, lr=0.1), None, [5, 5])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_stacked_folds_on_the_gpu_match_the_cpu(uneven_overrides, compose):
    cpu = train(compose("train", *uneven_overrides, "sweep_id=stacked-cpu"))
    gpu = train(compose("train", *uneven_overrides, "sweep_id=stacked-gpu", "trainer=gpu"))
    assert abs(gpu - cpu) <= 0.05 * cpu + 1e-3


def test_stacked_batches_cut_each_fold_as_its_own_tensor_batches_and_weigh_the_padding_zero():
    xs = [torch.arange(5.0)[:, None].repeat(1, 6), 10 + torch.arange(8.0)[:, None].repeat(1, 6)]
    ys = [x[:, 0].clone() for x in xs]
    x, y = side_by_side(xs).view(-1, 6), side_by_side(ys).view(-1)
    stacked = StackedBatches([5, 8], 8, batch_size=3, shuffle=True, seed=3, minibatches_per_step=1)
    alone = [TensorBatches(x, y, batch_size=3, shuffle=True, seed=3) for x, y in zip(xs, ys)]
    items = list(stacked)
    assert len(stacked) == len(items) == 3  # the longer fold's 8 rows: 3 mini-batches of 3
    for k, fold in enumerate(alone):
        real = [y[i[k][w[k] > 0]] for i, w in items]
        assert [r.tolist() for r in real if len(r)] == [b[1].tolist() for b in fold]
        assert all(torch.equal(x[i[k][w[k] > 0], 0], y[i[k][w[k] > 0]]) for i, w in items)
        assert all((i[k][w[k] == 0] == k * 8).all() for i, w in items)  # padding: the fold's first row
    shorter_padding = torch.cat([w[0] for _, w in items])
    assert shorter_padding.sum() == 5 and len(shorter_padding) == 9  # 5 real rows, 4 of padding at weight 0


V1_SOURCES = {"Bars": "testsrc2", "Mandel": "mandelbrot", "Rgb": "rgbtestsrc"}


@pytest.fixture(scope="module")
def v1_corpus(tmp_path_factory, make_clip):
    """640x360: every v1.0.16 model runs at the clips' own size, so the test's cache measures there."""
    root = tmp_path_factory.mktemp("v1_stacked")
    for source, lavfi in V1_SOURCES.items():
        make_clip(root / "ref" / f"{source}.y4m", lavfi, frames=8, size="640x360")
        for crf in (22, 40):
            codec = ["-c:v", "libx264", "-crf", str(crf), "-threads", "1"]
            make_clip(root / "dis" / f"{source}__crf{crf}.mp4", lavfi, frames=8, size="640x360", codec=codec)
    return root


@pytest.mark.slow
def test_a_v1_teacher_trains_four_input_stand_ins_stacked_and_one_by_one_and_exports_them(
    v1_corpus, tmp_path, compose, training_overrides
):
    """teacher=vmaf_v1.0.16_3d0h: stand-ins of four inputs (its cambi, speed_chroma_uv, adm3,
    motion3) trained every fold at once and one by one agree; the exported file reads those four
    by name, clips to the teacher's range, and the teacher's own ONNX graph ships beside it."""
    overrides = [
        o for o in training_overrides(v1_corpus, tmp_path) if not o.startswith(("cache.models", "trainer.max"))
    ]
    overrides += ["teacher=vmaf_v1.0.16_3d0h", "cache.display=[640,360]", "arch=mlp_small", "trainer.max_epochs=12",
                  "fold.heldout=all"]  # fmt: skip
    uri = next(o for o in overrides if o.startswith("tracking.uri=")).split("=", 1)[1]
    train(compose("train", *overrides, "stack_folds=false", "sweep_id=one-by-one"))
    train(compose("train", *overrides, "stack_folds=true", "sweep_id=stacked"))
    sequential, stacked = fold_rmse(uri, "one-by-one"), fold_rmse(uri, "stacked")
    assert set(sequential) == set(stacked) == set(V1_SOURCES)
    for fold, rmse in sequential.items():
        assert abs(stacked[fold] - rmse) <= max(0.01 * rmse, 2e-3), (fold, rmse, stacked[fold])
    export = [o for o in overrides if not o.startswith(("fold.", "arch="))]
    options = [*export, "~experiment", "loso=false", "register=false", "~exports.vmaf_tiny_v1_medium", "check_corpus=null",
               f"exports.vmaf_tiny_v1.output={tmp_path}/v1.onnx", "teacher_exports=[vmaf_v1.0.16_3d0h]",
               f"teacher_output_dir={tmp_path}/teachers"]  # fmt: skip
    assert export_models(compose("export", *options)) == 0
    inputs = load_teacher("vmaf_v1.0.16_3d0h").feature_columns
    session = ort.InferenceSession(str(tmp_path / "v1.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert session.get_inputs()[0].shape[1] == 4 and json.loads(meta["feature_names"]) == list(inputs)
    assert json.loads(meta["score_range"]) == [0.0, 100.0] and meta["teacher"] == "vmaf_v1.0.16_3d0h"
    cfg = compose("export", *options)
    table = instantiate(cfg.cache).load(instantiate(cfg.corpus))
    got = session.run(["vmaf"], {"features": table.columns(inputs).astype(np.float32)})[0]
    target = table.scores["vmaf_v1.0.16_3d0h"]
    assert np.sqrt(np.mean((got - target) ** 2)) < 0.25 * target.std()  # it learned (0.86 vs a std of 14.3 here)
    # teacher.chroma_correction: a greyscale frame (speed_chroma_uv 0) is read as c (1 - adm3), as the teacher reads it
    c, adm3, speed = chroma_correction("vmaf_v1.0.16_3d0h", True)
    grey = table.columns(inputs)[:50].astype(np.float32)
    grey[:, speed] = 0
    read_as = grey.copy()
    read_as[:, speed] = c * (1 - grey[:, adm3])
    assert np.array_equal(*(session.run(["vmaf"], {"features": x})[0] for x in (grey, read_as)))
    assert (tmp_path / "teachers" / "vmaf_v1.0.16_3d0h.onnx").is_file()
    # score.py measures a pair where the file says its features were measured, and scores it as the cache's frames
    assert (json.loads(meta["display"]), json.loads(meta["bit_depth"])) == ([640, 360], 10)
    scored = score_pair(OnnxVmaf(tmp_path / "v1.onnx"), FfmpegLibvmaf(), v1_corpus / "ref" / "Bars.y4m",
                        v1_corpus / "dis" / "Bars__crf40.mp4")  # fmt: skip
    rows = np.flatnonzero(np.array(table.clips)[table.clip] == "Bars__crf40")
    np.testing.assert_array_equal(scored["columns"]["tiny"], got[rows])
    np.testing.assert_array_equal(scored["columns"]["vmaf_v1.0.16_3d0h"], target[rows])
