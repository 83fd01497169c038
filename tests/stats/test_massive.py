"""Massive neurons (stats/massive.py, Table 3's `outlier`): a planted massive dimension is flagged
in every layer even though the layers' medians grow with depth (as a trained model's do), and
the ordinary neurons are not; the accumulator that writes the column (stats/neuron/peak.py)
applies the same rule to the values the store holds."""

from __future__ import annotations

import numpy as np

from modalscope.stats.massive import MASSIVE_FACTOR, massive_flags
from modalscope.stats.neuron.peak import PeakActivation
from modalscope.stats.protocol import AnalysisSettings, Context, Slab

N_LAYERS, WIDTH, PLANTED = 30, 576, 199  # the trained LLaVA's LM: 30 layers, hidden 576


def _trained_like_peaks(seed: int = 0) -> np.ndarray:
    """[layer, neuron] max |activation|: ordinary peaks log-normal around a median that grows with
    depth from 3.6 to 56.6, with a spread that differs by layer; dimension 199 is massive, its
    scale growing from 100 to 1,206 (28x to 21x its layer's median)."""
    rng = np.random.default_rng(seed)
    medians = np.geomspace(3.6, 56.6, N_LAYERS)
    spread = rng.uniform(0.25, 0.45, N_LAYERS)[:, None]  # SD of log peak per layer
    peaks = medians[:, None] * np.exp(spread * rng.standard_normal((N_LAYERS, WIDTH)))
    peaks[:, PLANTED] = np.geomspace(100.0, 1206.0, N_LAYERS)
    return peaks


def test_a_planted_massive_dimension_is_flagged_in_every_layer_and_nothing_else():
    for seed in range(5):
        peaks = _trained_like_peaks(seed)
        flags = massive_flags(peaks)
        assert flags[:, PLANTED].all(), np.flatnonzero(~flags[:, PLANTED])
        assert not np.delete(flags, PLANTED, axis=1).any()
    old = peaks > 100 * np.median(peaks, axis=1, keepdims=True)  # the former rule: a fixed 100x the median
    assert not old[:, PLANTED].any()


def test_a_heavy_tailed_layer_does_not_flag_its_tail_and_a_tight_one_needs_the_factor():
    rng = np.random.default_rng(1)
    heavy = 5.0 * np.exp(1.2 * rng.standard_normal(4096))  # ordinary peaks spanning 100x and more
    assert (heavy > MASSIVE_FACTOR * np.median(heavy)).sum() > 20  # a fixed multiple would flag these
    assert not massive_flags(heavy).any()
    tight = np.full(1000, 2.0) + rng.uniform(0, 1e-3, 1000)  # MAD ~0: any excess is "many spreads"
    tight[7], tight[8] = 15.0, 25.0  # 7.5x and 12.5x the median
    assert np.flatnonzero(massive_flags(tight)).tolist() == [8]
    assert np.flatnonzero(massive_flags(tight, factor=5.0)).tolist() == [7, 8]


def test_dead_and_missing_neurons_are_never_flagged_nor_counted():
    layer = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.1, 0.9, 1.0, np.nan, 300.0])
    assert np.flatnonzero(massive_flags(layer)).tolist() == [10]  # median of the active: 1
    assert not massive_flags(np.zeros(5)).any() and not massive_flags(np.full(3, np.nan)).any()
    ragged = massive_flags([layer, np.array([1.0, 1.2, 0.8, 1.1, 0.9, 50.0])])
    assert [np.flatnonzero(r).tolist() for r in ragged] == [[10], [5]]


def test_the_accumulator_flags_the_planted_dimension_from_per_input_values():
    """Per input and neuron the store holds a reduction over tokens; the peak is the largest
    |value| over inputs and both conditions, the flag its layer's rule."""
    rng = np.random.default_rng(2)
    n_inputs, width, planted = 240, 256, 31
    for layer, scale in enumerate(np.geomspace(1.0, 16.0, 5)):  # both the bulk and the planted grow
        ctx = Context(site="residual", layer=layer, stat="max", width=width, n_inputs=n_inputs,
                      settings=AnalysisSettings(), signs=None)
        peak = PeakActivation(ctx, {})
        sd = scale * np.exp(0.3 * rng.standard_normal(width))  # neurons differ in scale
        for start in range(0, n_inputs, 80):
            text, image = (sd * rng.standard_normal((80, width)) for _ in range(2))
            text[:, planted] = rng.uniform(60, 80, 80) * scale ** 0.8  # 25x the median peak, 14x at the last layer
            peak.add(Slab(start, start + 80, text - image, {"text": text, "image": image}))
        columns = peak.columns()
        np.testing.assert_allclose(columns["max_abs_activation"][planted], peak.peak[planted])
        assert np.flatnonzero(columns["outlier"]).tolist() == [planted], layer
