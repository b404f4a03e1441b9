import math

import pytest
import torch

from bsatnp.metrics import (
    calibration_error,
    coverage,
    crps,
    gaussian_metrics,
    mae,
    mean_sd,
    nll,
    paired_t_test,
    rmse,
    summarize,
)

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _t(values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1)


def _all(n):
    return torch.ones(1, n, dtype=torch.bool)


def test_nll_known_values():
    assert nll(_t([0.0]), _t([1.0]), _t([0.0]), _all(1)).item() == pytest.approx(HALF_LOG_2PI)
    expected = 0.5 * 0.25 + math.log(2.0) + HALF_LOG_2PI
    assert nll(_t([0.0]), _t([2.0]), _t([1.0]), _all(1)).item() == pytest.approx(expected)


def test_nll_averages_over_valid_points_of_whole_batch():
    mean = torch.zeros(2, 3, 1)
    std = torch.ones(2, 3, 1)
    target = torch.tensor([[[1.0], [float("nan")], [float("nan")]], [[0.0], [0.0], [0.0]]])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    # One point with z=1 and three with z=0, averaged over the 4 valid points.
    expected = HALF_LOG_2PI + 0.5 * 1.0 / 4
    assert nll(mean, std, target, mask).item() == pytest.approx(expected)


def test_rmse_mae_respect_mask():
    mean = _t([0.0, 0.0, 0.0, 0.0])
    target = _t([1.0, -2.0, 3.0, 100.0])
    mask = torch.tensor([[True, True, True, False]])
    std = _t([1.0] * 4)
    assert rmse(mean, std, target, mask).item() == pytest.approx(math.sqrt(14 / 3))
    assert mae(mean, std, target, mask).item() == pytest.approx(2.0)


def test_coverage_levels():
    z = _t([0.0, 1.0, -1.5, 2.5])
    args = (torch.zeros_like(z), torch.ones_like(z), z, _all(4))
    assert coverage(*args, level=0.5).item() == pytest.approx(0.25)  # |z| <= 0.674
    assert coverage(*args, level=0.9).item() == pytest.approx(0.75)  # |z| <= 1.645
    assert coverage(*args, level=0.95).item() == pytest.approx(0.75)  # |z| <= 1.960
    # Scaling std by 2 brings z=2.5 inside the 95% interval.
    assert coverage(args[0], 2 * args[1], z, _all(4), 0.95).item() == pytest.approx(1.0)


def test_crps_closed_form_and_numerical_integral():
    at_zero = 2 / math.sqrt(2 * math.pi) - 1 / math.sqrt(math.pi)
    assert crps(_t([0.0]), _t([1.0]), _t([0.0]), _all(1)).item() == pytest.approx(at_zero)
    assert crps(_t([3.0]), _t([2.0]), _t([3.0]), _all(1)).item() == pytest.approx(2 * at_zero)
    # CRPS = ∫ (F(x) − 1{x ≥ y})² dx for N(0.5, 1.5²) at y = −1.
    x = torch.linspace(-20, 20, 400001, dtype=torch.float64)
    cdf = torch.special.ndtr((x - 0.5) / 1.5)
    integrand = (cdf - (x >= -1.0).double()) ** 2
    numeric = torch.trapezoid(integrand, x).item()
    got = crps(_t([0.5]), _t([1.5]), _t([-1.0]), _all(1)).item()
    assert got == pytest.approx(numeric, rel=1e-4)


def test_calibration_error():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(1, 100000, 1, generator=g)
    zeros, ones, mask = torch.zeros_like(target), torch.ones_like(target), _all(100000)
    assert calibration_error(zeros, ones, target, mask).item() < 0.01
    # With std = 2 the interval of level l covers P(|Z| <= 2 z_l).
    levels = torch.arange(1, 10, dtype=torch.float64) / 10
    z = torch.special.ndtri((1 + levels) / 2)
    expected = ((2 * torch.special.ndtr(2 * z) - 1) - levels).abs().mean().item()
    got = calibration_error(zeros, 2 * ones, target, mask).item()
    assert got == pytest.approx(expected, abs=0.005)


