"""How close training runs to its arithmetic. For each shipped recipe (v0.6.1 on the default
corpus, and a VMAF v1 teacher on the v1 corpus; mlp_small and mlp_medium): one stacked LOSO's
training FLOPs, this machine's matmul rate, the LOSO's time, their ratio (the floor ratio: 1 would
be every FLOP at the matmul rate), and where the time goes.

    python benchmarks/engine.py                          # both recipes, both archs
    python benchmarks/engine.py --recipes v1 --archs mlp_small --epochs 100
    python benchmarks/engine.py --autograd               # without the fused step: the reference
    python benchmarks/engine.py trainer=gpu              # on a CUDA machine (autograd on the GPU)

Each LOSO runs in this process on a warm cache (build it first, untimed: ``python build_cache.py``
and ``python build_cache.py corpus=v1 teacher=vmaf_v1.0.16_3d0h``) into a scratch MLflow store;
the process's start-up (imports) is timed once in a child process and added for the whole-process
ratio. ``--epochs N`` trains N epochs instead of the recipe's (the FLOPs follow). Record the result
in docs/benchmarks.md with the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager

import lightning as L
import torch
from common import ROOT, compose
from rich.console import Console
from rich.table import Table

from tinyvmaf import data, fused, training
from tinyvmaf.cli import quiet_libraries

RECIPES = {
    "v0": ["experiment=shipped"],
    "v1": ["experiment=shipped_v1", "teacher=vmaf_v1.0.16_3d0h"],
}
PHASES = ("steps", "of which kernel", "data and loop", "evaluation", "fit set-up", "data set-up", "runs and evidence")


def matmul_rate(threads: int, size: int = 2048, rounds: int = 5) -> float:
    """The best of ``rounds`` rounds of 10 float32 [size, size] products, in FLOP/s."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 10 * 2 * size**3 / (time.perf_counter() - start))
    torch.set_num_threads(1)
    return best


def start_up_seconds() -> float:
    """A fresh process importing what train.py imports."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tinyvmaf.training, tinyvmaf.cli"], check=True, cwd=ROOT)
    return time.perf_counter() - start


class Timeline(L.Callback):
    """Seconds per phase of a fit, and the training arithmetic it ran."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds, self.flops = seconds, 0.0
        self.mark: dict[str, float] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        rows = sum(len(f.train_x) + len(f.synthetic_x) for f in getattr(dm, "folds", [dm]))
        linears = [m for m in pl_module.model.net.modules() if isinstance(m, torch.nn.Linear)]
        multiply_adds = sum(m.in_features * m.out_features for m in linears)
        # forward 2 FLOP a multiply-add, backward 4 (the input's and the weight's gradients)
        self.flops += 6 * multiply_adds * rows * trainer.max_epochs

    def _start(self, key: str) -> None:
        self.mark[key] = time.perf_counter()

    def _stop(self, key: str, phase: str) -> None:
        self.seconds[phase] += time.perf_counter() - self.mark.pop(key)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start("epoch")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop("epoch", "epochs")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start("step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop("step", "steps")

    def on_validation_start(self, trainer, pl_module) -> None:
        self._start("validation")

    def on_validation_end(self, trainer, pl_module) -> None:
        self._stop("validation", "evaluation")


@contextmanager
def timed(seconds: dict[str, float]):
    """Patches the job's Trainer, fit, data set-up (the augmentation's teacher labels) and fused
    kernel to time their phases."""
    timeline = Timeline(seconds)
    make_trainer = training.Job.trainer

    def trainer(job, **options):
        options["callbacks"] = [*options.get("callbacks", []), timeline]
        return make_trainer(job, **options)

    def timing(function, phase: str):
        def timed_function(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[phase] += time.perf_counter() - start

        return timed_function

    patches = [
        (training.Job, "trainer", trainer),
        (L.Trainer, "fit", timing(L.Trainer.fit, "fit")),
        (fused.FusedSteps, "run", timing(fused.FusedSteps.run, "of which kernel")),
        (data.LosoDataModule, "setup", timing(data.LosoDataModule.setup, "data set-up")),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, patched in patches:
        setattr(owner, name, patched)
    try:
        yield timeline
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def loso(recipe: str, arch: str, epochs: int | None, fused_step: bool, extra: list[str], store: str) -> dict:
    """One stacked LOSO of ``recipe`` for ``arch``: its seconds per phase, FLOPs and figure."""
    overrides = [*RECIPES[recipe], f"arch={arch}", "fold.heldout=all", f"sweep_id=engine-{recipe}-{arch}",
                 *([f"recipe.{arch}.epochs={epochs}"] if epochs else []), *extra]  # fmt: skip
    os.environ["TINYVMAF_MLRUNS"] = store  # the store and its artifacts: a scratch folder, not mlruns/
    cfg = compose("train", *overrides)
    seconds: dict[str, float] = defaultdict(float)
    if not fused_step:
        original = fused.kernel
        fused.kernel = lambda: None
    try:
        with timed(seconds) as timeline:
            start = time.perf_counter()
            rmse = training.train(cfg)
            seconds["total"] = time.perf_counter() - start
    finally:
        if not fused_step:
            fused.kernel = original
    seconds["data and loop"] = seconds["epochs"] - seconds["steps"] - seconds["evaluation"]
    seconds["fit set-up"] = seconds["fit"] - seconds["epochs"]
    seconds["runs and evidence"] = seconds["total"] - seconds["fit"] - seconds["data set-up"]
    return {"seconds": seconds, "flops": timeline.flops, "rmse": rmse, "epochs": cfg.trainer.max_epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--archs", nargs="+", default=["mlp_small", "mlp_medium"])
    parser.add_argument("--epochs", type=int, default=None, help="train this many epochs, not the recipe's")
    parser.add_argument("--autograd", action="store_true", help="train without the fused step")
    args, extra = parser.parse_known_args()
    quiet_libraries()
    cores = fused.usable_cores()
    rate = matmul_rate(cores)
    start_up = start_up_seconds()
    console = Console(width=240)  # the whole table, also into a file
    console.print(
        f"machine: {platform.machine()}, {cores} cores, torch {torch.__version__}; matmul {rate / 1e9:.0f} GFLOPS "
        f"(2048x2048 float32, {cores} threads, best of 5); process start-up {start_up:.1f} s; "
        f"fused step: {'off' if args.autograd else 'on' if fused.kernel() else 'not built'}"
    )
    table = Table("recipe", "arch", "epochs", "TFLOP", "floor s", "LOSO s", "+ start-up", "floor ratio",
                  *PHASES, "LOSO RMSE")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tinyvmaf-engine-") as store:
        for recipe in args.recipes:
            for arch in args.archs:
                r = loso(recipe, arch, args.epochs, not args.autograd, extra, store)
                s, floor = r["seconds"], r["flops"] / rate
                whole = s["total"] + start_up
                table.add_row(
                    recipe, arch, str(r["epochs"]), f"{r['flops'] / 1e12:.3f}", f"{floor:.1f}", f"{s['total']:.1f}",
                    f"{whole:.1f}", f"{whole / floor:.0f}x", *(f"{s[p]:.1f}" for p in PHASES), f"{r['rmse']:.4f}",
                )  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
