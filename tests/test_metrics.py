"""The statistics behind the evidence: per-clip pooling, conformal radii, paired comparisons and the domain error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinyvmaf.digest import paired_verdict
from tinyvmaf.metrics import (
    clip_metrics,
    conformal_radius,
    domain_max_error,
    paired_comparison,
    pooled_per_clip,
    score_metrics,
    source_radius,
)
from tinyvmaf.model import VmafNet
from tinyvmaf.teacher.function import student_inputs


def test_clips_are_pooled_as_libvmaf_pools_and_scored_over_clips():
    clip = np.array([5, 5, 5, 2, 2, 9, 9, 9, 9])
    teacher = np.array([10.0, 20, 30, 50, 70, 80, 82, 84, 86])
    predicted = teacher + np.array([3.0, -3, 3, 0, 2, -1, -1, -1, -1])
    np.testing.assert_allclose(pooled_per_clip(teacher, clip), [60, 20, 83])  # clips 2, 5, 9: their frames' means
    got = clip_metrics(predicted, teacher, clip)
    want = score_metrics(torch.tensor([61.0, 21, 82]), torch.tensor([60.0, 20, 83]))
    assert got == {f"clip_{m}": v for m, v in want.items()} and got["clip_rmse"] == pytest.approx(1.0)
    assert clip_metrics(predicted[:5], teacher[:5], clip[:5]) == {}  # two clips: no correlation to speak of


def test_the_conformal_radius_is_the_finite_sample_quantile_of_the_residuals():
    residuals = np.array([-1.0, 2, -3, 4, -5, 6, -7, 8, -9, 10, -11, 12, -13, 14, -15, 16, -17, 18, -19])
    assert conformal_radius(residuals, 0.90) == 18.0  # the ceil(20 * 0.9) = 18th smallest |r|
    assert conformal_radius(residuals, 0.95) == 19.0
    assert conformal_radius(residuals[:9], 0.95) == float("inf")  # 9 residuals cannot promise 95 %
    rng = np.random.default_rng(0)
    calibration, fresh = rng.standard_t(3, 5000), rng.standard_t(3, 200_000)
    for coverage in (0.90, 0.95):
        assert np.mean(np.abs(fresh) <= conformal_radius(calibration, coverage)) >= coverage - 0.01


def test_a_paired_comparison_tells_a_real_difference_from_fold_to_fold_noise():
    rng = np.random.default_rng(3)
    folds = [f"source{i}" for i in range(9)]
    noisy = {f: 0.05 + 0.03 * rng.random() for f in folds}
    better = {f: v - 0.01 - 0.002 * rng.random() for f, v in noisy.items()}  # better on every fold
    jitter = {f: v + 0.004 * rng.standard_normal() for f, v in noisy.items()}  # the same up to noise
    real = paired_comparison(better, noisy)
    assert real["folds"] == 9 and real["p"] == pytest.approx(2 / 2**9) and real["high"] < 0
    assert paired_verdict("B", "A", real).startswith(f"B better than A by {-real['mean']:.4f} RMSE [95 % CI ")
    same = paired_comparison(jitter, noisy)
    assert same["p"] > 0.05
    assert paired_verdict("J", "A", same).startswith("J vs A: indistinguishable (RMSE difference ")
    assert paired_comparison(noisy, {"source0": 1.0}) is None
    assert paired_verdict("A", "B", None) == "A vs B: fewer than two shared folds, no test"


def test_the_source_radius_holds_a_share_of_each_new_sources_frames():
    rng = np.random.default_rng(1)
    sources = [rng.normal(0, scale, 200) for scale in (0.5, 1, 1, 1, 1, 2, 1, 1, 4)]  # one source errs far more
    quantiles = [np.quantile(np.abs(r), 0.95, method="higher") for r in sources]
    assert source_radius(sources, 0.95, 0.9) == max(quantiles)  # 9 sources: the ceil(10 * 0.9) = 9th
    assert source_radius(sources[:8], 0.95, 0.9) == float("inf")
    assert source_radius(sources, 0.95, 0.9) > conformal_radius(np.concatenate(sources), 0.95)


@pytest.mark.parametrize("teacher", ["vmaf_v0.6.1", "vmaf_v1.0.16_3d0h"])
def test_the_domain_error_is_the_largest_gap_to_the_teacher_over_its_whole_box(teacher):
    """Both teachers saturate at 0 and at 100 inside their box: a model that says 50 everywhere is 50
    points off there, one that says 0 is 100 off. A probe that missed the box's saturated corners,
    or read another teacher's box, would say less."""
    inputs = student_inputs(teacher)
    model = VmafNet(torch.nn.Linear(len(inputs), 1), inputs=inputs)
    torch.nn.init.zeros_(model.net.weight)
    torch.nn.init.zeros_(model.net.bias)
    assert domain_max_error(model, teacher) == pytest.approx(100.0)
    model.target_mean.fill_(50.0)
    assert domain_max_error(model, teacher) == pytest.approx(50.0)
