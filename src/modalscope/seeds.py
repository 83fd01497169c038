"""One `--seed`, independent random streams: the shuffle, the sign flips, the bootstraps, the nulls.

Why: seeding every consumer with `default_rng(seed)` gives them the *same* stream, so the
sign-flip signs, the bootstrap resamples and the shuffle of the pairs are coupled (the
first sign vector and the first resample are read off the very bits that ordered the
manifest). numpy's `SeedSequence(seed).spawn(n)` derives children whose streams are
independent of each other and of `default_rng(seed)`. The order of `STREAMS` is fixed:
child i is always stream i, so adding a consumer means appending to the tuple, never
inserting, or every study's randomness would change. `record` is what study.json stores,
enough to rebuild each generator by hand.
"""

from __future__ import annotations

import numpy as np

# Spawn order (never reorder; append only): child 0 shuffles the pairs, child 1 draws the
# sign flips, child 2 draws the bootstrap resamples, child 3 the layer-alignment bootstrap
# resamples and child 4 its shuffled pairings (stats/alignment.py), child 5 the random
# pairings of the cross-modal null (stats/neuron/xmodal.py). Child i of
# `spawn(n)` is the same for every n > i, so appending leaves the earlier streams' draws as
# they were.
STREAMS = ("shuffle", "sign_flips", "bootstrap", "alignment_bootstrap", "alignment_null", "xmodal_null")


def streams(seed: int) -> dict[str, np.random.SeedSequence]:
    """The study's seed sequences by name: `SeedSequence(seed).spawn(len(STREAMS))` in order."""
    return dict(zip(STREAMS, np.random.SeedSequence(int(seed)).spawn(len(STREAMS))))


def generator(seed: int, stream: str) -> np.random.Generator:
    """A fresh generator of one named stream of `seed` (the same draws on every call)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; expected one of {', '.join(STREAMS)}")
    return np.random.default_rng(streams(seed)[stream])


def record(seed: int) -> dict[str, object]:
    """What study.json stores: the seed, how the streams derive from it and each stream's
    entropy and spawn key (`default_rng(SeedSequence(entropy, spawn_key=key))` rebuilds it)."""
    return {
        "seed": int(seed),
        "derivation": f"numpy.random.SeedSequence(seed).spawn({len(STREAMS)}), in this order",
        "streams": {
            name: {"index": i, "entropy": int(seq.entropy), "spawn_key": [int(k) for k in seq.spawn_key]}
            for i, (name, seq) in enumerate(streams(seed).items())
        },
    }
