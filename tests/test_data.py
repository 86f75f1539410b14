"""The LOSO data module: the held-out source never touches training (not its statistics, not the
augmentation), and the batches a fold trains on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinyvmaf.cache import TeacherCache
from tinyvmaf.corpus.directory import DirectoryCorpus
from tinyvmaf.data import Augmentation, LosoDataModule, TensorBatches
from tinyvmaf.teacher.ffmpeg_filter import FfmpegLibvmaf
from tinyvmaf.teacher.function import DOMAIN_HIGH, DOMAIN_LOW, load_teacher


@pytest.fixture
def tiny_cache(tiny_corpus, tmp_path):
    corpus = DirectoryCorpus(tiny_corpus)
    cache = TeacherCache(tmp_path / "data" / "cache", FfmpegLibvmaf(), ["vmaf_v0.6.1"], n_jobs=2)
    cache.build(corpus)
    return corpus, cache


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


def test_standardization_is_fitted_on_the_training_sources_only(tiny_cache):
    corpus, cache = tiny_cache
    dm = LosoDataModule(corpus, cache, "vmaf_v0.6.1", heldout="Mandel")
    dm.setup()
    table = cache.load(corpus)
    train_rows = table.source_of_frame == table.sources.index("Bars")
    np.testing.assert_allclose(dm.standardization.feature_mean, table.features[train_rows].mean(axis=0))
    np.testing.assert_allclose(
        dm.standardization.feature_std,
        np.where(table.features[train_rows].std(axis=0) > 0, table.features[train_rows].std(axis=0), 1),
    )
    assert dm.standardization.target_mean == pytest.approx(table.scores["vmaf_v0.6.1"][train_rows].mean())
    assert len(dm.train_x) == 24 and len(dm.test_x) == 24
    all_mean = table.features.mean(axis=0)
    assert not np.allclose(dm.standardization.feature_mean, all_mean)


def test_tensor_batches_cover_every_row_once_per_epoch_in_a_seeded_order():
    x, y = torch.arange(10.0)[:, None].repeat(1, 6), torch.arange(10.0)
    batches = TensorBatches(x, y, batch_size=3, shuffle=True, seed=7, minibatches_per_step=2)
    assert len(batches) == 2  # 10 rows, 6 rows an item: the last item holds the 4 left
    epoch = [b for b in batches]
    assert [len(b[1]) for b in epoch] == [6, 4]
    rows = torch.cat([b[1] for b in epoch])
    assert sorted(rows.tolist()) == list(range(10)) and rows.tolist() != list(range(10))
    assert torch.equal(torch.cat([b[0][:, 0] for b in epoch]), rows)  # features stay with their target
    again = TensorBatches(x, y, batch_size=3, shuffle=True, seed=7, minibatches_per_step=2)
    assert torch.equal(torch.cat([b[1] for b in again]), rows)  # same seed, same order
    assert torch.cat([b[1] for b in batches]).tolist() != rows.tolist()  # the next epoch is reshuffled
    plain = TensorBatches(x, y, batch_size=4, shuffle=False)
    assert [b[1].tolist() for b in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
