"""The LOSO LightningDataModule over the teacher cache.

Trains on every source but the held-out one and evaluates on that one (``heldout=None``:
trains on every source, as the shipped models are). The standardization of
features and target is fitted on the training sources alone and handed to the model, so the
held-out source never influences training, not even through its statistics.

``StackedLosoDataModule`` serves every fold of a LOSO at once, for a stacked model: each fold's
data is exactly what its own ``LosoDataModule`` holds, side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch

from tinyvmaf.cache import FrameTable, TeacherCache
from tinyvmaf.corpus import Corpus, sources_of
from tinyvmaf.errors import TinyVmafError, finite_number
from tinyvmaf.features import Standardization, transform_features
from tinyvmaf.teacher import FEATURE_NAMES
from tinyvmaf.teacher.function import DOMAIN_HIGH, DOMAIN_LOW, load_teacher

_BUILT: set[tuple[str, str]] = set()  # (cache root, corpus) built by this process: sweeps check once


@dataclass(frozen=True)
class Augmentation:
    """Synthetic feature vectors labelled by the teacher function, added to the training frames.

    ``amount`` synthetic vectors per real training frame, split into: ``around`` (a real frame
    plus Gaussian noise of ``jitter`` feature standard deviations), ``between`` (a random convex
    mix of two real frames) and ``across`` (uniform over the valid feature box of
    ``tinyvmaf.teacher.function``, some coordinates on its faces). Only
    the training sources' frames are used: the held-out source is never touched.
    """

    enabled: bool = False
    amount: float = 2.0
    around: float = 0.4
    between: float = 0.4
    across: float = 0.2
    jitter: float = 0.3
    edge: float = 0.2  # chance that an across coordinate sits on the box's low or high face

    def __post_init__(self) -> None:
        """Refuse settings that would draw nothing sensible, naming the option."""
        for name in ("amount", "around", "between", "across", "jitter"):
            value = getattr(self, name)
            if not finite_number(value) or value < 0:
                raise TinyVmafError(f"data.augment.{name}={value!r}: must be a finite number >= 0")
        if not 0 <= self.edge <= 1:
            raise TinyVmafError(f"data.augment.edge={self.edge!r}: must be in [0, 1]")
        if self.around + self.between + self.across <= 0:
            raise TinyVmafError("data.augment: around, between and across are all 0; give at least one a share")

    def sample(self, features: np.ndarray, teacher: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``amount`` x len(features) labelled vectors; none when augmentation is off."""
        if not self.enabled:
            return np.zeros((0, len(FEATURE_NAMES))), np.zeros(0)
        function = load_teacher(teacher)
        if tuple(function.feature_columns) != FEATURE_NAMES:
            raise TinyVmafError(
                f"data.augment: teacher {teacher} reads {function.feature_columns}, not the six features the models take"
            )
        rng = np.random.default_rng(seed)
        n = int(self.amount * len(features))
        shares = np.array([self.around, self.between, self.across], dtype=np.float64)
        n_around, n_between = (n * shares[:2] / shares.sum()).astype(int)
        n_across = n - n_around - n_between
        low, high = DOMAIN_LOW, DOMAIN_HIGH
        around = features[rng.integers(len(features), size=n_around)]
        around = around + rng.normal(size=around.shape) * features.std(axis=0) * self.jitter
        a, b = features[rng.integers(len(features), size=(2, n_between))]
        mix = rng.uniform(size=(n_between, 1))
        between = mix * a + (1 - mix) * b
        across = rng.uniform(low, high, size=(n_across, len(FEATURE_NAMES)))
        # Some coordinates on the domain's faces: corners and edges are where an MLP drifts most.
        on_face = rng.uniform(size=across.shape) < self.edge
        across = np.where(on_face, np.where(rng.uniform(size=across.shape) < 0.5, low, high), across)
        synthetic = np.clip(np.concatenate([around, between, across]), low, high)
        return synthetic, function(synthetic)


