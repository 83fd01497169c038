"""One --seed, three independent streams (seeds.py): the shuffle of the pairs, the sign flips
and the bootstrap each draw from their own SeedSequence child, checked against numpy itself
(the references below never import seeds.py's derivation) and against the old coupling,
where all three read `default_rng(seed)`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from modalscope import seeds
from modalscope.data.manifest import shuffled
from modalscope.data.pairs import Pair
from modalscope.stats.controls import SignFlips, bootstrap_trend


def _child(seed: int, index: int) -> np.random.Generator:
    """numpy's own: child `index` of SeedSequence(seed).spawn(6)."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(6)[index])


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3])
def test_three_streams_differ_from_each_other_and_from_default_rng(seed):
    draws = {name: seeds.generator(seed, name).random(16) for name in seeds.STREAMS}
    plain = np.random.default_rng(seed).random(16)
    assert list(draws) == ["shuffle", "sign_flips", "bootstrap", "alignment_bootstrap", "alignment_null",
                           "xmodal_null"]
    values = [*draws.values(), plain]
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert not np.allclose(values[i], values[j])
    for index, name in enumerate(seeds.STREAMS):
        np.testing.assert_array_equal(draws[name], _child(seed, index).random(16))
        np.testing.assert_array_equal(draws[name], seeds.generator(seed, name).random(16))  # reproducible
    with pytest.raises(ValueError, match="sign_flips"):
        seeds.generator(seed, "noise")


def test_record_is_json_and_rebuilds_each_stream():
    record = json.loads(json.dumps(seeds.record(11)))
    assert record["seed"] == 11 and "SeedSequence(seed).spawn(6)" in record["derivation"]
    assert list(record["streams"]) == list(seeds.STREAMS)
    for index, (name, entry) in enumerate(record["streams"].items()):
        assert entry == {"index": index, "entropy": 11, "spawn_key": [index]}
        rebuilt = np.random.default_rng(np.random.SeedSequence(entry["entropy"], spawn_key=entry["spawn_key"]))
        np.testing.assert_array_equal(rebuilt.random(5), seeds.generator(11, name).random(5))


def test_shuffle_uses_the_shuffle_stream_not_default_rng():
    pairs = [Pair(str(i), f"/{i}.jpg", f"caption {i}", i) for i in range(1, 31)]
    got = [p.pair_id for p in shuffled(pairs, 4)]
    ordered = [str(i) for i in range(1, 31)]  # the sort by (length, id) is numeric here
    assert got == [ordered[i] for i in _child(4, 0).permutation(30)]
    assert got != [ordered[i] for i in np.random.default_rng(4).permutation(30)]


def test_sign_flips_use_their_own_stream():
    got = SignFlips(50, 40, 3).block()
    # child 1 draws the 40 group elements (distinct, non-zero, 6 bits: 2^6 - 1 >= 40), then a code per input
    rng = _child(3, 1)
    elements = 1 + rng.choice(63, size=40, replace=False)
    codes = rng.integers(0, 64, size=50)
    want = np.array([[(-1.0) ** bin(e & c).count("1") for c in codes] for e in elements])
    np.testing.assert_array_equal(got, want)
    old = np.random.default_rng(3)
    old_elements = 1 + old.choice(63, size=40, replace=False)
    old_codes = old.integers(0, 64, size=50)
    assert not np.array_equal(got, [[(-1.0) ** bin(e & c).count("1") for c in old_codes] for e in old_elements])
    # a block of inputs reads the same draw
    np.testing.assert_array_equal(SignFlips(50, 40, 3).block(10, 37), got[:, 10:37])


def test_bootstrap_uses_its_own_stream_brute_force():
    rng = np.random.default_rng(99)
    x = rng.normal(size=(30, 6)) + 0.2 * np.arange(6)
    n_boot = 300
    got = bootstrap_trend(x, n_boot=n_boot, seed=5)

    def bounds(draws: np.ndarray) -> tuple[float, float]:
        slopes = [sps.linregress(np.arange(6), x[idx].mean(axis=0)).slope for idx in draws]
        low, high = np.percentile(slopes, [2.5, 97.5])
        return float(low), float(high)

    low, high = bounds(_child(5, 2).integers(0, 30, size=(n_boot, 30)))
    assert got["slope_low"] == pytest.approx(low, rel=1e-10)
    assert got["slope_high"] == pytest.approx(high, rel=1e-10)
    old_low, old_high = bounds(np.random.default_rng(5).integers(0, 30, size=(n_boot, 30)))
    assert (got["slope_low"], got["slope_high"]) != pytest.approx((old_low, old_high), rel=1e-10)
