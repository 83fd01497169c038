"""Per-neuron tests, FDR and layer summaries equal scipy and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from modalscope.stats.layers import layer_mean_ci, layer_trend
from modalscope.stats.moments import RunningMoments
from modalscope.stats.fdr import benjamini_hochberg
from modalscope.stats.one_sample import hall_p, one_sample_t


def _tests_from(delta: np.ndarray, blocks: int = 1):
    moments = RunningMoments()
    for part in np.array_split(delta, blocks, axis=0):
        moments.add(part)
    return one_sample_t(moments)


def test_t_test_equals_scipy_ttest_1samp():
    rng = np.random.default_rng(1)
    delta = rng.normal(loc=rng.normal(size=300) * 0.3, scale=1.0, size=(57, 300))
    got = _tests_from(delta)
    ref = sps.ttest_1samp(delta, 0.0, axis=0)
    np.testing.assert_allclose(got.t_value, ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(got.p_student, ref.pvalue, rtol=1e-8, atol=1e-300)
    skew = sps.skew(delta, axis=0)
    np.testing.assert_allclose(got.skew_diff, skew, rtol=1e-9)
    np.testing.assert_allclose(got.p_value, hall_p(ref.statistic, skew, np.full(300, 57)), rtol=1e-8, atol=1e-300)
    np.testing.assert_allclose(got.mean_diff, delta.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(got.sd_diff, delta.std(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(got.cohen_d, delta.mean(0) / delta.std(0, ddof=1), rtol=1e-12)
    assert (got.n == 57).all()


def test_streamed_blocks_equal_one_pass():
    rng = np.random.default_rng(2)
    delta = rng.normal(5.0, 3.0, size=(101, 40))
    one, many = _tests_from(delta, 1), _tests_from(delta, 7)
    for name in ("mean_diff", "sd_diff", "t_value", "p_value", "skew_diff", "p_student"):
        np.testing.assert_allclose(getattr(many, name), getattr(one, name), rtol=1e-12)


def test_hand_computed_three_inputs():
    # Δ = 1, 2, 3: mean 2, sd 1, t = 2 / (1/√3) = 2√3, d = 2;
    # with 2 dof the two-sided p has the closed form 1 - |t| / √(t² + 2) = 1 - √(12/14).
    delta = np.array([[1.0], [2.0], [3.0]])
    got = _tests_from(delta)
    assert got.mean_diff[0] == pytest.approx(2.0)
    assert got.sd_diff[0] == pytest.approx(1.0)
    assert got.t_value[0] == pytest.approx(2 * math.sqrt(3))
    assert got.p_student[0] == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-9)
    assert got.skew_diff[0] == 0.0 and got.p_value[0] == got.p_student[0]  # symmetric: no correction
    assert got.cohen_d[0] == pytest.approx(2.0)


def test_constant_delta_gives_undefined_test_like_scipy():
    delta = np.array([[0.5, 1.0], [0.5, 2.0], [0.5, 3.0]])
    got = _tests_from(delta)
    assert math.isnan(got.t_value[0]) and math.isnan(got.p_value[0])
    assert math.isfinite(got.t_value[1])


def test_benjamini_hochberg_equals_scipy_and_hand_case():
    p = np.array([0.01, 0.04, 0.03, 0.2])
    # sorted 0.01, 0.03, 0.04, 0.2 -> p·m/rank = 0.04, 0.06, 0.0533, 0.2 -> running min from the top
    np.testing.assert_allclose(benjamini_hochberg(p), [0.04, 0.16 / 3, 0.16 / 3, 0.2])
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.uniform(size=500), rng.uniform(0, 1e-4, size=50)])
    np.testing.assert_allclose(benjamini_hochberg(p), sps.false_discovery_control(p), rtol=1e-12)
    with_nan = p.copy()
    with_nan[[3, 9]] = np.nan
    q = benjamini_hochberg(with_nan)
    assert np.isnan(q[[3, 9]]).all()
    keep = ~np.isnan(with_nan)
    np.testing.assert_allclose(q[keep], sps.false_discovery_control(with_nan[keep]), rtol=1e-12)


def test_layer_ci_is_t_interval_over_neurons():
    values = np.array([1.0, 2.0, 4.0, 7.0, np.nan])
    mean, low, high, n = layer_mean_ci(values)
    finite = values[:4]
    ref = sps.t.interval(0.95, 3, loc=finite.mean(), scale=sps.sem(finite))
    assert n == 4 and mean == pytest.approx(3.5)
    assert (low, high) == pytest.approx(ref)


def test_layer_trend_equals_linregress():
    layers = np.arange(8)
    means = 0.5 - 0.1 * layers + np.array([0.01, -0.02, 0.0, 0.03, -0.01, 0.02, -0.03, 0.0])
    got = layer_trend(layers, means)
    ref = sps.linregress(layers, means)
    assert got["slope"] == pytest.approx(ref.slope)
    assert got["intercept"] == pytest.approx(ref.intercept)
    assert got["r2"] == pytest.approx(ref.rvalue**2)


def test_benjamini_yekutieli_equals_scipy_and_hand_case():
    from modalscope.stats.fdr import benjamini_yekutieli

    p = np.array([0.01, 0.04, 0.03, 0.2])
    # c(4) = 1 + 1/2 + 1/3 + 1/4 = 25/12; BY = BH · c(4), capped at 1 after the running min
    c = 25 / 12
    np.testing.assert_allclose(benjamini_yekutieli(p), [0.04 * c, 0.16 / 3 * c, 0.16 / 3 * c, 0.2 * c])
    # c(2) = 1.5: 0.5·2·1.5/1 = 1.5 and 0.9·2·1.5/2 = 1.35 -> running min 1.35 -> capped at 1
    np.testing.assert_array_equal(benjamini_yekutieli(np.array([0.9, 0.5])), [1.0, 1.0])
    rng = np.random.default_rng(4)
    p = np.concatenate([rng.uniform(size=500), rng.uniform(0, 1e-4, size=50)])
    ref = sps.false_discovery_control(p, method="by")
    np.testing.assert_allclose(benjamini_yekutieli(p), ref, rtol=1e-12)
    assert (benjamini_yekutieli(p) >= benjamini_hochberg(p)).all()
    with_nan = p.copy()
    with_nan[[0, 7]] = np.nan
    q = benjamini_yekutieli(with_nan)
    keep = ~np.isnan(with_nan)
    assert np.isnan(q[[0, 7]]).all()
    np.testing.assert_allclose(q[keep], sps.false_discovery_control(with_nan[keep], method="by"), rtol=1e-12)
    assert np.isnan(benjamini_yekutieli(np.array([np.nan]))).all()
