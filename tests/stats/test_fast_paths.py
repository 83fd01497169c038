"""The analysis' shortcuts (issue 24.7) change no number: every per-neuron statistic fed a slab
that promises no NaN (`Slab.complete`) and float16 values (`Slab.half`) gives bit for bit the
columns it gives without the promises; the bit-moving float16 conversion equals numpy's for every
finite float16; the top-k that keys only the neurons a block can change equals keying them all."""

from __future__ import annotations

import numpy as np

from modalscope.stats import controls
from modalscope.stats.input_means import InputLayerMeans
from modalscope.stats.moments import RunningMoments
from modalscope.stats.neuron import accumulators
from modalscope.stats.neuron.xmodal import exact_half
from modalscope.stats.protocol import AnalysisSettings, Context, Slab
from modalscope.stats.top_pairs import TopK, _top, encode


def half_valued(rng: np.random.Generator, shape, scale=1.0) -> np.ndarray:
    """float32 values that are float16 numbers (what a float16 store reads back), with ties."""
    return (rng.standard_t(3, size=shape) * scale).astype(np.float16).astype(np.float32)


def feed(stat: str, a: np.ndarray, b: np.ndarray, promise: bool, block: int = 37):
    n, width = a.shape
    ctx = Context("mlp", 0, stat, width, n, AnalysisSettings(n_perm=50, n_boot=20), controls.SignFlips(n, 50, 3),
                  np.full(n, 5))
    stats, means = accumulators(ctx), InputLayerMeans(ctx)
    for start in range(0, n, block):
        x, y = a[start : start + block], b[start : start + block]
        if promise:  # as a float16 store is read (analysis.read_values): float16 arrays
            x, y = x.astype(np.float16), y.astype(np.float16)
        slab = Slab(start, start + len(x), np.subtract(x, y, dtype=np.float64), {"text": x, "image": y},
                    complete=promise, half=promise)
        for statistic in stats.values():
            statistic.add(slab)
        means.add(slab)
    columns = {name: values for statistic in stats.values() for name, values in statistic.columns().items()}
    return columns, means.means


def test_promised_slabs_give_the_same_columns_bit_for_bit():
    rng = np.random.default_rng(0)
    a, b = half_valued(rng, (150, 40)), half_valued(rng, (150, 40), 2.0)
    a[:, 3] = b[:, 3]  # Δ = 0 throughout: the sign test's zeros
    a[:, 5] = -np.abs(a[:, 5])  # the largest |activation| negative: the peak from float16 bits
    for stat in ("max", "mean"):
        fast, fast_means = feed(stat, a, b, True)
        slow, slow_means = feed(stat, a, b, False)
        assert fast.keys() == slow.keys()
        for name in fast:
            np.testing.assert_array_equal(fast[name], slow[name], err_msg=f"{stat} {name}")
        np.testing.assert_array_equal(fast_means, slow_means)


def test_running_moments_and_sign_flips_complete_equal_masked():
    rng = np.random.default_rng(1)
    delta = rng.normal(size=(90, 12)) * 3 + 1
    masked, complete = RunningMoments(), RunningMoments()
    for start in range(0, 90, 25):
        masked.add(delta[start : start + 25])
        complete.add(delta[start : start + 25], complete=True)
    for name in ("n", "mean", "m2", "m3"):
        np.testing.assert_array_equal(getattr(masked, name), getattr(complete, name))
    signs = controls.SignFlips(90, 40, 2)
    slow, fast = controls.PermutationT(), controls.PermutationT()
    slow.add(delta, signs.block())
    fast.add(delta, signs.block(), complete=True)
    np.testing.assert_array_equal(slow.s, fast.s)
    np.testing.assert_array_equal(slow.p_values(), fast.p_values())


def test_exact_half_is_numpys_conversion_for_every_finite_float16():
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    every = every[np.isfinite(every)]  # ±0, subnormals, normals up to 65504
    np.testing.assert_array_equal(exact_half(every.astype(np.float32)).view(np.uint16), every.view(np.uint16))


def test_top_k_keying_only_the_neurons_that_can_change_equals_keying_all():
    rng = np.random.default_rng(5)
    values = np.round(rng.normal(size=(500, 60)), 1).astype(np.float32)  # many ties
    values[rng.random(values.shape) < 0.05] = np.nan
    values[:, 7] = np.nan  # a neuron that never responded
    for k in (1, 8):
        state, keys = TopK.empty(k, 60), np.full((k, 60), np.uint64(0))
        for start in range(0, 500, 64):
            block = values[start : start + 64]
            state = state.add(block, start)
            keys = _top(np.concatenate([keys, encode(block, np.arange(start, start + len(block)))]), k)
            np.testing.assert_array_equal(state.keys, keys)
