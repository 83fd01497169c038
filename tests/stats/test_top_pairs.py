"""The streaming top-k of stats/top_pairs.py equals a brute-force sort per neuron: NaN is never
ranked, equal values rank by input index, blocks of any size give one answer, and merging
partial results (in any order and grouping) equals one pass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modalscope.stats.top_pairs import TopK, decode, encode


def brute_force(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """[k, neuron] values and input indices by sorting each neuron's (value, index) list in Python."""
    n_inputs, n_neurons = values.shape
    top_values = np.full((k, n_neurons), np.nan, dtype=np.float32)
    top_index = np.full((k, n_neurons), -1, dtype=np.int64)
    for j in range(n_neurons):
        ranked = sorted(((float(values[i, j]), i) for i in range(n_inputs) if not math.isnan(values[i, j])),
                        key=lambda pair: (-pair[0], pair[1]))[:k]
        for r, (value, i) in enumerate(ranked):
            top_values[r, j], top_index[r, j] = value, i
    return top_values, top_index


def streamed(values: np.ndarray, k: int, block: int) -> TopK:
    state = TopK.empty(k, values.shape[1])
    for start in range(0, values.shape[0], block):
        state = state.add(values[start:start + block], start)
    return state


def hand_made() -> np.ndarray:
    """[11 inputs, 5 neurons]: ties (also across blocks), NaN, -0.0 vs 0.0, -inf, negatives, and a
    neuron with fewer valid inputs than k."""
    nan, inf = np.nan, np.inf
    return np.array([
        [1.0, nan, -0.0, -1.0, 2.0],
        [3.0, nan, 0.0, -2.0, 2.0],
        [3.0, 5.0, 0.0, -inf, nan],
        [nan, nan, 1.0, -1.0, 2.0],
        [2.0, nan, 0.0, -3.0, 7.0],
        [3.0, nan, -1.0, -1.0, 2.0],
        [0.5, 4.0, 0.0, -0.5, nan],
        [3.0, nan, 0.0, -1.0, 2.0],
        [nan, nan, 2.0, -2.0, 2.0],
        [-1.0, nan, 0.0, -1.0, 9.0],
        [3.0, nan, 1.0, -1.0, 2.0],
    ], dtype=np.float32)


@pytest.mark.parametrize("block", [1, 2, 3, 4, 11, 64])
def test_streaming_top_k_equals_a_sort_per_neuron(block):
    values, k = hand_made(), 4
    state = streamed(values, k, block)
    want_values, want_index = brute_force(values, k)
    np.testing.assert_array_equal(state.index(), want_index)
    np.testing.assert_array_equal(state.values(), want_values)
    # spot checks by hand: ties of 3.0 rank by input index; the neuron with two values pads with -1
    assert state.index()[:, 0].tolist() == [1, 2, 5, 7]
    assert state.index()[:, 1].tolist() == [2, 6, -1, -1] and np.isnan(state.values()[2:, 1]).all()
    assert state.index()[:, 2].tolist() == [8, 3, 10, 0]  # -0.0 (input 0) and 0.0 (input 1) tie
    assert state.index()[:, 3].tolist() == [6, 0, 3, 5]
    assert streamed(values, 11, block).index()[:, 3].tolist()[-1] == 2  # -inf is a value: ranked, last


def test_merging_partial_results_in_any_order_equals_one_pass():
    rng = np.random.default_rng(7)
    values = rng.integers(-3, 4, size=(97, 13)).astype(np.float32)  # many ties
    values[rng.random(values.shape) < 0.2] = np.nan
    k = 8
    one_pass = streamed(values, k, 10)
    cuts = [0, 5, 31, 32, 60, 97]
    parts = [TopK.empty(k, 13).add(values[a:b], a) for a, b in zip(cuts, cuts[1:])]
    for order in (range(len(parts)), reversed(range(len(parts))), rng.permutation(len(parts))):
        merged = TopK.empty(k, 13)
        for i in order:
            merged = parts[i].merge(merged)
        np.testing.assert_array_equal(merged.keys, one_pass.keys)
    halves = parts[0].merge(parts[2]).merge(parts[4]).merge(parts[1].merge(parts[3]))  # interleaved inputs
    np.testing.assert_array_equal(halves.keys, one_pass.keys)
    want_values, want_index = brute_force(values, k)
    np.testing.assert_array_equal(one_pass.index(), want_index)
    np.testing.assert_array_equal(one_pass.values(), want_values)


def test_random_float32_values_round_trip_and_rank_like_a_sort():
    rng = np.random.default_rng(3)
    values = (rng.standard_normal((300, 9)) * np.float32(10.0) ** rng.integers(-30, 30, (300, 9))).astype(np.float32)
    values[0, 0], values[1, 1], values[2, 2] = np.finfo(np.float32).max, -np.finfo(np.float32).max, 1e-45
    decoded, index = decode(encode(values, np.arange(300)))
    np.testing.assert_array_equal(decoded, values)
    np.testing.assert_array_equal(index, np.broadcast_to(np.arange(300)[:, None], values.shape))
    state = streamed(values, 5, 64)
    want_values, want_index = brute_force(values, 5)
    np.testing.assert_array_equal(state.index(), want_index)
    np.testing.assert_array_equal(state.values(), want_values)


def test_a_float16_store_ranks_as_its_float32_values():
    values = np.array([[1.0], [np.nan], [65504.0], [-2.5], [1.0]], dtype=np.float16)
    state = TopK.empty(8, 1).add(values, 0)
    assert state.index()[:, 0].tolist() == [2, 0, 4, 3, -1, -1, -1, -1]
    assert state.values()[:4, 0].tolist() == [65504.0, 1.0, 1.0, -2.5]


def test_bad_k_and_bad_indices_are_refused():
    with pytest.raises(ValueError, match="k must be at least 1"):
        TopK.empty(0, 3)
    with pytest.raises(ValueError, match="input indices"):
        encode(np.zeros((1, 2)), np.array([-1]))
    with pytest.raises(ValueError, match="3 vs 2 neurons"):
        TopK.empty(2, 3).merge(TopK.empty(2, 2))
