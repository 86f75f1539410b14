"""The fused training step of stacked MLPs: forward, censored loss, backward and AdamW of every
fold's mini-batch in one call into C (``csrc/fused_mlp.c``, built by ``pip install``), folds
spread over threads (``fold_threads``).

Why: a step in torch ops costs its ~40 dispatches and the fixed costs of tiny kernels (a
``[14, 256, 16] x [14, 16, 8]`` bmm takes 54 us for 0.7 MFLOP), so the v1 mlp_small LOSO ran at
1 % of the machine's matmul rate. The kernel trains what ``tinyvmaf.stacked`` trains through
autograd, with the same rows, order, padding and AdamW coefficients; the tests hold the two to
float32 tolerance. It serves the MLP family (``nn.Linear`` layers with one of ``ACTIVATIONS``
between them), ``CensoredMSELoss`` or ``MSELoss``, on the CPU; anything else trains through autograd.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tinyvmaf.errors import TinyVmafError

# The activations the kernel computes (its enum), by torch module name; 0 is the linear control.
ACTIVATIONS = {"ReLU": 1, "SiLU": 2, "Tanh": 3, "Sigmoid": 4}

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_ARGTYPES = [
    ctypes.c_int, ctypes.c_int, ctypes.c_int, _P, ctypes.c_int,  # folds, layers, widths, activation
    _P, _P, _P, _I64,  # param, exp_avg, exp_avg_sq, n_params
    _P, _P, _P, _P,  # z, target, low, high
    _P, _P, _I64, _I64, _I64,  # index, rows, batch, first, count
    _P, _I64, _P, ctypes.c_float,  # coef, table_steps, steps, eps
    _P, _P,  # loss_sum, batches
]  # fmt: skip


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a SLURM job's cpus_per_task), where the
    system says (Linux); else every core."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The compiled step, or None where the package was installed without a C compiler."""
    spec = importlib.util.find_spec("tinyvmaf._fused_mlp")
    if spec is None or spec.origin is None:
        return None
    source = Path(__file__).parent / "csrc" / "fused_mlp.c"
    if source.exists() and source.stat().st_mtime > Path(spec.origin).stat().st_mtime:
        raise TinyVmafError(f"{spec.origin} is older than {source}: rebuild it with pip install -e .")
    library = ctypes.CDLL(spec.origin)
    library.tv_train_folds.argtypes = _ARGTYPES
    library.tv_train_folds.restype = ctypes.c_int
    return library


def fused_activation(layers: list[nn.Module]) -> int | None:
    """The kernel's code for a net's layers (Linear, act, Linear, ..., Linear -> 1), or None if
    the kernel cannot train them."""
    if len(layers) % 2 == 0 or not all(isinstance(m, nn.Linear) for m in layers[::2]) or layers[-1].out_features != 1:
        return None  # an even count ends on an activation, which the kernel does not apply
    between = {type(m) for m in layers[1::2]}
    if len(between) > 1:
        return None
    if not between:
        return 0
    (kind,) = between
    return ACTIVATIONS.get(kind.__name__) if kind.__module__.startswith("torch.nn") else None


@dataclass
class FusedRows:
    """Every fold's training rows as the kernel reads them, standardized as each fold's model
    standardizes them: ``z`` [K * N, F]; ``target`` [K * N]; ``low``/``high`` [K * N], the
    standardized bound where the teacher sits on it, -inf/+inf where it does not."""

    z: torch.Tensor
    target: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    rows: torch.Tensor  # [K] int64: each fold's real rows


class FusedSteps:
    """Trains a stacked net's folds through the kernel: ``run`` takes one chunk of mini-batches."""

    def __init__(self, widths: list[int], activation: int, rows: FusedRows, threads: int) -> None:
        self.library = kernel()
        if self.library is None:
            raise TinyVmafError("the fused step is not built (no C compiler at install): pip install -e . with one")
        self.widths = torch.tensor(widths, dtype=torch.int32)
        self.activation, self.data = activation, rows
        folds = len(rows.rows)
        self.threads = max(1, min(threads, folds))
        edges = [folds * t // self.threads for t in range(self.threads + 1)]
        self.ranges = [(a, b) for a, b in zip(edges, edges[1:]) if b > a]
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def run(
        self,
        weights: torch.Tensor,
        state: dict[str, torch.Tensor],
        table: torch.Tensor,
        eps: float,
        index: torch.Tensor,
        first: int,
        batch_size: int,
        loss_sum: torch.Tensor,
        batches: torch.Tensor,
    ) -> int:
        """Mini-batches ``first`` .. of every fold (rows ``index`` [K, count * batch_size]),
        updating ``weights`` [K, P] and the AdamW ``state`` in place; per fold, the sum of its
        mini-batch losses and their count are added to ``loss_sum`` and ``batches`` (float64).
        Returns 0, or 1 + a fold whose loss was not finite."""
        index = index.contiguous()
        count = index.shape[1] // batch_size
        d = self.data
        tensors = (weights, state["exp_avg"], state["exp_avg_sq"], d.z, d.target, d.low, d.high, index, d.rows)
        for t in (*tensors, table, state["step"], loss_sum, batches):
            if t.device.type != "cpu" or not t.is_contiguous():
                raise TinyVmafError("the fused step takes contiguous CPU tensors")
        p = [t.data_ptr() for t in tensors]
        steps, n_params = table.shape[1], weights.shape[1]

        def call(folds: tuple[int, int]) -> int:
            return self.library.tv_train_folds(
                folds[0], folds[1], len(self.widths) - 1, self.widths.data_ptr(), self.activation,
                p[0], p[1], p[2], n_params, p[3], p[4], p[5], p[6], p[7], p[8],
                batch_size, first, count, table.data_ptr(), steps, state["step"].data_ptr(), eps,
                loss_sum.data_ptr(), batches.data_ptr(),
            )  # fmt: skip

        statuses = list(self.pool.map(call, self.ranges)) if self.pool else [call(self.ranges[0])]
        if any(s < 0 for s in statuses):
            raise TinyVmafError(f"the fused step refused its arguments (status {min(statuses)})")
        return next((s for s in statuses if s > 0), 0)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
