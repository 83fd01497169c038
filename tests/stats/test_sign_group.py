"""The sign-flip test through the sign flips' group structure (stats/sign_group.py) against
brute force: the sums and p of every sign vector one at a time, exact integer arithmetic for
ties, and simulations with a known truth for its level and its power."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from modalscope.stats.controls import PermutationT, SignFlips
from modalscope.stats.sign_group import GroupPermutationT, walsh_hadamard


def _group_test(delta: np.ndarray, signs: SignFlips, block: int = 64) -> GroupPermutationT:
    test = GroupPermutationT(signs)
    for start in range(0, delta.shape[0], block):
        test.add(delta[start : start + block], start)
    return test


def test_walsh_hadamard_is_sylvesters_matrix():
    k = 6
    x = np.random.default_rng(0).normal(size=(1 << k, 3))
    matrix = np.array([[(-1.0) ** bin(e & c).count("1") for c in range(1 << k)] for e in range(1 << k)])
    np.testing.assert_allclose(walsh_hadamard(x.copy()), matrix @ x, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="2\\^k"):
        walsh_hadamard(np.zeros((12, 2)))


@pytest.mark.parametrize("n_perm", [0, 1, 50, 1000, 1023, 1024])
def test_sign_flips_are_distinct_non_identity_group_elements(n_perm):
    flips = SignFlips(300, n_perm, 5)
    assert flips.elements.size == n_perm and len(set(flips.elements.tolist())) == n_perm
    assert (flips.elements > 0).all() and (flips.elements < 1 << flips.k).all()
    assert (1 << flips.k) - 1 >= n_perm and (n_perm == 0 or (1 << (flips.k - 1)) - 1 < n_perm)
    assert flips.codes.shape == (300,) and (flips.codes < 1 << flips.k).all()
    signs = flips.block()
    if n_perm > 1:  # closed under products: the product of two rows is a group element's signs
        e, f = flips.elements[0], flips.elements[1]
        product = SignFlips.__new__(SignFlips)
        product.__dict__.update(flips.__dict__, elements=np.array([e ^ f], dtype=np.uint32), n_perm=1)
        np.testing.assert_array_equal(signs[0] * signs[1], product.block()[0])


@pytest.mark.parametrize("n, n_perm, block", [(60, 300, 64), (500, 1000, 37), (7, 50, 1), (130, 5, 1000)])
def test_group_sums_and_p_equal_brute_force_over_the_same_sign_vectors(n, n_perm, block):
    rng = np.random.default_rng(n)
    delta = rng.normal(0.1, 1.0, size=(n, 40))
    delta[rng.random(delta.shape) < 0.05] = np.nan  # a missing Δ counts 0
    flips = SignFlips(n, n_perm, 3)
    test = _group_test(delta, flips, block)
    signs, values = flips.block(), np.nan_to_num(delta)
    want = np.zeros((n_perm, 40))
    for i in range(n):  # input by input, float64
        want += signs[:, [i]] * values[i]
    scale = np.abs(values).sum(axis=0)
    assert (np.abs(test.s - want) <= 1e-13 * scale).all()
    # p: every sign vector's t by scipy, counted against the observed t (the same NaN-skipping sample)
    p = test.p_values()
    for j in range(0, 40, 7):
        kept = ~np.isnan(delta[:, j])
        t_obs = sps.ttest_1samp(delta[kept, j], 0.0).statistic
        t_all = sps.ttest_1samp(signs[:, kept] * delta[kept, j], 0.0, axis=1).statistic
        count = (np.abs(t_all) >= np.abs(t_obs) * (1 - 1e-9)).sum()
        assert p[j] == (1 + count) / (n_perm + 1)


def test_ties_count_as_exact_integer_arithmetic_counts_them():
    """frac_active-like Δ: multiples of 1/13, each stored as the nearest float64; exact sums
    are integers over 13. Every permuted sum equal to the observed one in exact arithmetic
    counts, and no other."""
    rng = np.random.default_rng(8)
    numerators = rng.integers(-3, 5, size=(40, 30))
    delta = numerators / 13.0
    flips = SignFlips(40, 400, 9)
    p = _group_test(delta, flips, 16).p_values()
    exact = flips.block().astype(np.int64) @ numerators  # integer sums
    count = (np.abs(exact) >= np.abs(numerators.sum(axis=0))).sum(axis=0)
    defined = numerators.std(axis=0) > 0
    np.testing.assert_array_equal(p[defined], ((1 + count) / 401)[defined])
    assert (count > 0).any()  # ties happen here, so the tolerance is exercised


def test_block_sizes_change_nothing_beyond_rounding():
    rng = np.random.default_rng(10)
    delta = rng.normal(0.05, 1.0, size=(300, 25))
    flips = SignFlips(300, 200, 11)
    one, many = _group_test(delta, flips, 300), _group_test(delta, flips, 7)
    np.testing.assert_allclose(many.s, one.s, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(many.p_values(), one.p_values())
    with pytest.raises(ValueError, match="outside"):
        one.add(delta[:5], 298)


def test_constant_delta_is_nan_and_no_inputs_raises():
    delta = np.column_stack([np.full(10, 0.5), np.arange(10.0)])
    p = _group_test(delta, SignFlips(10, 50, 0)).p_values()
    assert np.isnan(p[0]) and 0 < p[1] <= 1
    with pytest.raises(ValueError, match="no inputs"):
        GroupPermutationT(SignFlips(10, 50, 0)).p_values()


@pytest.mark.parametrize("n", [30, 400])
def test_level_is_exact_on_symmetric_heavy_tailed_nulls(n):
    """Exactness (Hemerik & Goeman 2018): under symmetric Δ (t with 3 df, far from normal),
    P(p <= α) is floor(α (P + 1)) / (P + 1) for continuous data, whatever subgroup was drawn.
    20,000 null neurons, one draw of the sign flips: within 4 standard errors."""
    rng = np.random.default_rng(n)
    delta = rng.standard_t(3, size=(n, 20_000))
    p = _group_test(delta, SignFlips(n, 999, n + 1), 128).p_values()
    for alpha in (0.01, 0.05):
        level = np.floor(alpha * 1000) / 1000
        assert abs((p <= alpha).mean() - level) < 4 * np.sqrt(level * (1 - level) / p.size)


def test_power_within_two_points_of_independent_random_sign_flips():
    """Against P independent random sign vectors (the textbook sign-flip test): normal Δ
    shifted to about 50% power at α = 0.01, 2,000 inputs (about 2 per cell at k = 10)."""
    rng = np.random.default_rng(12)
    n, width, n_perm = 2000, 3000, 1000
    delta = rng.normal(2.6 / np.sqrt(n), 1.0, size=(n, width))
    group = _group_test(delta, SignFlips(n, n_perm, 13), 256).p_values()
    independent = PermutationT()
    independent.add(delta, rng.choice([-1.0, 1.0], size=(n_perm, n)))
    textbook = independent.p_values()
    power_group, power_textbook = (group <= 0.01).mean(), (textbook <= 0.01).mean()
    assert 0.3 < power_textbook < 0.7
    assert power_group > power_textbook - 0.02
