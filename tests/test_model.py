"""The model: parameter counts, the censored loss, and module state that follows the module."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from tinyvmaf.model import CensoredMSELoss, count_params


@pytest.mark.parametrize("arch, n_params", [("mlp_small", 257), ("mlp_medium", 2561), ("linear", 7)])
def test_parameter_counts(arch, n_params, compose):
    cfg = compose("train", f"arch={arch}")
    assert count_params(instantiate(cfg.model).model) == n_params


def test_censored_loss_ignores_only_errors_the_clip_removes():
    loss = CensoredMSELoss()
    target = torch.tensor([0.0, 100.0, 0.0, 100.0, 50.0, 50.0])
    prediction = torch.tensor([-7.0, 130.0, 2.0, 97.0, 120.0, -5.0], requires_grad=True)
    value = loss(prediction, target)
    value.backward()
    # beyond the bound the teacher sits on: no error; short of it, or off an interior score: plain MSE
    assert value.item() == pytest.approx((0 + 0 + 2**2 + 3**2 + 70**2 + 55**2) / 6)
    assert prediction.grad[:2].tolist() == [0.0, 0.0] and (prediction.grad[2:] != 0).all()


def test_module_state_follows_the_module_to_its_device(compose):
    """What trainer=gpu needs: no tensor of the module is left behind when Lightning moves it."""
    module = instantiate(compose("train").model)
    module.to("meta")
    stray = [name for name, value in vars(module).items() if isinstance(value, torch.Tensor)]
    assert not stray, f"tensors outside the module's state: {stray}"
    assert {t.device.type for t in (*module.parameters(), *module.buffers())} == {"meta"}
    assert all(
        state.device.type == "meta"
        for m in module.heldout_metrics.values()
        for state in m.metric_state.values()
        if isinstance(state, torch.Tensor)
    )
