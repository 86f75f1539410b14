"""The fused training step (tinyvmaf.fused, csrc/fused_mlp.c) against autograd on the same rows:
the same loss, gradients and AdamW trajectory within float32 tolerance, for every activation it
serves, both losses, one fold and several of different lengths."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from tinyvmaf.fused import ACTIVATIONS, fused_activation, kernel
from tinyvmaf.model import CensoredMSELoss, TinyVmafModule, mlp
from tinyvmaf.stacked import StackedAdamW, StackedBatches, StackedTinyVmafModule, side_by_side

pytestmark = pytest.mark.skipif(kernel() is None, reason="the fused step is not built (no C compiler at install)")

BATCH = 16
ARCHS = {**{name: [7, 5] for name in ACTIVATIONS}, "linear": []}


def stacked_module(arch: str, rows: list[int], loss: nn.Module, seed: int = 0) -> StackedTinyVmafModule:
    """A stacked module of len(rows) folds holding random rows, some of them on the score's bounds,
    each fold with its own standardization."""
    torch.manual_seed(seed)
    net = mlp(ARCHS[arch], arch if arch != "linear" else "ReLU", n_features=4)
    single = TinyVmafModule(
        net, partial(torch.optim.AdamW, lr=2e-2, weight_decay=1e-2), partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=2e-2),
        loss=loss, inputs=("integer_adm2", "integer_motion2", "integer_vif_scale0", "integer_vif_scale1"),
    )  # fmt: skip
    module = StackedTinyVmafModule(single, len(rows))
    xs = [torch.rand(n, 4) * torch.tensor([1.0, 20.0, 1.0, 1.0]) for n in rows]
    ys = [(x[:, 0] * 130 - 15 + 10 * torch.sin(3 * x[:, 2])).clamp(0, 100) for x in xs]  # ~1/5 on a bound
    with torch.no_grad():
        for k, (x, y) in enumerate(zip(xs, ys)):
            module.model.feature_mean[k, 0], module.model.feature_std[k, 0] = x.mean(0), x.std(0)
            module.model.target_mean[k], module.model.target_std[k] = y.mean(), y.std()
    module.hold_rows(side_by_side(xs), side_by_side(ys), rows)
    return module


def optimizer_of(module: StackedTinyVmafModule, epochs: int) -> StackedAdamW:
    """Each fold's AdamW and schedule over its own ``epochs`` epochs of mini-batches."""
    steps = [epochs * -(-n // BATCH) for n in module.train_rows]
    return StackedAdamW(module.model.net.weights, module.optimizer_factory, module.scheduler_factory, steps)


def plain_gradient_step(optimizer: StackedAdamW) -> None:
    """Coefficients under which AdamW's update is the gradient itself: p <- p - g."""
    eps = optimizer.param_groups[0]["eps"]
    optimizer.table[..., :] = torch.tensor([1.0, 1.0, 0.0, 0.0, eps, 0.0])


def chunks(module: StackedTinyVmafModule, epochs: int, per_step: int = 2):
    """(index, weight, first) of every chunk of ``epochs`` epochs, as the data module hands them."""
    loader = StackedBatches(module.train_rows, max(module.train_rows), BATCH, True, 3, per_step)
    for _ in range(epochs):
        for i, (index, weight) in enumerate(loader):
            yield index, weight, i * per_step


def train(module: StackedTinyVmafModule, fused: bool, epochs: int, plain: bool = False) -> StackedTinyVmafModule:
    optimizer = optimizer_of(module, epochs)
    if plain:
        plain_gradient_step(optimizer)
    module.steps = module.fused_steps() if fused else None
    assert fused == (module.steps is not None)
    for index, weight, first in chunks(module, epochs):
        module.train_chunk(optimizer, index, weight, first, BATCH)
    return module


def pair(arch: str, rows: list[int], loss: nn.Module) -> tuple[StackedTinyVmafModule, StackedTinyVmafModule]:
    return stacked_module(arch, rows, loss), stacked_module(arch, rows, loss)


@pytest.mark.parametrize("loss", [CensoredMSELoss(), nn.MSELoss()], ids=["censored", "mse"])
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("rows", [[40], [40, 29, 33]], ids=["one-fold", "three-folds"])
def test_one_fused_step_has_autograds_loss_and_gradient(arch, rows, loss):
    """One mini-batch per fold, a plain gradient step: the weights' change is the gradient."""
    fused, reference = pair(arch, rows, loss)
    start = fused.model.net.weights.detach().clone()
    for module, is_fused in ((fused, True), (reference, False)):
        optimizer = optimizer_of(module, 1)
        plain_gradient_step(optimizer)
        module.steps = module.fused_steps() if is_fused else None
        index, weight = next(iter(StackedBatches(rows, max(rows), BATCH, True, 3, 1)))
        module.train_chunk(optimizer, index, weight, 0, BATCH)
    gradient = start - fused.model.net.weights.detach()
    expected = start - reference.model.net.weights.detach()
    assert expected.abs().max() > 1e-3  # the step moved the weights
    torch.testing.assert_close(gradient, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.train_loss_sum, reference.train_loss_sum, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("arch", ["SiLU", "ReLU", "linear"])
def test_fused_adamw_follows_autograds_trajectory_over_epochs_of_uneven_folds(arch):
    """Three folds of 40, 29 and 33 rows (3, 2 and 3 mini-batches an epoch: the shorter one idle
    at the end of each epoch), AdamW with its OneCycle schedule, three epochs."""
    rows = [40, 29, 33]
    fused, reference = (train(m, f, epochs=3) for m, f in zip(pair(arch, rows, CensoredMSELoss()), (True, False)))
    torch.testing.assert_close(fused.model.net.weights, reference.model.net.weights, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(fused.train_batches, reference.train_batches, rtol=0, atol=0)
    torch.testing.assert_close(fused.train_loss_sum, reference.train_loss_sum, rtol=1e-4, atol=1e-6)


def test_a_fold_trains_bit_for_bit_the_same_whatever_folds_stand_beside_it():
    """Fold 1 of three, and the same fold (rows, standardization, init, shuffle) alone."""
    three = stacked_module("SiLU", [40, 29, 33], CensoredMSELoss())
    alone = stacked_module("SiLU", [29], CensoredMSELoss())
    with torch.no_grad():
        for name in ("feature_mean", "feature_std", "target_mean", "target_std"):
            getattr(alone.model, name).copy_(getattr(three.model, name)[1:2])
    alone.hold_rows(three.train_x.view(3, 40, 4)[1:2, :29], three.train_y.view(3, 40)[1:2, :29], [29])
    assert torch.equal(three.model.net.weights[1], alone.model.net.weights[0])
    train(three, True, epochs=2)
    train(alone, True, epochs=2)
    assert torch.equal(three.model.net.weights[1], alone.model.net.weights[0])


def test_only_the_mlp_family_is_fused():
    assert fused_activation(list(mlp([8, 4], "SiLU"))) == ACTIVATIONS["SiLU"]
    assert fused_activation(list(mlp([], "SiLU"))) == 0
    assert fused_activation(list(mlp([8], "GELU"))) is None
    assert fused_activation([nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)]) is None  # two outputs
    assert fused_activation([nn.Linear(6, 1), nn.Sigmoid()]) is None  # ends on an activation
    assert fused_activation([]) is None
    assert fused_activation([nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1)]) is None
