"""The sign test (stats/neuron/sign_counts.py) against scipy.stats.binomtest, neuron by neuron."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from modalscope.stats.controls import SignFlips
from modalscope.stats.neuron.sign_counts import SignTest
from modalscope.stats.protocol import AnalysisSettings, Context, Slab


def _fed(delta: np.ndarray, step: int = 7) -> SignTest:
    ctx = Context("mlp", 0, "max", delta.shape[1], delta.shape[0], AnalysisSettings(), SignFlips(delta.shape[0], 0))
    test = SignTest(ctx, {})
    for start in range(0, len(delta), step):
        block = delta[start:start + step]
        test.add(Slab(start, start + len(block), block, {}))
    return test


def test_share_and_p_equal_binomtest_with_ties_and_missing_left_out():
    rng = np.random.default_rng(5)
    delta = rng.normal(0.3, 1.0, size=(41, 12)).round(1)  # rounding makes ties at 0
    delta[rng.random(delta.shape) < 0.1] = np.nan
    delta[:, 0] = 0.0  # all ties: no pair differs
    delta[:, 1] = np.abs(delta[:, 1]) + 0.1  # every pair positive
    got = _fed(delta).columns()
    assert got["share_positive"][0] == 0.0 and got["p_sign"][0] == 1.0  # as defined: 0 of 0 positive, p = 1
    for j in range(1, delta.shape[1]):
        column = delta[:, j][~np.isnan(delta[:, j])]
        k, n = int((column > 0).sum()), int((column != 0).sum())
        assert got["share_positive"][j] == pytest.approx(k / n, rel=1e-15)
        assert got["p_sign"][j] == pytest.approx(sps.binomtest(k, n, 0.5).pvalue, rel=1e-10)
    assert got["p_sign"][1] == pytest.approx(2 * 0.5 ** int((~np.isnan(delta[:, 1])).sum()), rel=1e-12)


def test_no_finite_delta_stays_nan_and_shards_merge():
    delta = np.zeros((10, 3))
    delta[:, 1] = np.nan  # no value at all: no test
    delta[:4, 2] = [1.0, -2.0, 3.0, 0.5]
    one = _fed(delta).columns()
    assert one["share_positive"][0] == 0.0 and one["p_sign"][0] == 1.0
    assert np.isnan(one["share_positive"][1]) and np.isnan(one["p_sign"][1])
    first, second = _fed(delta[:5]), _fed(delta[5:])
    first.merge(second)
    for name in ("share_positive", "p_sign"):
        np.testing.assert_array_equal(first.columns()[name], one[name])


def test_a_study_has_the_sign_test_columns_for_every_reduction(small_study):
    import pandas as pd
    import zarr

    from modalscope.store import ActivationStore

    t3 = pd.read_parquet(small_study / "tables/table3_neurons.parquet")
    group = zarr.open_group(str(small_study / "activations.zarr"), mode="r")
    for stat in group.attrs["stats"]:
        suffix = "" if stat == "max" else f"_{stat}"
        assert {f"share_positive{suffix}", f"p_sign{suffix}"} <= set(t3.columns)
        layer = 1
        store = ActivationStore.read(small_study / "activations.zarr")  # holes filled (derived.py)
        delta = (store.read_layer("mlp", "text", stat, layer).astype(np.float64)
                 - store.read_layer("mlp", "image", stat, layer).astype(np.float64))
        rows = t3[(t3["site"] == "mlp") & (t3["layer"] == layer)].sort_values("neuron")
        k, n_nonzero = (delta > 0).sum(0), (delta != 0).sum(0)
        np.testing.assert_allclose(rows[f"share_positive{suffix}"], k / n_nonzero, rtol=1e-15)
        ref = [sps.binomtest(int(a), int(b), 0.5).pvalue for a, b in zip(k[:8], n_nonzero[:8])]
        np.testing.assert_allclose(rows[f"p_sign{suffix}"].to_numpy()[:8], ref, rtol=1e-10)
