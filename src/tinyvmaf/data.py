"""The LOSO LightningDataModule over the teacher cache.

Trains on every source but the held-out one and evaluates on that one (``heldout=None``:
trains on every source, as the shipped models are). The standardization of
features and target is fitted on the training sources alone and handed to the model, so the
held-out source never influences training, not even through its statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch

from tinyvmaf.cache import FrameTable, TeacherCache
from tinyvmaf.corpus import Corpus, sources_of
from tinyvmaf.errors import TinyVmafError, finite_number
from tinyvmaf.features import Standardization, chroma_correction, motion_column, transform_features
from tinyvmaf.teacher.function import load_teacher, student_inputs

_BUILT: set[Path] = set()  # corpus cache folders built by this process: sweeps check once


@dataclass(frozen=True)
class Augmentation:
    """Synthetic feature vectors labelled by the teacher function, added to the training frames.

    ``amount`` synthetic vectors per real training frame, split into: ``around`` (a real frame
    plus Gaussian noise of ``jitter`` feature standard deviations), ``between`` (a random convex
    mix of two real frames) and ``across`` (uniform over the teacher's valid feature box,
    ``SvrTeacher.domain``, some coordinates on its faces). Only
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
            return np.zeros((0, features.shape[1])), np.zeros(0)
        function = load_teacher(teacher)
        if function.feature_columns != student_inputs(teacher):
            raise TinyVmafError(
                f"data.augment: teacher {teacher} reads {function.feature_columns}, not the features its stand-ins take"
            )
        rng = np.random.default_rng(seed)
        n = int(self.amount * len(features))
        shares = np.array([self.around, self.between, self.across], dtype=np.float64)
        n_around, n_between = (n * shares[:2] / shares.sum()).astype(int)
        n_across = n - n_around - n_between
        low, high = function.domain
        around = features[rng.integers(len(features), size=n_around)]
        around = around + rng.normal(size=around.shape) * features.std(axis=0) * self.jitter
        a, b = features[rng.integers(len(features), size=(2, n_between))]
        mix = rng.uniform(size=(n_between, 1))
        between = mix * a + (1 - mix) * b
        across = rng.uniform(low, high, size=(n_across, len(low)))
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
        chroma_correction: bool = False,
    ) -> None:
        super().__init__()
        self.augment = augment or Augmentation()
        self.log_motion, self.chroma_correction = log_motion, chroma_correction
        self.minibatches_per_step = minibatches_per_step
        self.corpus, self.cache, self.teacher, self.heldout = corpus, cache, teacher, heldout
        self.batch_size, self.seed, self.build_cache = batch_size, seed, build_cache
        self.table: FrameTable | None = None

    def prepare_data(self) -> None:
        """Build the teacher cache if it is missing or stale (a warm cache runs no libvmaf)."""
        if not self.build_cache or self.cache.folder(self.corpus) in _BUILT:
            return
        self.cache.build(self.corpus).warn_left_out()
        _BUILT.add(self.cache.folder(self.corpus))

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
        inputs = student_inputs(self.teacher)
        features = table.columns(inputs)
        train_x, train_y = features[~held], target[~held]
        # Fitted on the real training frames only (transformed as the model will see them).
        motion = motion_column(inputs) if self.log_motion else None
        chroma = chroma_correction(self.teacher, self.chroma_correction)
        self.standardization = Standardization.fit(transform_features(train_x, motion, chroma), train_y)
        self.train_x, self.train_y = _tensors(train_x, train_y)
        self.synthetic_x, self.synthetic_y = _tensors(*self.augment.sample(train_x, self.teacher, self.seed))
        self.test_x, self.test_y = _tensors(features[held], target[held])
        self.test_clip = table.clip[held]  # per-clip figures pool the held-out frames by clip

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


def _tensors(features: np.ndarray, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(target, dtype=torch.float32)
