"""Degenerate inputs: a constant Δ (sd 0, or a few ulps from rounding) has no t in Table 3 nor
in the sign-flip test, and both take their t from the same moments; a layer whose median
max |activation| is 0 does not flag every neuron that moves."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from modalscope.analysis import AnalysisSettings, run_analysis
from modalscope.stats.controls import PermutationT, SignFlips
from modalscope.stats.massive import massive_flags as outlier_flags
from modalscope.stats.moments import RunningMoments
from modalscope.stats.one_sample import CONSTANT_RTOL, hall_p, one_sample_t, t_from_moments
from modalscope.record.reductions import ALWAYS as STATS
from modalscope.store import ActivationStore
from modalscope.streams import UNIMODAL as CONDITIONS


def _moments(delta: np.ndarray, block: int) -> RunningMoments:
    moments = RunningMoments()
    for start in range(0, delta.shape[0], block):
        moments.add(delta[start : start + block])
    return moments


def test_rounding_sd_of_a_constant_column_is_not_a_huge_t():
    rng = np.random.default_rng(3)
    delta = np.column_stack([np.full(57, 0.1), rng.normal(0.2, 1.0, size=(57, 4))])
    moments = _moments(delta, 3)
    assert 0 < moments.sd[0] < 1e-15  # rounding: an exact `sd > 0` gave t ≈ 5e16 here
    got = one_sample_t(moments)
    assert np.isnan(got.t_value[0]) and np.isnan(got.p_value[0]) and np.isnan(got.cohen_d[0])
    ref = sps.ttest_1samp(delta[:, 1:], 0.0, axis=0)
    np.testing.assert_allclose(got.t_value[1:], ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(got.p_student[1:], ref.pvalue, rtol=1e-8)


def test_t_from_moments_hand_cases():
    # mean 2, sd 1, n 3: 2√3; sd at the tolerance or n < 2: undefined; 0 ± 0: undefined
    t = t_from_moments(np.array([2.0, 1.0, 1.0, 2.0, 0.0, 0.0]),
                       np.array([1.0, CONSTANT_RTOL, 2 * CONSTANT_RTOL, 1.0, 0.0, 1e-300]),
                       np.array([3, 10, 10, 1, 5, 5]))
    assert t[0] == pytest.approx(2 * np.sqrt(3))
    assert np.isnan(t[1]) and np.isnan(t[3]) and np.isnan(t[4])
    assert t[2] == pytest.approx(1.0 / (2 * CONSTANT_RTOL / np.sqrt(10)))  # just above: defined
    assert t[5] == 0.0  # mean 0 with a real (tiny) spread is t = 0, not undefined
    assert t_from_moments(1.0, 0.0, 4, undefined=np.inf) == np.inf


@pytest.mark.parametrize("n", [10, 1000])
def test_permutation_test_of_constant_float32_delta_is_undefined(n):
    """All 0.1 in float32: the old one-pass sums gave t = inf (n = 10) or t ≈ 2e9 with
    p_perm ≈ 0.02 (n = 1000, where Σx² - n·m² keeps a rounding residue)."""
    rng = np.random.default_rng(n)
    delta = np.column_stack([np.full(n, np.float32(0.1)), rng.normal(0.1, 1.0, size=(n, 3))]).astype(np.float64)
    signs = SignFlips(n, 50, 1).block()
    test = PermutationT()
    for rows in np.array_split(np.arange(n), 3):
        test.add(delta[rows], signs[:, rows])
    assert np.isnan(test.t_observed()[0]) and np.isnan(test.p_values()[0])
    ref = sps.ttest_1samp(delta[:, 1:], 0.0, axis=0).statistic
    np.testing.assert_allclose(test.t_observed()[1:], ref, rtol=1e-10)
    # the observed t is Table 3's, from the same moments, to the bit
    np.testing.assert_array_equal(test.t_observed(), one_sample_t(test.moments).t_value)
    assert np.isfinite(test.p_values()[1:]).all()


def test_permuted_sample_that_comes_out_constant_counts_as_extreme():
    # Δ = (1, 1, 1, -1): flipping the last input gives (1, 1, 1, 1), |t*| = ∞ ≥ |t|
    delta = np.array([[1.0], [1.0], [1.0], [-1.0]])
    signs = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, -1.0], [-1.0, 1.0, 1.0, 1.0]])
    test = PermutationT()
    test.add(delta, signs)
    assert test.t_observed()[0] == pytest.approx(sps.ttest_1samp(delta[:, 0], 0.0).statistic)
    assert test.t_perm()[1, 0] == np.inf
    # counted: the identity row (t* = t) and the constant row; not the third (t* = 0)
    assert test.p_values()[0] == pytest.approx((1 + 2) / 4)


def test_table3_and_p_perm_of_constant_columns_are_nan_in_the_analysis(tmp_path):
    """A store of 15 inputs (blocks of 5): neuron 0 has text 1.0, image 1e-9 (float32), whose
    float64 Δ sums inexactly (sd ~ 1e-16 · mean, old t ≈ 3e16); neuron 1 has text 0.1, image
    0; the others are noise and equal scipy."""
    n, width, n_layers = 15, 6, 2
    rng = np.random.default_rng(8)
    values = {}
    for condition in CONDITIONS:
        for stat in STATS:
            values[condition, stat] = rng.normal(size=(n, n_layers, width)).astype(np.float32)
    for stat in STATS:
        values["text", stat][:, :, 0], values["image", stat][:, :, 0] = np.float32(1.0), np.float32(1e-9)
        values["text", stat][:, :, 1], values["image", stat][:, :, 1] = np.float32(0.1), np.float32(0.0)
    store = ActivationStore.create(tmp_path / "activations.zarr", n_layers, {"mlp": width}, 5,
                                   {"seed": 0, "model": "m"})
    for start in range(0, n, 5):
        store.append({c: {"mlp": {s: values[c, s][start : start + 5] for s in STATS}} for c in CONDITIONS},
                     {c: [1] * 5 for c in CONDITIONS})
    table = run_analysis(store, AnalysisSettings(n_perm=200, n_boot=200)).neurons.sort_values(["layer", "neuron"])
    constant = table["neuron"].isin([0, 1])
    for stat in ("", "_mean"):
        for name in ("t_value", "p_value", "cohen_d", "q_value", "p_perm"):
            assert table.loc[constant, f"{name}{stat}"].isna().all(), (name, stat)
        delta = (values["text", "max" if not stat else "mean"].astype(np.float64)
                 - values["image", "max" if not stat else "mean"].astype(np.float64))
        ref = sps.ttest_1samp(delta[:, :, 2:].reshape(n, -1), 0.0, axis=0)
        np.testing.assert_allclose(table.loc[~constant, f"t_value{stat}"], ref.statistic, rtol=1e-10)
        np.testing.assert_allclose(table.loc[~constant, f"p_student{stat}"], ref.pvalue, rtol=1e-8)
        skew = sps.skew(delta[:, :, 2:].reshape(n, -1), axis=0)
        np.testing.assert_allclose(table.loc[~constant, f"p_value{stat}"],
                                   hall_p(ref.statistic, skew, np.full(skew.shape, n)), rtol=1e-8)
        assert table.loc[~constant, f"p_perm{stat}"].between(1 / 201, 1).all()
    np.testing.assert_allclose(table.loc[constant, "mean_diff"], np.tile([1.0 - np.float32(1e-9), np.float32(0.1)], 2))


def test_outliers_against_a_zero_median_hand_case():
    # dead neurons (0) leave the median and the spread of log peaks and are never flagged; medians
    # of the plain values are 0, 0, 1 (a rule on them would flag 1, 2 and 1000 in row 0)
    acts = np.array([[0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 1000.0],   # active median 2: only 1000 > 200
                     [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],      # no active neuron: nothing
                     [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 1000.0]])  # active median 2.5: 1000 > 250
    np.testing.assert_array_equal(outlier_flags(acts), [[False] * 6 + [True], [False] * 7, [False] * 6 + [True]])
    assert outlier_flags(np.array([0.0, 0.0, 0.0, 5.0])).tolist() == [False] * 4  # 5 is its own median
    np.testing.assert_array_equal(outlier_flags(acts, factor=1.0)[0], [False] * 4 + [False, False, True])
    ragged = outlier_flags([np.array([0.0, np.nan, 0.0, 3.0, 3.0, 400.0]), np.zeros(3)])  # active median 3
    assert [r.tolist() for r in ragged] == [[False] * 5 + [True], [False] * 3]
