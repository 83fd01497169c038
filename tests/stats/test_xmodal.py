"""Cross-modal neurons (stats/neuron/xmodal.py) against scipy and brute-force permutation loops,
and their per-layer share (stats/xmodal_layers.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from modalscope.seeds import generator
from modalscope.stats.columns import column
from modalscope.stats.controls import SignFlips
from modalscope.stats.fdr import fdr
from modalscope.stats.site_analysis import SiteAnalysis
from modalscope.stats.neuron.xmodal import (
    CrossModal, _keys16, average_ranks, block_draws, boot_neurons, bootstrap_r, compact, null_abs_r, pairings,
    permutation_p, standardised_ranks,
)
from modalscope.stats.protocol import AnalysisSettings, Context, Slab
from modalscope.stats.xmodal_layers import share, threshold, xmodal_layer_columns, xmodal_summary

N, WIDTH, N_PERM = 30, 6, 300


def _fed(x: np.ndarray, y: np.ndarray, n_perm: int = N_PERM, seed: int = 4, n_boot: int = 0,
         perm: bool = True, pair_k: np.ndarray | None = None) -> CrossModal:
    settings = AnalysisSettings(n_perm=n_perm, n_boot=n_boot, seed=seed, xmodal_perm=perm)
    acc = CrossModal(Context("mlp", 0, "max", x.shape[1], len(x), settings, SignFlips(len(x), 0), pair_k), {})
    for start in range(0, len(x), 7):  # blocks as the analysis feeds them
        stop = min(start + 7, len(x))
        acc.add(Slab(start, stop, x[start:stop] - y[start:stop], {"text": x[start:stop], "image": y[start:stop]}))
    return acc


def _pair() -> tuple[np.ndarray, np.ndarray]:
    """float32 values (what the store holds): cross-modal, anti-ranked, tied, independent."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, WIDTH))
    y = rng.normal(size=(N, WIDTH))
    y[:, 0] = x[:, 0] + 0.3 * y[:, 0]  # cross-modal
    y[:, 1] = -x[:, 1] ** 3  # perfectly anti-ranked
    x[:, 2] = np.round(x[:, 2])  # ties
    return x.astype(np.float32), y.astype(np.float32)


def test_ranks_equal_scipy_with_ties():
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=(50, 9)), 1).astype(np.float16)
    x[:, 0] = 0.0
    np.testing.assert_array_equal(average_ranks(x), sps.rankdata(x, axis=0))


