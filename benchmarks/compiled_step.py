"""Would ``torch.compile`` pay for stacked folds? One training step's forward and backward (9
stacked mlp_small folds, batch 256 each, the censored loss) eager against compiled (inductor, CPU),
and the compile's own time.

    python benchmarks/compiled_step.py

Record the result in docs/benchmarks.md with the machine.
"""

from __future__ import annotations

import os
import platform
import time
from functools import partial

import torch

from tinyvmaf.metrics import heldout_metrics
from tinyvmaf.model import TinyVmafModule, mlp
from tinyvmaf.stacked import StackedTinyVmafModule

FOLDS, BATCH, STEPS = 9, 256, 300


def main() -> None:
    torch.set_num_threads(1)
    single = TinyVmafModule(
        mlp([16, 8], "SiLU"), partial(torch.optim.AdamW, lr=1e-2, fused=True),
        partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1e-2), heldout_metrics=heldout_metrics(),
    )  # fmt: skip
    stacked = StackedTinyVmafModule(single, FOLDS)
    model = stacked.model
    x, y, weight = torch.rand(FOLDS, BATCH, 6), torch.rand(FOLDS, BATCH) * 100, torch.ones(FOLDS, BATCH)

    def loss(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        scale = weight / (weight.sum(1).clamp(min=1) * model.target_std.squeeze(1).square())[:, None]
        return (stacked.loss(model(x), y) * scale).sum()

    def step(f) -> None:
        model.net.weights.grad = None
        f(x, y, weight).backward()

    def microseconds(f) -> float:
        start = time.perf_counter()
        for _ in range(STEPS):
            step(f)
        return (time.perf_counter() - start) / STEPS * 1e6

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    eager = microseconds(loss)
    start = time.perf_counter()
    compiled = torch.compile(loss)
    step(compiled)
    compile_seconds = time.perf_counter() - start
    fast = microseconds(compiled)
    print(f"forward + backward: eager {eager:.0f} µs, compiled {fast:.0f} µs; compiling took {compile_seconds:.1f} s")
    print(
        f"a 30-epoch job (3,960 steps) would save {(eager - fast) * 3960 / 1e6:.2f} s for {compile_seconds:.1f} s of compiling"
    )


if __name__ == "__main__":
    main()