def test_gaussian_metrics_keys_and_masked_nan():
    mean = torch.tensor([[[0.0], [float("nan")]]])
    std = torch.tensor([[[1.0], [float("nan")]]])
    target = torch.tensor([[[0.0], [float("nan")]]])
    mask = torch.tensor([[True, False]])
    out = gaussian_metrics(mean, std, target, mask)
    assert set(out) == {"nll", "rmse", "mae", "cov50", "cov90", "cov95", "crps", "cal_err"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert out["nll"] == pytest.approx(HALF_LOG_2PI) and out["rmse"] == 0.0
    assert out["cov50"] == 1.0 and out["cal_err"] == pytest.approx(0.5)


def test_empty_mask_raises():
    with pytest.raises(ValueError, match="no point"):
        nll(_t([0.0]), _t([1.0]), _t([0.0]), torch.zeros(1, 1, dtype=torch.bool))


def test_summarize_mean_and_stderr():
    rows = [{"nll": v, "rmse": 2 * v} for v in (1.0, 2.0, 3.0, 4.0)]
    out = summarize(rows)
    sd = math.sqrt(sum((v - 2.5) ** 2 for v in (1, 2, 3, 4)) / 3)
    assert out["nll"] == pytest.approx((2.5, sd / 2))
    assert out["rmse"] == pytest.approx((5.0, sd))
    single = summarize([{"nll": 1.0}])
    assert single["nll"][0] == 1.0 and math.isnan(single["nll"][1])
    with pytest.raises(ValueError):
        summarize([])


def test_mean_sd_over_seeds():
    assert mean_sd([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    mean, sd = mean_sd([5.0])
    assert mean == 5.0 and math.isnan(sd)
    with pytest.raises(ValueError):
        mean_sd([])


def test_paired_t_test_matches_a_hand_computation():
    """a − b = (2, 3, 1): mean 2, sd 1, t = 2 / (1/√3) = 2√3 on 2 degrees of freedom, whose
    two-sided p-value has the closed form 1 − t / √(2 + t²)."""
    a, b = [3.0, 5.0, 4.0], [1.0, 2.0, 3.0]
    t = 2 * math.sqrt(3)
    out = paired_t_test(a, b)
    assert out["n"] == 3 and out["mean_diff"] == pytest.approx(2.0)
    assert out["se"] == pytest.approx(1 / math.sqrt(3))
    assert out["t"] == pytest.approx(t, rel=1e-12)
    assert out["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)  # 0.0742
    swapped = paired_t_test(b, a)
    assert (swapped["mean_diff"], swapped["t"]) == pytest.approx((-2.0, -t))
    assert swapped["p"] == pytest.approx(out["p"])


def test_paired_t_test_depends_on_the_pairing():
    """The same scores paired otherwise (b shuffled): a − b = (0, 4, 2), mean 2, sd 2, so
    t = √3 and p = 1 − √3/√5: a test that ignored the pairs would not see the change."""
    out = paired_t_test([3.0, 5.0, 4.0], [3.0, 1.0, 2.0])
    assert out["mean_diff"] == pytest.approx(2.0)
    assert out["t"] == pytest.approx(math.sqrt(3), rel=1e-12)
    assert out["p"] == pytest.approx(1 - math.sqrt(3) / math.sqrt(5), rel=1e-9)  # 0.2254
    assert out["p"] > 3 * paired_t_test([3.0, 5.0, 4.0], [1.0, 2.0, 3.0])["p"]


def test_paired_t_test_undefined_cases():
    single = paired_t_test([1.0], [0.5])
    assert single["mean_diff"] == 0.5 and math.isnan(single["se"]) and math.isnan(single["p"])
    constant = paired_t_test([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])  # every difference 0.5
    assert constant["se"] == 0.0 and math.isnan(constant["t"]) and math.isnan(constant["p"])
    with pytest.raises(ValueError, match="equally long"):
        paired_t_test([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        paired_t_test([1.0, math.nan], [1.0, 2.0])