class TensorBatches:
    """Mini-batches sliced from whole tensors: no per-sample Python, no worker processes.

    Each item holds ``minibatches_per_step`` consecutive mini-batches, which the model steps through one by
    one: the same updates in the same order, at a fraction of Lightning's per-batch overhead.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        minibatches_per_step: int = 1,
    ) -> None:
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.minibatches_per_step = minibatches_per_step
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.x) // (self.batch_size * self.minibatches_per_step))

    def __iter__(self):
        x, y = self.x, self.y
        order = torch.randperm(len(x), generator=self.generator) if self.shuffle else torch.arange(len(x))
        for start in range(0, len(x), self.batch_size * self.minibatches_per_step):
            idx = order[start : start + self.batch_size * self.minibatches_per_step]
            yield x[idx], y[idx]


class LosoDataModule(L.LightningDataModule):
    def __init__(
        self,
        corpus: Corpus,
        cache: TeacherCache,
        teacher: str,
        heldout: str | None,
        batch_size: int = 256,
        seed: int = 0,
        build_cache: bool = True,
        augment: Augmentation | None = None,
        log_motion: bool = False,
        minibatches_per_step: int = 1,
    ) -> None:
        super().__init__()
        self.augment = augment or Augmentation()
        self.log_motion = log_motion
        self.minibatches_per_step = minibatches_per_step
        self.corpus, self.cache, self.teacher, self.heldout = corpus, cache, teacher, heldout
        self.batch_size, self.seed, self.build_cache = batch_size, seed, build_cache
        self.table: FrameTable | None = None

    def prepare_data(self) -> None:
        """Build the teacher cache if it is missing or stale (a warm cache runs no libvmaf)."""
        key = (str(self.cache.root), self.corpus.name)
        if not self.build_cache or key in _BUILT:
            return
        self.cache.build(self.corpus).warn_left_out()
        _BUILT.add(key)

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        table = self.cache.load(self.corpus)
        if self.teacher not in table.scores:
            raise TinyVmafError(
                f"teacher={self.teacher}: not in the cache (it holds {', '.join(table.scores)}); add it to cache.models"
            )
        if self.heldout is not None and self.heldout not in table.sources:
            self._refuse_uncached_source(table)
        held = table.source_of_frame == (table.sources.index(self.heldout) if self.heldout else -1)
        target = table.scores[self.teacher]
        self.table = table
        train_x, train_y = table.features[~held], target[~held]
        # Fitted on the real training frames only (transformed as the model will see them).
        self.standardization = Standardization.fit(transform_features(train_x, self.log_motion), train_y)
        self.train_x, self.train_y = _tensors(train_x, train_y)
        self.synthetic_x, self.synthetic_y = _tensors(*self.augment.sample(train_x, self.teacher, self.seed))
        self.test_x, self.test_y = _tensors(table.features[held], target[held])

    def _refuse_uncached_source(self, table: FrameTable) -> None:
        """A source only leaves the cache when every clip of it failed: say which case it is."""
        if self.heldout in sources_of(self.corpus.pairs()):
            raise TinyVmafError(
                f"fold={self.heldout}: every clip of this source failed to build, so the cache holds none of its frames "
                f"(python build_cache.py lists why); cached sources: {', '.join(table.sources)}"
            )
        raise TinyVmafError(
            f"fold={self.heldout}: no such source in corpus {table.corpus!r}; valid: {', '.join(table.sources)}"
        )

    @property
    def minibatches_per_epoch(self) -> int:
        """Optimizer steps per epoch (real plus synthetic vectors): sizes the lr schedule."""
        return -(-(len(self.train_x) + len(self.synthetic_x)) // self.batch_size)

    def train_dataloader(self) -> TensorBatches:
        x, y = torch.cat([self.train_x, self.synthetic_x]), torch.cat([self.train_y, self.synthetic_y])
        return TensorBatches(
            x, y, self.batch_size, shuffle=True, seed=self.seed, minibatches_per_step=self.minibatches_per_step
        )

    def val_dataloader(self) -> TensorBatches | list:
        """The held-out source in one batch; nothing when training on every source (export)."""
        if not len(self.test_x):
            return []
        return TensorBatches(self.test_x, self.test_y, len(self.test_x), shuffle=False)


class StackedBatches:
    """Every fold's mini-batches side by side, as ``TensorBatches`` would cut them for each fold
    alone (same shuffling from the same seed, same last partial mini-batch): an item holds
    ``minibatches_per_step`` mini-batches of each fold as ``(x [K, M*B, 6], y [K, M*B], weight
    [K, M*B])``. Folds with fewer rows are padded with copies of their first row, weight 0."""

    def __init__(
        self,
        xs: list[torch.Tensor],
        ys: list[torch.Tensor],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        minibatches_per_step: int = 1,
    ) -> None:
        self.rows = [len(x) for x in xs]
        longest = max(self.rows)
        self.x = torch.stack([torch.cat([x, x[:1].expand(longest - len(x), -1)]) for x in xs])
        self.y = torch.stack([torch.cat([y, y[:1].expand(longest - len(y))]) for y in ys])
        self.batch_size, self.shuffle, self.minibatches_per_step = batch_size, shuffle, minibatches_per_step
        self.generators = [torch.Generator().manual_seed(seed) for _ in xs]
        self.span = -(-longest // batch_size) * batch_size  # rows per fold per epoch, padding included

    def __len__(self) -> int:
        return -(-self.span // (self.batch_size * self.minibatches_per_step))

    def __iter__(self):
        folds = len(self.rows)
        index = torch.zeros(folds, self.span, dtype=torch.long)
        weight = torch.zeros(folds, self.span)
        for k, (n, generator) in enumerate(zip(self.rows, self.generators)):
            index[k, :n] = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
            weight[k, :n] = 1.0
        flat = (index + torch.arange(folds)[:, None] * self.x.shape[1]).view(-1)
        x = self.x.view(-1, self.x.shape[-1]).index_select(0, flat).view(folds, self.span, -1)
        y = self.y.view(-1).index_select(0, flat).view(folds, self.span)
        step = self.batch_size * self.minibatches_per_step
        for start in range(0, self.span, step):
            yield x[:, start : start + step], y[:, start : start + step], weight[:, start : start + step]


class StackedLosoDataModule(L.LightningDataModule):
    """The folds of a LOSO side by side, each one's data from its own ``LosoDataModule``
    (configured exactly as its separate run): its training and held-out sources, standardization,
    augmentation draws and shuffling."""

    def __init__(self, folds: list[LosoDataModule]) -> None:
        super().__init__()
        self.folds = folds
        first = folds[0]
        self.batch_size, self.seed, self.minibatches_per_step = first.batch_size, first.seed, first.minibatches_per_step

    def prepare_data(self) -> None:
        self.folds[0].prepare_data()  # one corpus, one cache

    def setup(self, stage: str | None = None) -> None:
        for fold in self.folds:
            fold.setup(stage)

    @property
    def standardizations(self) -> list[Standardization]:
        return [f.standardization for f in self.folds]

    @property
    def minibatches_per_epoch(self) -> list[int]:
        return [f.minibatches_per_epoch for f in self.folds]

    def train_dataloader(self) -> StackedBatches:
        xs = [torch.cat([f.train_x, f.synthetic_x]) for f in self.folds]
        ys = [torch.cat([f.train_y, f.synthetic_y]) for f in self.folds]
        return StackedBatches(xs, ys, self.batch_size, True, self.seed, self.minibatches_per_step)

    def val_dataloader(self) -> StackedBatches:
        """Every fold's held-out source in one item."""
        xs, ys = [f.test_x for f in self.folds], [f.test_y for f in self.folds]
        return StackedBatches(xs, ys, max(len(x) for x in xs), shuffle=False)


def _tensors(features: np.ndarray, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(target, dtype=torch.float32)
