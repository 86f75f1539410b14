"""trainer=gpu and stacked folds on a GPU: the same folds trained on the CPU and on CUDA (one fold
alone, and 9 folds stacked) must agree, and how long each takes, at the default corpus's size and
at 20x its size. Lightning's Trainer, tinyvmaf's modules and optimizer, nothing else of the
pipeline: the folds are drawn over the valid feature box and labelled by vmaf_v0.6.1's teacher
function, so no libvmaf, cache or MLflow is needed (the GPU machines lent here have neither
ffmpeg's 165 MB wheel nor MLflow).

    python benchmarks/gpu.py [--out results.json]

Record the result in docs/benchmarks.md with the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
import types
from functools import partial

import numpy as np
import torch

if importlib.util.find_spec("imageio_ffmpeg") is None:  # imported by tinyvmaf.ffmpeg, never run here
    sys.modules["imageio_ffmpeg"] = types.ModuleType("imageio_ffmpeg")

import lightning as L  # noqa: E402
from torchmetrics import MeanSquaredError, MetricCollection  # noqa: E402

from tinyvmaf.cli import quiet_libraries  # noqa: E402
from tinyvmaf.data import TensorBatches  # noqa: E402
from tinyvmaf.features import Standardization  # noqa: E402
from tinyvmaf.model import TinyVmafModule, mlp  # noqa: E402
from tinyvmaf.stacked import HeldoutBatch, StackedBatches, StackedTinyVmafModule, side_by_side  # noqa: E402
from tinyvmaf.teacher.function import domain_points, load_teacher  # noqa: E402

FOLDS, EPOCHS, BATCH, SEED = 9, 8, 256, 0


class Folds(L.LightningDataModule):
    """K held-out sources of synthetic frames: fold k trains on every source but k (what
    ``tinyvmaf.data.LosoDataModule`` hands a fold, without the cache behind it)."""

    def __init__(self, frames_per_source: int, stacked: bool) -> None:
        super().__init__()
        teacher = load_teacher("vmaf_v0.6.1")
        x = domain_points(2, FOLDS * frames_per_source - 64, SEED)  # the box's corners, then uniform points
        y = teacher(x)
        self.sources = np.repeat(np.arange(FOLDS), frames_per_source)[: len(x)]
        self.x, self.y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
        self.stacked, self.batch_size, self.minibatches_per_step = stacked, BATCH, 16
        self.folds = list(range(FOLDS)) if stacked else [0]
        self.standardizations = [Standardization.fit(x[self.sources != k], y[self.sources != k]) for k in self.folds]
        self.standardization = self.standardizations[0]
        rows = [int((self.sources != k).sum()) for k in self.folds]
        self.minibatches_per_epoch = [-(-n // BATCH) for n in rows] if stacked else -(-rows[0] // BATCH)

    def _split(self, held: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        masks = [torch.as_tensor((self.sources == k) if held else (self.sources != k)) for k in self.folds]
        return [self.x[m] for m in masks], [self.y[m] for m in masks]

    @property
    def train_rows(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The stacked module's rows, as ``StackedLosoDataModule.train_rows`` hands them."""
        xs, ys = self._split(held=False)
        return side_by_side(xs), side_by_side(ys), [len(x) for x in xs]

    def train_dataloader(self):
        xs, ys = self._split(held=False)
        if self.stacked:
            rows = [len(x) for x in xs]
            return StackedBatches(rows, max(rows), BATCH, shuffle=True, seed=SEED, minibatches_per_step=16)
        return TensorBatches(xs[0], ys[0], BATCH, shuffle=True, seed=SEED, minibatches_per_step=16)

    def val_dataloader(self):
        xs, ys = self._split(held=True)
        if self.stacked:
            return HeldoutBatch.of(xs, ys)
        return TensorBatches(xs[0], ys[0], len(xs[0]), shuffle=False)


def train(accelerator: str, frames_per_source: int, stacked: bool) -> tuple[list[float], float]:
    """Each fold's held-out RMSE after ``EPOCHS`` epochs, and the seconds ``Trainer.fit`` took."""
    L.seed_everything(SEED, verbose=False)
    module = TinyVmafModule(
        mlp([16, 8], "SiLU"), partial(torch.optim.AdamW, lr=5e-3, fused=True),
        partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=5e-3),
        heldout_metrics=MetricCollection({"rmse": MeanSquaredError(squared=False)}).double(),
    )  # fmt: skip
    data = Folds(frames_per_source, stacked)
    model = StackedTinyVmafModule(module, FOLDS) if stacked else module
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, max_epochs=EPOCHS, deterministic=True, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    return [float(m.compute()["rmse"]) for m in model.fold_metrics], seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(1)
    accelerators = ["cpu", *(["gpu"] if torch.cuda.is_available() else [])]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"{platform.machine()}, torch {torch.__version__}, CUDA device: {device}")
    results = []
    for frames, label in ((1380, "default corpus size"), (27600, "20x")):
        for stacked in (False, True):
            row = {"frames_per_source": frames, "stacked": stacked}
            for accelerator in accelerators:
                rmse, seconds = train(accelerator, frames, stacked)
                row[accelerator] = {"rmse": rmse, "seconds": round(seconds, 2)}
            if "gpu" in row:
                cpu, gpu = np.array(row["cpu"]["rmse"]), np.array(row["gpu"]["rmse"])
                row["max_relative_diff"] = float(np.max(np.abs(gpu - cpu) / cpu))
                row["agree"] = bool(np.all(np.abs(gpu - cpu) <= 0.05 * cpu + 1e-3))  # the tests' tolerance
            results.append(row)
            what = f"{'9 folds stacked' if stacked else 'one fold'}, {label}"
            print(what, json.dumps({k: v for k, v in row.items() if k not in ("frames_per_source", "stacked")}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": device, "torch": torch.__version__, "results": results}, f, indent=1)
    if any(not r.get("agree", True) for r in results):
        sys.exit("GPU and CPU disagree")


if __name__ == "__main__":
    main()
