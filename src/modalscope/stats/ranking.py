"""Ranks of many rows at once, for the cross-modal statistic (stats/neuron/xmodal.py): average
ranks with ties, ranks within groups of inputs (pairs of the same k) and the correlations of
centred ranks.

Why its own module: the cross-modal statistic is the ranking (most of its cost, and most of
its code: radix keys for float16 values, one sort per row block, tied runs) plus the null and
the bootstrap (stats/xmodal_resampling.py); each reads on its own. Nothing here knows about
neurons or studies: rows are whatever is ranked, columns the inputs.
"""

from __future__ import annotations

import numpy as np


def centre_within(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """values [c, n] (rows: neurons, columns: inputs) minus each row's mean within each group of
    inputs; a new float64 array. Cost c·n (a gather, a sum per group, a scatter)."""
    order = np.argsort(group, kind="stable")
    counts = np.bincount(group, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ordered = np.asarray(values, dtype=np.float64)[:, order]
    present = counts > 0
    means = np.add.reduceat(ordered, starts[present], axis=1) / counts[present]
    ordered -= np.repeat(means, counts[present], axis=1)
    out = np.empty_like(ordered)
    out[:, order] = ordered
    return out


def ranks_within(xt: np.ndarray, group: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """([c, n] each row's average ranks within each group of inputs, centred in the group, in
    input order; [c, groups] S_g, each row's sum of squared centred ranks in group g, exact as
    `ranked` makes it). A group of one input gives 0. Uses `ranked` group by group."""
    c, n = xt.shape
    out = np.zeros((c, n))
    factor = np.zeros((c, n_groups))
    for g in range(n_groups):
        members = np.flatnonzero(group == g)
        if members.size < 2:
            continue
        order, twice, squares = ranked(np.ascontiguousarray(xt[:, members]))
        block = np.empty((c, members.size))
        block.ravel()[order] = twice * 0.5
        out[:, members] = block
        factor[:, g] = squares
    return out, factor


def within_k_r(x: np.ndarray, y: np.ndarray, group: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(r [c], r rescaled to the permutation variance 1 / (n - g) [c], centred ranks of x and of
    y [c, n]) of rows x, y [c, n] within groups: r = sum over groups of the products of
    within-group centred ranks over the square root of the product of their sums of squares (a
    pooled, stratified Spearman r). Under random re-pairing within groups its variance is
    V = sum_g Sx_g Sy_g / (n_g - 1) / (Sx Sy); `r / sqrt(V (n - g))` has the variance a
    Spearman r of n - g + 1 tie-free pairs has, so the t approximation reads it with n - g - 1 df."""
    ex, fx = ranks_within(x, group, n_groups)
    ey, fy = ranks_within(y, group, n_groups)
    size = np.bincount(group, minlength=n_groups).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        weight = np.where(size > 1, 1.0 / np.maximum(size - 1, 1), 0.0)
        sx, sy = fx.sum(axis=1), fy.sum(axis=1)
        variance = (fx * fy) @ weight / (sx * sy)
        r = np.where((sx > 0) & (sy > 0), np.einsum("ij,ij->i", ex, ey) / np.sqrt(sx * sy), np.nan)
        scaled = np.clip(r / np.sqrt(variance * (len(group) - n_groups)), -1.0, 1.0)
    return r, scaled, ex, ey


def correlation(ex: np.ndarray, ey: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of centred ex, ey [c, n]; NaN where either row is 0."""
    sxx, syy = np.einsum("ij,ij->i", ex, ex), np.einsum("ij,ij->i", ey, ey)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((sxx > 0) & (syy > 0), np.einsum("ij,ij->i", ex, ey) / np.sqrt(sxx * syy), np.nan)


def _keys16(xt: np.ndarray) -> np.ndarray | None:
    """Order-preserving uint16 keys of values a float16 holds exactly (all a float16 store
    gives back), so that numpy's stable sort is a radix sort (3x faster than sorting the
    floats); equal values, 0 and -0 too, get equal keys. None when some value is no float16
    (a float32 store) or NaN."""
    if xt.dtype != np.float16:
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            half = xt.astype(np.float16)
        if xt.dtype != np.float32 or not np.array_equal(half, xt):
            return None
        xt = half
    bits = xt.view(np.uint16)
    magnitude = bits & np.uint16(0x7FFF)
    if (magnitude > 0x7C00).any():  # a NaN: the float sort puts it last, untied, as before
        return None
    negative = bits >> np.uint16(15)
    return np.uint16(0x8000) + magnitude - np.uint16(2) * negative * magnitude  # 0x8000 ± |x|


def _work(work: dict | None, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised array for a temporary, reused from `work` (one dict per caller) while its
    shape holds: the parts of a layer are ranked one after another, and a fresh [c, n] array
    each time costs its page faults (as much as the arithmetic that fills it)."""
    if work is None:
        return np.empty(shape, dtype)
    have = work.get(name)
    if have is None or have.shape != shape or have.dtype != dtype:
        have = work[name] = np.empty(shape, dtype)
    return have


def _sorted_rows(xt: np.ndarray, work: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(flat index into xt of each row's sorted order [c, n], each row of xt [c, n] in that
    order): ties adjacent, in any order among them. Flat indices: one gather and one scatter
    with them cost a fifth of take_along_axis and put_along_axis."""
    c, n = xt.shape
    keys = _keys16(xt)
    if keys is None:
        order = np.argsort(xt, axis=1)
        order += (n * np.arange(c))[:, None]
        return order, xt.ravel()[order]
    # Each key with its position in the low bits: one sort of the packed integers (numpy's
    # vectorised sort of 32-bit integers, twice as fast as the radix argsort of the keys) gives
    # the order and the sorted keys at once, ties in position order (a stable sort's).
    wide, shift = (np.uint32, 16) if n <= 1 << 16 else (np.uint64, 32)
    packed = _work(work, "packed", (c, n), wide)
    np.left_shift(keys, wide(shift), out=packed, dtype=wide)
    packed |= np.arange(n, dtype=wide)
    packed.sort(axis=1)
    ordered = _work(work, "ordered", (c, n), np.uint16)
    np.right_shift(packed, wide(shift), out=ordered, casting="unsafe")  # < 2^16: the keys
    packed &= wide((1 << shift) - 1)
    order = _work(work, "order", (c, n), np.int64)
    np.add(packed, (n * np.arange(c, dtype=np.int64))[:, None], out=order)
    return order, ordered


def _tied_runs(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat index of the first value, length) of each run of 2 or more equal values in the
    sorted rows `ordered` [c, n]; a run never crosses rows."""
    c, n = ordered.shape
    repeat = np.zeros((c, n), bool)  # equals the value before it in its row
    np.equal(ordered[:, 1:], ordered[:, :-1], out=repeat[:, 1:])
    repeat = repeat.ravel()
    followed = np.zeros_like(repeat)  # the value after it (in its row) equals it
    followed[:-1] = repeat[1:]
    first = np.flatnonzero(followed & ~repeat)
    return first, np.flatnonzero(repeat & ~followed) - first + 1


def ranked(xt: np.ndarray, work: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat sorted order [c, n] (`_sorted_rows`), twice the centred average rank [c, n] in sorted order, sum of squared
    centred ranks [c]) of each row of xt [c, n].

    Why it is exact and cheap: a value's average rank minus the mean rank (n + 1) / 2 is
    (first + last - (n - 1)) / 2 over the sorted positions of its run of ties, an integer over
    2, so every rank and centred rank is exact in float64; a tie-free position j gives 2j - n + 1,
    so only tied runs need work. The sum of squares is (n^3 - n - sum over runs of t^3 - t) / 12
    (t the run's length), exact too (a multiple of 1/4): the same numbers the direct sums give."""
    c, n = xt.shape
    order, ordered = _sorted_rows(xt, work)
    twice = _work(work, "twice", (c, n), np.float64)
    twice[:] = 2.0 * np.arange(n) - (n - 1)
    first, length = _tied_runs(ordered)
    if first.size:
        row = first // n
        members = np.repeat(first - (np.cumsum(length) - length), length) + np.arange(length.sum())
        twice.ravel()[members] = np.repeat(2.0 * (first - row * n) + length - n, length)
        ties = np.bincount(row, weights=(length**3 - length).astype(np.float64), minlength=c)
    else:
        ties = np.zeros(c)
    return order, twice, (float(n**3 - n) - ties) / 12.0


def standardised_ranks(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([c, n] the average ranks of each row of xt [c, n], centred and scaled to unit
    root-mean-square (ddof 0), float64, in input order; a constant row is all 0), [c] whether
    the row is not constant. Bit for bit `_standardised(average_ranks(x))`: the mean of the
    ranks is exactly (n + 1) / 2, the sum of squares is exact (`ranked`), and
    (2 d) / (2 s) rounds as d / s."""
    c, n = xt.shape
    order, twice, squares = ranked(xt)
    scale = np.sqrt(squares / n)
    varies = scale > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        twice /= (2.0 * scale)[:, None]
    twice[~varies] = 0.0
    out = np.empty((c, n))
    out.ravel()[order] = twice
    return out, varies


def twice_centred_ranks(xt: np.ndarray, work: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """([c, n] twice each row's centred average ranks, in input order: whole numbers, exact in
    float64; [c] each row's sum of squared centred ranks, exact, `ranked`'s). Spearman's r of
    two rows is then sum(a b) / (4 sqrt(Sa Sb)): no pass spent scaling either row first."""
    order, twice, squares = ranked(xt, work)
    out = _work(work, "ranks", twice.shape, np.float64)  # (with `work`: valid until the next call)
    out.ravel()[order] = twice
    return out, squares


def pearson_rows(a: np.ndarray, b: np.ndarray, work: dict | None = None) -> np.ndarray:
    """[c] Pearson r of each row pair of a, b [c, n] (any float dtype; centred in float64);
    NaN where either row is constant."""
    wide_a, wide_b = _work(work, "a", a.shape, np.float64), _work(work, "b", b.shape, np.float64)
    np.copyto(wide_a, a)
    np.copyto(wide_b, b)
    a, b = wide_a, wide_b
    a -= a.mean(axis=1, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    return correlation(a, b)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n down each column of x [n, c], ties given their average rank
    (as scipy.stats.rankdata(x, axis=0)), float64."""
    n, c = x.shape
    order, twice, _ = ranked(np.ascontiguousarray(x.T))
    ranks = np.empty((c, n))
    ranks.ravel()[order] = twice * 0.5 + (n + 1) / 2.0
    return ranks.T


def _standardised(values: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to unit root-mean-square (ddof 0); a constant column is all 0.
    A new float64 array, worked on in place (the same operations, fewer temporaries)."""
    values = np.array(values, dtype=np.float64)
    values -= values.mean(axis=0)
    scale = np.sqrt(np.square(values).mean(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        values /= scale
    values[:, ~(scale > 0)] = 0.0
    return values


def exact_half(values: np.ndarray) -> np.ndarray:
    """float32 values that are finite float16 numbers, as float16, by moving bits: scaled by
    2^-112 a float16 number's float32 exponent field is its float16 one (subnormals included)
    and its 10 mantissa bits the top ones, so bits 13-27 are its float16 magnitude; 40% less
    time than numpy's rounding conversion, which has nothing to round here."""
    scaled = np.multiply(values, np.float32(2.0**-112), dtype=np.float32)
    bits = scaled.view(np.uint32)
    out = (bits >> np.uint32(13)).astype(np.uint16)
    out &= np.uint16(0x7FFF)
    out |= (bits >> np.uint32(16)).astype(np.uint16) & np.uint16(0x8000)  # the sign
    return out.view(np.float16)


def compact(values: np.ndarray, half_known: bool = False, finite: bool = False) -> np.ndarray:
    """The values as float16 when that holds each exactly (a float16 store's: half the memory,
    and their bits are the ranks' radix keys), else as float32. `half_known`: the caller knows
    every value is a float16 number (Slab.half), so none is checked; and with `finite` (no NaN:
    Slab.complete) float32 ones are converted by `exact_half`."""
    values = np.asarray(values)
    if values.dtype == np.float16:
        return values
    if half_known and finite and values.dtype == np.float32:
        return exact_half(values)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        half = values.astype(np.float16)
    if half_known or (half == values).all() or np.array_equal(half, values, equal_nan=True):  # NaN: a missing input
        return half
    return values.astype(np.float32)