def _awkward(values: str) -> np.ndarray:
    """[40, 6] float64: heavy ties, 0 tied with -0, a constant column, both infinities and
    float16's extremes (65504, its smallest subnormal 2^-24) when `values` is "half"; the
    same plus 1e-3 (no float16 holds most of them) when "float"."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(40, 6))
    x[:, 0] = np.round(x[:, 0])
    x[:, 1] = 0.0
    x[::3, 1] = -0.0
    x[:, 2] = rng.choice([-np.inf, -65504.0, -2.0**-24, -0.0, 0.0, 2.0**-24, 65504.0, np.inf], size=40)
    x[::4, 3] = x[0, 3]
    x = x.astype(np.float16).astype(np.float64)
    return x if values == "half" else x + 1e-3


@pytest.mark.parametrize("values, dtype", [("half", np.float16), ("half", np.float32), ("float", np.float32),
                                           ("float", np.float64)])
def test_ranks_equal_scipy_on_the_radix_and_the_float_path(values, dtype):
    x = _awkward(values).astype(dtype)
    assert (_keys16(np.ascontiguousarray(x.T)) is None) == (values == "float")  # the path meant
    np.testing.assert_array_equal(average_ranks(x), sps.rankdata(x.astype(np.float64), axis=0))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_ranks_put_nan_last_untied_as_the_float_sort_does(dtype):
    x = np.array([[2.0, np.nan, 1.0, np.nan, 2.0, -0.0, 0.0]], dtype=dtype).T
    got = average_ranks(x)[:, 0]
    np.testing.assert_array_equal(got[[0, 2, 4, 5, 6]], sps.rankdata([2.0, 1.0, 2.0, 0.0, 0.0]))
    assert sorted(got[[1, 3]]) == [6.0, 7.0]


@pytest.mark.parametrize("values", ["half", "float"])
def test_standardised_ranks_are_scipys_ranks_centred_and_scaled_bit_for_bit(values):
    x = _awkward(values)[:, [0, 1, 3, 4]].astype(np.float32)  # finite; column 1 constant
    got, varies = standardised_ranks(np.ascontiguousarray(x.T))
    ranks = sps.rankdata(x, axis=0)
    centred = ranks - ranks.mean(axis=0)
    with np.errstate(invalid="ignore"):
        want = np.where(centred.any(axis=0), centred / np.sqrt((centred**2).mean(axis=0)), 0.0)
    np.testing.assert_array_equal(got, want.T)
    assert varies.tolist() == [True, False, True, True]


def test_values_are_held_as_float16_when_that_is_exact():
    half = np.float16([[0.5, -0.0], [np.nan, 65504.0]]).astype(np.float64)
    assert compact(half).dtype == np.float16 and np.array_equal(compact(half), half, equal_nan=True)
    assert compact(half + 1e-4).dtype == np.float32 and compact(np.float64([[1e6]])).dtype == np.float32


def test_r_ci_and_pearson_equal_scipy():
    x, y = _pair()
    got = _fed(x, y).columns()
    for j in range(WIDTH):
        assert got["xmodal_r"][j] == pytest.approx(sps.spearmanr(x[:, j], y[:, j]).statistic, rel=1e-12)
        assert got["xmodal_pearson"][j] == pytest.approx(sps.pearsonr(x[:, j].astype(float), y[:, j].astype(float)).statistic, rel=1e-12)
        if abs(got["xmodal_r"][j]) < 1 - 1e-9:
            z, half = np.arctanh(got["xmodal_r"][j]), 1.959963984540054 * np.sqrt(1.06 / (N - 3))
            assert got["xmodal_ci_low"][j] == pytest.approx(np.tanh(z - half), rel=1e-12)
            assert got["xmodal_ci_high"][j] == pytest.approx(np.tanh(z + half), rel=1e-12)
    assert got["xmodal_r"][1] == pytest.approx(-1.0)


def test_the_shared_null_is_the_pairings_applied_to_ranks_1_to_n():
    perms = pairings(N, N_PERM, 4)
    want = np.sort([abs(sps.spearmanr(np.arange(N), perm).statistic) for perm in perms])
    np.testing.assert_allclose(null_abs_r(N, N_PERM, 4), want, rtol=0, atol=1e-12)


def _brute_p(x: np.ndarray, y: np.ndarray, perms: np.ndarray, by_rank: bool) -> float:
    """A per-neuron loop with scipy: re-pair the neuron's own responses by each pairing, either
    in rank order (the i-th smallest text response with the perm[i]-th smallest image response:
    for tie-free data this is exactly the shared null's draw) or in input order (y[perm])."""
    r = sps.spearmanr(x, y).statistic
    if by_rank:
        x, y = np.sort(x), np.sort(y)
    rx, ry = sps.rankdata(x), sps.rankdata(y)[perms]  # y[perm]'s ranks: y's ranks, re-paired
    rx, ry = rx - rx.mean(), ry - ry.mean(axis=1, keepdims=True)
    null = ry @ rx / np.sqrt((rx @ rx) * (ry**2).sum(axis=1))
    assert null[0] == pytest.approx(sps.spearmanr(x, y[perms[0]]).statistic, rel=1e-12)
    return (1 + (np.abs(null) >= abs(r) * (1 - 1e-12)).sum()) / (len(perms) + 1)


def test_permutation_p_equals_a_brute_force_loop_with_the_same_pairings():
    x, y = _pair()
    got = _fed(x, y).columns()
    perms = pairings(N, N_PERM, 4)
    for j in (0, 1, 3, 4, 5):  # tie-free: exact
        assert got["xmodal_p_perm"][j] == pytest.approx(_brute_p(x[:, j], y[:, j], perms, by_rank=True), abs=1e-12), j
        # the same pairings in input order: other draws of the same null, so close, not equal
        assert abs(got["xmodal_p_perm"][j] - _brute_p(x[:, j], y[:, j], perms, by_rank=False)) < 0.12, j
    assert got["xmodal_p_perm"][0] == 1 / (N_PERM + 1)


def test_with_ties_the_shared_null_stays_close_to_each_neurons_own_permutation_null():
    """Float16 rounding, one-decimal rounding and a neuron 0 on half the pairs: p from the shared
    (tie-free) null against the neuron's own permutation null, both from 20,000 pairings."""
    rng = np.random.default_rng(5)
    n, n_perm = 60, 20_000
    base = rng.normal(size=(n, 4))
    x = np.stack([base[:, 0], np.round(base[:, 1], 1), np.maximum(base[:, 2], 0), base[:, 3]], axis=1)
    y = np.array([0.45, 0.45, 1.2, 0.45]) * x + rng.normal(size=(n, 4))
    x, y = x.astype(np.float16).astype(np.float32), y.astype(np.float16).astype(np.float32)
    got = _fed(x, y, n_perm=n_perm).columns()
    assert len(np.unique(x[:, 1])) < n / 2 and (x[:, 2] == 0).sum() > n / 3  # the ties are there
    perms = generator(9, "shuffle").permuted(np.tile(np.arange(n), (n_perm, 1)), axis=1)
    for j in range(4):
        rx, ry = sps.rankdata(x[:, j]), sps.rankdata(y[:, j])
        rx, ry = rx - rx.mean(), ry - ry.mean()
        null = ry[perms] @ rx / np.sqrt((rx @ rx) * (ry @ ry))
        r = got["xmodal_r"][j]
        own = (1 + (np.abs(null) >= abs(r) * (1 - 1e-12)).sum()) / (n_perm + 1)
        assert own < 0.05, (j, own)  # in the tail, where the null's shape matters
        assert got["xmodal_p_perm"][j] == pytest.approx(own, abs=0.005), j


def test_a_constant_response_gives_nan_and_missing_inputs_are_left_out():
    x, y = _pair()
    y[:, 3] = 5.0
    x[4] = np.nan  # an empty input: every neuron
    got = _fed(x, y).columns()
    assert np.isnan(got["xmodal_r"][3]) and np.isnan(got["xmodal_p"][3]) and np.isnan(got["xmodal_p_perm"][3])
    keep = np.arange(N) != 4
    assert got["xmodal_r"][0] == pytest.approx(sps.spearmanr(x[keep, 0], y[keep, 0]).statistic, rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_under_random_pairing_the_p_values_are_uniform(dtype):
    """Every neuron's p reads the same null, so the p's share its Monte Carlo error (about
    sqrt(p(1-p)/P) in the CDF); 10,000 pairings keep that below what KS over 1,000 neurons sees."""
    rng = np.random.default_rng(11)
    x, y = (rng.normal(size=(40, 1000)).astype(dtype).astype(np.float32) for _ in range(2))
    got = _fed(x, y, n_perm=10_000).columns()
    for name in ("xmodal_p", "xmodal_p_perm"):
        assert sps.kstest(got[name], "uniform").pvalue > 0.01, name


def test_permutation_p_is_monotone_in_abs_r():
    null = null_abs_r(50, 500, 0)
    r = np.linspace(-1, 1, 401)
    p = permutation_p(r, null)
    order = np.argsort(np.abs(r))
    assert np.all(np.diff(p[order]) <= 0)


@pytest.mark.parametrize("n_inputs", [20, 250])
def test_bootstrap_r_equals_a_loop_over_resampled_blocks_of_inputs(n_inputs):
    """20 inputs: blocks of one input (the plain input bootstrap); 250: 100 blocks of 2-3."""
    rng = np.random.default_rng(2)
    rows = np.array([i for i in range(n_inputs) if i != 6])  # input 6 missing
    rx, ry = rng.normal(size=(len(rows), 3)), rng.normal(size=(len(rows), 3))
    draws = block_draws(n_inputs, 5, seed=3)
    got = bootstrap_r(rx, ry, rows, draws, n_inputs)
    k = min(n_inputs, 100)
    picks = generator(3, "bootstrap").integers(0, k, size=(5, k))
    members = {b: [i for i, row in enumerate(rows) if row * k // n_inputs == b] for b in range(k)}
    for b, pick in enumerate(picks):
        chosen = [i for block in pick for i in members[int(block)]]
        for j in range(3):
            assert got[b, j] == pytest.approx(np.corrcoef(rx[chosen, j], ry[chosen, j])[0, 1], rel=1e-10)


def test_the_fdr_cut_is_an_abs_r_threshold_and_the_layer_share_counts_it():
    """Three layers of synthetic neurons, cross-modal ones growing with depth: q < 0.05 is
    |r| >= threshold, the share per layer counts r > 0 beyond it, and the bootstrap CI of the
    share and of its slope bracket the observed values."""
    rng = np.random.default_rng(8)
    n, width, frames, outputs = 80, 40, [], []
    settings = AnalysisSettings(n_perm=1000, n_boot=200, seed=1)
    for layer in range(3):
        x, y = rng.normal(size=(n, width)), rng.normal(size=(n, width))
        y[:, : 10 * layer] += 1.5 * x[:, : 10 * layer]
        acc = CrossModal(Context("mlp", layer, "max", width, n, settings, SignFlips(n, 0)), {})
        acc.add(Slab(0, n, x - y, {"text": x.astype(np.float32), "image": y.astype(np.float32)}))
        frames.append(pd.DataFrame({"layer": layer, "neuron": np.arange(width), **acc.columns()}))
        outputs.append(acc.layer_outputs())
    table = pd.concat(frames, ignore_index=True)
    table["xmodal_q"] = fdr(table["xmodal_p"].to_numpy())
    site = SiteAnalysis(table, {}, {}, {"max": outputs})
    cut = threshold(table["xmodal_r"], table["xmodal_q"])
    r, q = table["xmodal_r"].to_numpy(), table["xmodal_q"].to_numpy()
    np.testing.assert_array_equal(q < 0.05, np.abs(r) >= cut)
    got = xmodal_layer_columns(site, "max")
    want = [((r > 0) & (q < 0.05))[table["layer"] == layer].mean() for layer in range(3)]
    np.testing.assert_allclose(got["xmodal_share"], want)
    assert want[0] < want[1] < want[2]
    assert np.all(got["xmodal_share_ci_low"] <= got["xmodal_share"])
    assert np.all(got["xmodal_share"] <= got["xmodal_share_ci_high"])
    np.testing.assert_allclose(got["xmodal_median_r"], [np.median(r[table["layer"] == k]) for k in range(3)])
    trend = xmodal_summary(site, ["max"])
    assert trend["slope"] == pytest.approx(sps.linregress([0, 1, 2], want).slope)
    assert trend["slope_ci_low"] < trend["slope"] < trend["slope_ci_high"]
    assert trend["threshold_abs_r"] == cut and trend["n_cross_modal"] == int(((r > 0) & (q < 0.05)).sum())
    assert boot_neurons(width).size == width and share(np.array([np.nan, 0.5, -0.6]), 0.4) == 0.5


def test_table3_and_the_layer_table_of_the_small_study_hold_the_cross_modal_columns(small_study):
    neurons = pd.read_parquet(small_study / "tables" / "table3_neurons.parquet")
    layers = pd.read_parquet(small_study / "tables" / "layers.parquet")
    summary = pd.read_json(small_study / "tables" / "summary.json", typ="series")
    stats = [c.removeprefix("mean_diff_") for c in neurons.columns if c.startswith("mean_diff_")
             and not c.endswith("_vs_base")]
    for stat in ["max", *stats]:
        names = [column(n, stat) for n in ("xmodal_r", "xmodal_p", "xmodal_q", "xmodal_ci_low",
                                           "xmodal_ci_high", "xmodal_pearson")]
        assert set(names) <= set(neurons.columns), stat
        for site, rows in neurons.groupby("site"):
            np.testing.assert_array_equal(rows[column("xmodal_q", stat)], fdr(rows[column("xmodal_p", stat)].to_numpy()))
            share_want = rows.groupby("layer").apply(
                lambda g: ((g[column("xmodal_r", stat)] > 0) & (g[column("xmodal_q", stat)] < 0.05)).sum()
                / g[column("xmodal_r", stat)].notna().sum())
            got = layers[layers["site"] == site].set_index("layer")[column("xmodal_share", stat)]
            np.testing.assert_allclose(got.to_numpy(), share_want.to_numpy())
    for site in neurons["site"].unique():
        assert {"slope", "slope_ci_low", "threshold_abs_r", "by_stat"} <= set(summary[site]["xmodal"])
