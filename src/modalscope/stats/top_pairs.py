"""Per neuron, the k inputs with the highest response, found streaming over blocks of inputs.

Why a merged top-k: a neuron card names the pairs that excite a neuron most, for every neuron
of every layer, and the [input, layer, neuron] array is never in memory. So each layer keeps a
[k, neuron] state and every block of inputs is merged into it; the memory is k x neurons per
layer whatever the number of inputs, and merging two partial results (say two halves of the
inputs, in either order) gives exactly the result of one pass.

How the order is made total: each (value, input index) becomes one unsigned 64-bit key, the
value's float32 bits mapped so that unsigned order is numeric order in the high half and the
input index, reversed, in the low half. A larger key is a larger value, and among equal values
a smaller input index; keys of one neuron are unique (its input indices are), so a partition
picks exactly the top k with no tie left to chance, and merging is a partition of the keys of
both sides. A missing response (NaN: an input the neuron never saw) gets key 0, below every
real key, so it is never selected; a slot no input filled (fewer than k inputs with values)
reads back as NaN with index -1. Values are ranked as float32, the store's widest dtype
(float16 widens to float32 exactly); -0.0 and +0.0 are the same value, a tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_K = 8
EMPTY = np.uint64(0)  # the key of a missing response and of an unfilled slot
_LOW = np.uint64(0xFFFFFFFF)
_SIGN = np.uint32(0x80000000)
MAX_INPUTS = 0xFFFFFFFF  # input indices 0..2^32-2 fit the low half (the last value is kept for "empty")


def encode(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """[b, n] responses and their [b] input indices -> [b, n] uint64 keys (see the module docstring)."""
    values = np.asarray(values, dtype=np.float32) + np.float32(0.0)  # a copy; -0.0 -> +0.0, a tie with 0
    index = np.asarray(index, dtype=np.int64)
    if index.size and (index.min() < 0 or index.max() >= MAX_INPUTS):
        raise ValueError(f"input indices must be in 0..{MAX_INPUTS - 1}")
    missing = np.isnan(values)
    bits = values.view(np.uint32)  # in place: negative -> all bits flipped, positive -> sign bit set
    bits ^= (values.view(np.int32) >> 31).view(np.uint32) | _SIGN
    keys = bits.astype(np.uint64)
    keys <<= np.uint64(32)
    keys |= (_LOW - index.astype(np.uint64)).reshape((-1,) + (1,) * (keys.ndim - 1))
    keys[missing] = EMPTY
    return keys


def decode(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """keys -> (float32 values, int64 input indices); EMPTY -> (NaN, -1)."""
    keys = np.asarray(keys, dtype=np.uint64)
    ordered = (keys >> np.uint64(32)).astype(np.uint32)
    bits = np.where(ordered & _SIGN, ordered & ~_SIGN, ~ordered)
    values = bits.view(np.float32).copy()
    index = (_LOW - (keys & _LOW)).astype(np.int64)
    empty = keys == EMPTY
    values[empty] = np.nan
    index[empty] = -1
    return values, index


def _top(keys: np.ndarray, k: int) -> np.ndarray:
    """The k largest keys of each column, largest first ([k, n]; padded with EMPTY)."""
    if keys.shape[0] < k:
        pad = np.full((k - keys.shape[0], keys.shape[1]), EMPTY, dtype=np.uint64)
        keys = np.concatenate([keys, pad])
    elif keys.shape[0] > k:
        keys = np.partition(keys, keys.shape[0] - k, axis=0)[-k:]
    return np.sort(keys, axis=0)[::-1]


@dataclass(frozen=True)
class TopK:
    """The top-k state of one layer: [k, neuron] keys, largest first per neuron."""

    keys: np.ndarray

    @classmethod
    def empty(cls, k: int, n_neurons: int) -> "TopK":
        if k < 1:
            raise ValueError(f"top-k: k must be at least 1, not {k}")
        return cls(np.full((k, n_neurons), EMPTY, dtype=np.uint64))

    @property
    def k(self) -> int:
        return int(self.keys.shape[0])

    def add(self, block: np.ndarray, start: int) -> "TopK":
        """This state with the [b, neuron] responses of inputs start..start+b merged in.

        Only the neurons where some response reaches the current k-th largest value can change
        (keys order by value first), so only their columns are keyed and merged: once the state
        is full, a block of b inputs past the first few hundred touches a minority of neurons
        (a new input enters a neuron's top k with chance k / inputs so far)."""
        block = np.asarray(block)
        threshold = decode(self.keys[-1])[0]  # [neuron] the k-th largest value (NaN: a free slot)
        with np.errstate(invalid="ignore"):
            reach = (block >= threshold).any(axis=0) | np.isnan(threshold)
        cols = np.flatnonzero(reach)
        if cols.size == 0:
            return self
        keys = encode(block[:, cols] if cols.size < reach.size else block, np.arange(start, start + block.shape[0]))
        if cols.size == reach.size:
            return TopK(_top(np.concatenate([self.keys, keys]), self.k))
        out = self.keys.copy()
        out[:, cols] = _top(np.concatenate([self.keys[:, cols], keys]), self.k)
        return TopK(out)

    def merge(self, other: "TopK") -> "TopK":
        """The top k of both states' inputs (disjoint input sets): equal to one pass over all."""
        if other.keys.shape[1] != self.keys.shape[1]:
            raise ValueError(f"top-k merge: {self.keys.shape[1]} vs {other.keys.shape[1]} neurons")
        return TopK(_top(np.concatenate([self.keys, other.keys]), max(self.k, other.k)))

    def values(self) -> np.ndarray:
        """[k, neuron] float32 responses, rank 0 first; NaN where fewer than k inputs had one."""
        return decode(self.keys)[0]

    def index(self) -> np.ndarray:
        """[k, neuron] int64 input indices, rank 0 first; -1 where fewer than k inputs had one."""
        return decode(self.keys)[1]
