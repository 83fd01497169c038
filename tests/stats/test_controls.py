"""Input-level controls: t-interval over inputs, bootstrap trend, sign-flip nulls, FDR, counts."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from modalscope.stats.controls import (
    PermutationT,
    SignFlips,
    bootstrap_trend,
    input_layer_interval,
    significant_counts,
    trend_null,
)
from modalscope.stats.fdr import benjamini_hochberg, benjamini_yekutieli, fdr


def _trend_data(n_inputs=80, n_layers=10, slope=-0.05, seed=0, input_sd=1.0, noise_sd=0.1):
    """X[i, l] = 0.5 + (slope + b_i)·l + u_i + e_il: a shared per-input offset u_i (large),
    a per-input slope wobble b_i and small noise; the true mean slope is `slope`."""
    rng = np.random.default_rng(seed)
    layers = np.arange(n_layers)
    u = rng.normal(0, input_sd, size=(n_inputs, 1))
    b = rng.normal(0, 0.02, size=(n_inputs, 1))
    e = rng.normal(0, noise_sd, size=(n_inputs, n_layers))
    return 0.5 + (slope + b) * layers + u + e


def test_input_layer_interval_equals_scipy_t_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(rng.normal(size=5), 1.0, size=(30, 5))
    x[[2, 7, 11], 1] = np.nan  # layer 1 has 27 inputs
    x[:, 4] = np.nan
    x[0, 4] = 1.0  # one input: no interval
    mean, low, high = input_layer_interval(x, level=0.9)
    for layer in range(4):
        col = x[:, layer][np.isfinite(x[:, layer])]
        ref = sps.t.interval(0.9, col.size - 1, loc=col.mean(), scale=sps.sem(col))
        assert mean[layer] == pytest.approx(col.mean(), rel=1e-12)
        assert (low[layer], high[layer]) == pytest.approx(ref, rel=1e-12)
    assert mean[4] == 1.0 and np.isnan(low[4]) and np.isnan(high[4])


def test_bootstrap_is_reproducible_and_seeded():
    x = _trend_data(seed=1)
    a = bootstrap_trend(x, n_boot=300, seed=5)
    b = bootstrap_trend(x, n_boot=300, seed=5)
    c = bootstrap_trend(x, n_boot=300, seed=6)
    assert a == b
    assert (a["slope_low"], a["slope_high"]) != (c["slope_low"], c["slope_high"])
    assert a["slope"] == c["slope"] and a["r2"] == c["r2"]  # point estimates do not resample


def test_bootstrap_point_estimate_and_ci_on_a_true_trend():
    true_slope = -0.05
    x = _trend_data(n_inputs=120, slope=true_slope, seed=2)
    x[3, 4] = np.nan  # a missing value is skipped, not propagated
    got = bootstrap_trend(x, n_boot=1000, seed=0)
    ref = sps.linregress(np.arange(x.shape[1]), np.nanmean(x, axis=0))
    assert got["slope"] == pytest.approx(ref.slope, rel=1e-10)
    assert got["r2"] == pytest.approx(ref.rvalue**2, rel=1e-10)
    assert got["slope_low"] < true_slope < got["slope_high"]
    assert 0.0 <= got["r2_low"] <= got["r2"] <= got["r2_high"] <= 1.0
    # Joint resampling: the large per-input offset u_i cancels in the slope, so the CI
    # reflects the spread of per-input slopes (sd 0.02 plus noise), not of u_i (sd 1).
    layers = np.arange(x.shape[1])
    per_input = np.array([sps.linregress(layers[np.isfinite(r)], r[np.isfinite(r)]).slope for r in x])
    se = per_input.std(ddof=1) / np.sqrt(x.shape[0])
    half = (got["slope_high"] - got["slope_low"]) / 2
    assert half == pytest.approx(sps.norm.ppf(0.975) * se, rel=0.2)


def test_sign_flips_reproducible_and_balanced():
    s = SignFlips(50, 400, 3).block()
    assert s.shape == (400, 50) and s.dtype == np.float64
    assert set(np.unique(s)) == {-1.0, 1.0}
    np.testing.assert_array_equal(s, SignFlips(50, 400, 3).block())
    assert not np.array_equal(s, SignFlips(50, 400, 4).block())
    assert abs((s > 0).mean() - 0.5) < 0.02


def _perm_t(delta, signs, chunks=1):
    test = PermutationT()
    for rows in np.array_split(np.arange(delta.shape[0]), chunks):
        test.add(delta[rows], signs[:, rows])
    return test


def test_permutation_p_values_uniform_under_null():
    rng = np.random.default_rng(10)
    n_perm = 300
    delta = rng.normal(size=(60, 2000))
    p = _perm_t(delta, SignFlips(60, n_perm, 11).block()).p_values()
    steps = np.arange(1, n_perm + 2) / (n_perm + 1)
    assert np.isin(p, steps).all()  # p = k / (P + 1), k = 1..P+1
    jittered = p - rng.uniform(size=p.size) / (n_perm + 1)  # uniform on (0, 1] if p is
    assert sps.kstest(jittered, "uniform").pvalue > 0.01
    assert 0.03 < (p <= 0.05).mean() < 0.07


def test_permutation_p_values_minimal_under_strong_effect():
    rng = np.random.default_rng(12)
    n_perm = 300
    delta = rng.normal(1.0, 1.0, size=(60, 200))
    delta[:, :100] *= -1  # both directions: the test is two-sided
    p = _perm_t(delta, SignFlips(60, n_perm, 13).block()).p_values()
    np.testing.assert_array_equal(p, np.full(200, 1 / (n_perm + 1)))


def test_permutation_t_chunks_equal_one_pass():
    rng = np.random.default_rng(14)
    delta = rng.normal(0.2, 1.0, size=(47, 30))
    signs = SignFlips(47, 200, 15).block()
    one, three = _perm_t(delta, signs, 1), _perm_t(delta, signs, 3)
    # the sums are float32 products per block (controls._add_product): within float32 rounding
    # of the sum of |Δ| (6e-8 per term, a few terms' worth at most), not bit for bit
    scale = np.abs(delta).sum(axis=0)
    assert (np.abs(three.s - one.s) <= 1e-6 * scale).all()
    assert (np.abs(one.s - signs @ delta) <= 1e-6 * scale).all()
    np.testing.assert_allclose(three.t_perm(), one.t_perm(), rtol=1e-5, atol=1e-5)
    # p: a permuted sum within the float32 tolerance of the observed one counts as a tie, and
    # the tolerance scales with the block's length, so p may move by one count (1 / (P + 1)),
    # rarely (one of these 30 neurons here), never more
    moved = np.abs(three.p_values(rows=7) - one.p_values())
    assert (moved <= 1 / 201 + 1e-12).all() and (moved > 0).sum() <= 2


def test_permutation_t_sums_over_chunks_are_the_input_by_input_sum_within_float32_rounding():
    """Δ of float16 values (a float16 store's), summed chunk by chunk with float32 products
    per chunk into a float64 total: within float32 rounding of the input-by-input sum (each
    term off by at most 2^-24 of the chunk's running sum of |Δ|), and far from exact sums'
    bits only at that scale."""
    rng = np.random.default_rng(18)
    a, b = (rng.normal(size=(90, 25)).astype(np.float16).astype(np.float64) for _ in range(2))
    flips = SignFlips(90, 64, 19)
    test = PermutationT()
    for start in range(0, 90, 32):
        test.add((a - b)[start : start + 32], flips.block(start, start + 32))
    signs, want = flips.block(), np.zeros((64, 25))
    for i in range(90):
        want += signs[:, [i]] * (a - b)[i]
    bound = 32 * 2.0**-24 * np.abs(a - b).sum(axis=0)  # a chunk's terms each off by <= its |sum| ulp
    assert (np.abs(test.s - want) <= bound).all()


def test_permutation_t_identity_row_is_the_one_sample_t():
    rng = np.random.default_rng(16)
    delta = rng.normal(0.3, 1.0, size=(25, 40))
    signs = np.vstack([np.ones(25), -np.ones(25), SignFlips(25, 10, 17).block()])
    test = _perm_t(delta, signs, 2)
    ref = sps.ttest_1samp(delta, 0.0, axis=0).statistic
    # permuted sums are float32 per block (controls._add_product): t within 1e-6
    np.testing.assert_allclose(test.t_perm()[0], ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(test.t_perm()[1], -ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(test.t_observed(), ref, rtol=1e-9)
    # each row is the ordinary t of the sign-flipped sample
    np.testing.assert_allclose(
        test.t_perm()[5], sps.ttest_1samp(signs[5][:, None] * delta, 0.0, axis=0).statistic, rtol=1e-6, atol=1e-6
    )
    # the all-plus and all-minus rows tie with the observed t within the float32 tolerance, so both count:
    # p >= 3 / 13 for every neuron, whatever the 10 random rows give
    assert (test.p_values() >= 3 / 13 - 1e-12).all()


def test_permutation_p_equals_brute_force_over_all_sign_vectors():
    delta = np.array([[0.9, -0.2], [1.4, 0.5], [0.3, -0.7], [2.0, 0.1], [0.6, 0.4], [-0.1, -0.3]])
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=6)))  # all 64
    p = _perm_t(delta, signs).p_values()
    t_obs = sps.ttest_1samp(delta, 0.0, axis=0).statistic
    for j in range(2):
        t_all = np.array([sps.ttest_1samp(s * delta[:, j], 0.0).statistic for s in signs])
        count = (np.abs(t_all) >= np.abs(t_obs[j]) - 1e-12).sum()
        assert p[j] == pytest.approx((1 + count) / 65)
    assert p[0] < 0.1 < p[1]


def test_permutation_t_constant_delta_is_nan():
    delta = np.column_stack([np.full(10, 0.5), np.arange(10.0)])
    p = _perm_t(delta, SignFlips(10, 50, 0).block()).p_values()
    assert np.isnan(p[0]) and 0 < p[1] <= 1


def test_trend_null_band_and_p_value():
    n_perm = 200
    x = _trend_data(n_inputs=60, slope=-0.1, seed=20, input_sd=0.05)
    signs = SignFlips(60, n_perm, 21).block()
    got = trend_null(x, signs)
    np.testing.assert_allclose(got["null_means"], signs @ x / 60, rtol=1e-12)
    np.testing.assert_allclose(got["layer_mean"], x.mean(axis=0), rtol=1e-12)
    assert got["null_means"].shape == (n_perm, 10) and got["slope_null"].shape == (n_perm,)
    assert (got["null_low"] < 0).all() and (got["null_high"] > 0).all()
    np.testing.assert_allclose(got["null_low"], np.percentile(got["null_means"], 2.5, axis=0))
    ref = sps.linregress(np.arange(10), got["null_means"][7])
    assert got["slope_null"][7] == pytest.approx(ref.slope, rel=1e-10)
    assert got["slope"] == pytest.approx(sps.linregress(np.arange(10), x.mean(0)).slope, rel=1e-10)
    assert got["p_value"] == 1 / (n_perm + 1)


def test_trend_null_p_values_not_small_under_null():
    rng = np.random.default_rng(22)
    signs = SignFlips(40, 200, 23).block()
    p = np.array([trend_null(rng.normal(size=(40, 8)), signs)["p_value"] for _ in range(100)])
    assert p.min() >= 1 / 201 and p.max() <= 1
    assert (p < 0.05).mean() < 0.15 and p.mean() == pytest.approx(0.5, abs=0.1)


def test_fdr_dispatches():
    p = np.random.default_rng(24).uniform(size=50) ** 3
    np.testing.assert_array_equal(fdr(p), benjamini_hochberg(p))
    np.testing.assert_array_equal(fdr(p, "bh"), benjamini_hochberg(p))
    np.testing.assert_array_equal(fdr(p, "by"), benjamini_yekutieli(p))
    assert not np.array_equal(fdr(p, "bh"), fdr(p, "by"))
    with pytest.raises(ValueError):
        fdr(p, "holm")


def test_significant_counts_hand_case():
    layer = np.array([1, 1, 1, 1, 0, 0, 0, 2])
    mean_diff = np.array([0.5, -0.2, 0.3, 0.4, -1.0, -0.5, 0.0, 0.2])
    q = np.array([0.01, 0.01, 0.2, np.nan, 0.001, 0.049, 0.01, 0.05])
    got = significant_counts(layer, mean_diff, q, alpha=0.05)
    expected = pd.DataFrame(
        {
            "layer": [0, 1, 2],
            "n_text_preferring": [0, 1, 0],
            "n_image_preferring": [2, 1, 0],
            "n_neurons": [3, 4, 1],
        }
    )
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert significant_counts(layer, mean_diff, q, alpha=0.1)["n_text_preferring"].tolist() == [0, 1, 1]
