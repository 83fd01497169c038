"""Cross-modal neurons: does a neuron's text response agree with its image response on *which*
pairs excite it?

Δ = text - image says which modality drives a neuron harder on average; it cannot say whether
the two responses rank the pairs alike, which is what a shared ("mental imagery") code would
do. Per neuron, over pairs, between the two contrasted conditions' values (settings.contrast:
text and image by default), *within pairs of equal k* (the pair's k, matched_max's token count:
`Context.pair_k`):

- `xmodal_r`: Spearman's rank correlation within k (stratified): each response is ranked
  among the pairs of the same k (ties get average ranks), the ranks centred in their group,
  and r = sum of the products over the root of the product of the sums of squares, pooled over
  the groups (`within_k_r`). k enters both responses of matched_max (the caption's max over k
  tokens, the image's expected max over k of its tokens) and the caption's max, quantile and
  fraction through their sample size, so a plain r ranks pairs alike by length alone, and a
  shuffled pairing cannot see that (it moves k too). Ranking within k removes any dependence
  of either response on k, whatever its shape (a linear partial on k would leave a curved
  one; centring global ranks within k was not enough either: the groups' spreads then follow
  k in both responses, which inflates r's variance). One value of k (or k unknown): the plain
  Spearman r, bit for bit as before. With a 95% Fisher-z CI (`xmodal_ci_low`,
  `xmodal_ci_high`; standard error sqrt(1.06 / (df - 1)), Fieller, Hartley & Pearson 1957);
- `xmodal_p`: the analytic two-sided p of r, t = r' sqrt(df / (1 - r'²)) against Student's t
  with df = n - g - 1 degrees of freedom (g the number of distinct k among the kept pairs;
  n - 2 with one k, as scipy.stats.spearmanr, and then r' = r). r' is r rescaled so that its
  exact variance under re-pairing within k, sum_g Sx_g Sy_g / (n_g - 1) / (Sx Sy) (S the
  sums of squares of the centred ranks), is 1 / (n - g), a Spearman r's of n - g + 1 pairs:
  the first two permutation moments are exact with or without ties (average ranks), the
  shape is the t approximation's. Unlike a permutation p it has no floor, so BH over a 7B
  site (352,256 neurons) can call a handful of strong neurons; `xmodal_q` its FDR over the
  site's neurons (analysis.py, as q_value);
- `xmodal_pearson`: Pearson's r of the raw values, centred within k the same way, beside it;
- `xmodal_p_perm` (only with settings.xmodal_perm): the permutation p of r under random
  re-pairing within k, (1 + #|r_perm| >= |r|) / (P + 1) with P = settings.n_perm, an
  opt-in check of `xmodal_p`.

Contrasts whose two streams read the same modality's tokens (text - text_base, the Δ_base
contrast; text - image_text_caption; image - image_text_image) have no cross-modal meaning
(text and text_base are identical on a model whose language model was not fine-tuned, so r =
1 for every neuron): this statistic gives no columns there (`cross_modal_contrast`).

The permutation check with one value of k uses ONE set of P permuted r's for every neuron,
layer and reduction. Why that is exact:
for a neuron without ties both responses' ranks are permutations of 1..n, and re-pairing them at
random gives the same distribution of r as re-pairing the ranks 1..n with themselves; so the P
pairings of the study's `xmodal_null` stream (`pairings`), applied once to 1..n, give every
tie-free neuron a Monte Carlo permutation p with P random pairings (for neuron j they are the
pairings conjugated by its two rank orders: other draws than a loop over neuron j would use,
but the same law). Cost: P·n once per number of kept pairs (cached), instead of P·n·w per layer
and reduction. Ties (a float16 store rounds values, so they happen): a tied neuron's
permutation null still has mean 0 and variance exactly 1/(n-1), but its shape differs from the
tie-free one, more so the more of its values are tied (a neuron that is 0 on most pairs has a
skewed, lumpy null); the shared null is then an approximation, close for the light ties of
rounding (tests/stats/test_xmodal.py checks it against a per-neuron permutation). With
several values of k the re-pairings keep k (`within_pairings`) and each neuron's own
centred ranks are re-paired: P·n per neuron, which is why it is opt-in. Resolution: p >=
1/(P+1), so BH over m neurons could call a neuron on it only when at least m / (alpha (P+1))
of them reach that floor: why q reads the analytic p.

A neuron can prefer text (Δ > 0) and still be cross-modal. Inputs with a missing value (an empty
input gives NaN for every neuron) are left out; a neuron whose response is constant gets NaN.

Memory: ranks need every pair, so unlike the streaming statistics this holds the layer's
[pairs, neurons] of both conditions until `columns()`, as float16 when that holds every value
exactly (a float16 store, the default: 2 x 2 bytes per pair and neuron, 0.22 GB at 5,000 x
11,008), else as float32 (a float32 store: twice that); nothing is lost either way.
`columns()` then ranks a block of neurons at a time, temporaries near BLOCK_ELEMENTS.

How the ranks are made (cost: they were half the analysis): a float16 value's bits, its sign
folded in, are an order-preserving 16-bit key; each key with its position in the low bits is
one 32-bit integer, and numpy's vectorised sort of those gives each row's order and sorted keys
at once, ties in position order (other values: the float argsort). Average ranks of ties are
then exact in float64 from run boundaries alone (`ranked`): twice a centred rank is a whole
number, and the sum of squares of the centred ranks is (n^3 - n - sum of t^3 - t over the runs
of ties) / 12, exact too. So Spearman's r is the sum of products of whole numbers (exact in
float64 while n^3 < 2^51), divided once (`twice_centred_ranks`); the temporaries of one part
of the layer are reused by the next (`_work`). A float16 store's values reach this statistic
as float16 (analysis.read_values), kept as they are.

The bootstrap over inputs of the per-layer share (stats/xmodal_layers.py) needs r on
resampled inputs, with the ranks fixed. Resampling single inputs costs B·n per neuron (5·B·n·m
multiply-adds a layer: hours at 7B, minutes in the memory test), so the inputs are cut into
BOOT_BLOCKS contiguous blocks of the shuffled input order (random groups; one input each when
there are at most BOOT_BLOCKS, i.e. the plain input bootstrap), the five sums Pearson's r needs
are taken per block once, and a replicate draws BOOT_BLOCKS blocks with replacement (stream
`bootstrap`; the same draws in every layer): B·K per neuron. Resampling blocks of iid inputs
gives the same variance of the sums as resampling inputs. It runs on a fixed, evenly spaced
subset of at most BOOT_NEURONS neurons per layer (neuron order in a layer carries no meaning),
so what is kept is [B, m] float32 a layer (`layer_outputs()`); their block sums are gathered
over the layer's parts and weighted in one product at the end.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
from scipy import stats as sps

from modalscope.seeds import generator
from modalscope.stats.controls import TIE as _TIE  # a permuted r equal to the observed one counts as extreme
from modalscope.stats.protocol import Accumulator, Context, Slab

BLOCK_ELEMENTS = 1 << 18  # pairs x neurons ranked at once (and pairings x pairs drawn at once), about
BOOT_NEURONS = 256  # neurons per layer whose r is bootstrapped over inputs
WITHIN_BLOCKS = 4  # ranking within k works group by group: 4x the neurons at once, fewer small calls
BOOT_BLOCKS = 100  # the bootstrap resamples this many blocks of inputs (each input, when fewer)
SMALL_PRODUCT = 1 << 23  # multiply-adds under which a product skips BLAS (`_product`)
SPEARMAN_SE = 1.06  # Fieller, Hartley & Pearson (1957): var(atanh r_s) ~ 1.06 / (n - 3)
Z95 = 1.959963984540054
COLUMNS = ("xmodal_r", "xmodal_p", "xmodal_ci_low", "xmodal_ci_high", "xmodal_pearson")
PERM_COLUMN = "xmodal_p_perm"
# Which modality's tokens a stream reads: a contrast of two streams of one modality is not cross-modal.
MODALITY = {"text": "text", "text_base": "text", "image_text_caption": "text",
            "image": "image", "image_text_image": "image", "image_text": "both"}


def cross_modal_contrast(contrast: tuple[str, str]) -> bool:
    """Whether r between the contrast's two streams says anything cross-modal: not when both
    read the same modality's tokens (text - text_base, text - image_text_caption, ...)."""
    first, second = (MODALITY.get(s, s) for s in contrast)
    return first != second or first == "both"


def k_groups(pair_k: np.ndarray | None, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """([n] the group (distinct k) of each kept input, number of groups); one group without k."""
    if pair_k is None:
        return np.zeros(len(rows), np.int64), 1
    values, group = np.unique(np.asarray(pair_k)[rows], return_inverse=True)
    return group.astype(np.int64), len(values)


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


def analytic_p(r: np.ndarray, df: float) -> np.ndarray:
    """Two-sided p of a (partial) rank correlation: t = r sqrt(df / (1 - r²)) against Student's
    t with df degrees of freedom (scipy.stats.spearmanr's, df = n - 2 without a covariate);
    0 at |r| = 1, NaN where r is."""
    r = np.asarray(r, dtype=np.float64)
    if df < 1:
        return np.full(r.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = r * np.sqrt(df / np.maximum((1.0 - r) * (1.0 + r), 0.0))
        return np.where(np.isfinite(r), 2.0 * sps.t.sf(np.abs(t), df), np.nan)


def within_pairings(group: np.ndarray, n_perm: int, seed: int) -> np.ndarray:
    """[n_perm, n] random re-pairings that keep each input's group (k): row j re-pairs input i's
    first response with input perm[j, i]'s second, perm[j, i] of the same k (`xmodal_null` stream)."""
    rng = generator(seed, "xmodal_null")
    base = np.argsort(group, kind="stable")
    out = np.empty((n_perm, len(group)), np.int64)
    for j in range(n_perm):
        shuffled = np.lexsort((rng.random(len(group)), group[base]))
        out[j, base] = base[shuffled]
    return out


def within_permutation_p(ex: np.ndarray, ey: np.ndarray, r: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """[c] (1 + #{j: |r_j| >= |r|}) / (P + 1), r_j each neuron's r with ey re-paired by perms[j]."""
    norm = np.sqrt(np.einsum("ij,ij->i", ex, ex) * np.einsum("ij,ij->i", ey, ey))
    bound = np.abs(r) * (1 - _TIE)
    count = np.zeros(len(r))
    with np.errstate(invalid="ignore", divide="ignore"):
        for perm in perms:
            count += np.abs(np.einsum("ij,ij->i", ex, ey[:, perm]) / norm) >= bound
    return np.where(np.isfinite(r), (1.0 + count) / (len(perms) + 1), np.nan)


def pairings(n: int, n_perm: int, seed: int) -> np.ndarray:
    """[n_perm, n] the random pairings of the null: row k re-pairs pair i's first response with
    pair perm[k, i]'s second. One `rng.permutation(n)` per row of the `xmodal_null` stream."""
    rng = generator(seed, "xmodal_null")
    return np.stack([rng.permutation(n) for _ in range(n_perm)]) if n_perm else np.zeros((0, n), int)


@functools.lru_cache(maxsize=8)
def null_abs_r(n: int, n_perm: int, seed: int) -> np.ndarray:
    """Sorted |r| of the P pairings applied to the tie-free ranks 1..n (the same draws as
    `pairings`, made a block at a time so no [P, n] matrix is held)."""
    rng = generator(seed, "xmodal_null")
    centred = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    out = np.empty(n_perm)
    step = max(1, BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n_perm, step):
        block = np.stack([rng.permutation(n) for _ in range(min(step, n_perm - start))])
        out[start : start + len(block)] = centred[block] @ centred / (centred @ centred)
    return np.sort(np.abs(out))


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


def fisher_ci(r: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """95% CI of Spearman's r from n pairs (n = df + 2 for a partial r):
    tanh(atanh r ± 1.96 sqrt(1.06 / (n - 3)))."""
    if n <= 3:
        return np.full(np.shape(r), np.nan), np.full(np.shape(r), np.nan)
    half = Z95 * np.sqrt(SPEARMAN_SE / (n - 3))
    z = np.arctanh(np.clip(r, -1 + 1e-15, 1 - 1e-15))
    return np.tanh(z - half), np.tanh(z + half)


def permutation_p(r: np.ndarray, null: np.ndarray) -> np.ndarray:
    """(1 + #{k: |null_k| >= |r|}) / (P + 1) against the sorted |r| of the shared null."""
    if null.size == 0:
        return np.full(r.shape, np.nan)
    bound = np.abs(r) * (1 - _TIE)
    count = null.size - np.searchsorted(null, np.where(np.isfinite(bound), bound, 0.0), side="left")
    return np.where(np.isfinite(r), (1.0 + count) / (null.size + 1), np.nan)


def boot_neurons(width: int) -> np.ndarray:
    """The evenly spaced neurons whose r is bootstrapped (all of them in a narrow layer)."""
    return np.unique(np.linspace(0, width - 1, min(width, BOOT_NEURONS)).round().astype(np.int64))


def input_blocks(n_inputs: int) -> np.ndarray:
    """[n_inputs] the bootstrap block of each input: BOOT_BLOCKS contiguous blocks of the
    (shuffled) input order, one input each when there are at most BOOT_BLOCKS inputs."""
    k = min(n_inputs, BOOT_BLOCKS)
    return np.arange(n_inputs) * k // max(n_inputs, 1)


def block_draws(n_inputs: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, blocks] how often each replicate draws each block (K draws with replacement
    of the K blocks, from the `bootstrap` stream), float64."""
    k = min(n_inputs, BOOT_BLOCKS)
    draw = generator(seed, "bootstrap").integers(0, k, size=(n_boot, k)) + k * np.arange(n_boot)[:, None]
    return np.bincount(draw.ravel(), minlength=n_boot * k).reshape(n_boot, k).astype(np.float64)


def block_sums(rx: np.ndarray, ry: np.ndarray, rows: np.ndarray, n_blocks: int,
               n_inputs: int) -> tuple[np.ndarray, np.ndarray]:
    """([blocks, 5, c] the sums of rx, ry, rx², ry², rx·ry over each bootstrap block's inputs,
    [blocks] its number of kept inputs), for fixed ranks rx, ry [n, c] of inputs `rows`, in order."""
    c = rx.shape[1]
    block = input_blocks(n_inputs)[rows]  # ascending: rows are in input order
    counts = np.bincount(block, minlength=n_blocks).astype(np.float64)  # kept inputs per block
    present = counts > 0
    sums = np.zeros((n_blocks, 5 * c))
    values = np.concatenate([rx, ry, rx * rx, ry * ry, rx * ry], axis=1)
    sums[present] = np.add.reduceat(values, np.searchsorted(block, np.flatnonzero(present)), axis=0)
    return sums.reshape(n_blocks, 5, c), counts


def r_from_sums(draws: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[n_boot, c] each replicate's Pearson r from the block sums [blocks, 5, c] (`block_sums`),
    weighted by its draw counts [n_boot, blocks]: one product for every neuron given."""
    c = sums.shape[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        moments = _product(draws, sums.reshape(len(sums), 5 * c)) / _product(draws, counts[:, None])
        mx, my, xx, yy, xy = (moments[:, k * c : (k + 1) * c] for k in range(5))
        cov, vx, vy = xy - mx * my, xx - mx**2, yy - my**2
        return np.where((vx > 0) & (vy > 0), cov / np.sqrt(vx * vy), np.nan)


def bootstrap_r(rx: np.ndarray, ry: np.ndarray, rows: np.ndarray, draws: np.ndarray, n_inputs: int) -> np.ndarray:
    """[n_boot, c] Pearson r of fixed ranks rx, ry [n, c] (of inputs `rows`, in order) over
    resampled blocks of inputs (`block_draws`): the five sums r needs, per block, weighted by
    each replicate's draw counts, so a replicate costs blocks x c, not inputs x c."""
    return r_from_sums(draws, *block_sums(rx, ry, rows, draws.shape[1], n_inputs))


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b; a small one in numpy's own loop, where waking BLAS's threads costs more than the
    product (7 ms against 0.1 ms for [200, 16] @ [16, 900] on a busy 2-core machine)."""
    if a.shape[0] * a.shape[1] * b.shape[1] < SMALL_PRODUCT:
        return np.einsum("bi,ij->bj", a, b)
    return a @ b


class CrossModal:
    NAME = "xmodal"
    REQUIRES: tuple[str, ...] = ()

    @staticmethod
    def applies(stat: str) -> bool:
        return True

    def __init__(self, ctx: Context, shared: Mapping[str, Accumulator]) -> None:
        self.first, self.second = ctx.settings.contrast
        self.settings, self.n_inputs, self.width = ctx.settings, ctx.n_inputs, ctx.width
        self.pair_k = ctx.pair_k
        self.active = cross_modal_contrast(ctx.settings.contrast)  # else: no columns
        self.blocks: list[tuple[int, np.ndarray, np.ndarray]] = []
        self.complete = True  # every slab's Δ had no NaN (so neither response has one)
        self.boot: np.ndarray | None = None

    def add(self, slab: Slab) -> None:
        if self.active:
            self.complete = self.complete and slab.complete
            self.blocks.append((slab.start, compact(slab.values[self.first], slab.half, slab.complete),
                                compact(slab.values[self.second], slab.half, slab.complete)))

    def _values(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input index [n], first [n, w], second [n, w]) in input order, inputs with a
        missing value left out."""
        ordered = sorted(self.blocks, key=lambda block: block[0])
        rows = np.concatenate([np.arange(start, start + len(x)) for start, x, _ in ordered])
        x = np.concatenate([x for _, x, _ in ordered])
        y = np.concatenate([y for _, _, y in ordered])
        if self.complete:
            return rows, x, y
        keep = ~(np.isnan(x).any(axis=1) | np.isnan(y).any(axis=1))
        if keep.all():
            return rows, x, y
        return rows[keep], x[keep], y[keep]

    def columns(self) -> dict[str, np.ndarray]:
        if not self.active:
            self.boot = np.zeros((0, 0), np.float32)
            return {}
        rows, x, y = self._values()
        n, width = x.shape
        names = COLUMNS + ((PERM_COLUMN,) if self.settings.xmodal_perm else ())
        out = {name: np.full(width, np.nan) for name in names}
        subset = boot_neurons(width)
        self.boot = np.full((self.settings.n_boot, subset.size), np.nan, dtype=np.float32)
        group, n_groups = k_groups(self.pair_k, rows)
        df = n - n_groups - 1  # residual degrees of freedom of r within k
        if n < 4 or df < 2:
            return out
        r, pearson = out["xmodal_r"], out["xmodal_pearson"]
        within = n_groups > 1
        perms = None
        if within and self.settings.xmodal_perm:
            perms = within_pairings(group, self.settings.n_perm, self.settings.seed)
        draws = block_draws(self.n_inputs, self.settings.n_boot, self.settings.seed)
        step = max(1, (WITHIN_BLOCKS if within else 1) * BLOCK_ELEMENTS // n)
        boot_sums: list[np.ndarray] = []  # [blocks, 5, neurons] of the bootstrapped neurons, a part at a time
        scaled = np.full(width, np.nan)  # r rescaled to the permutation variance of n - g + 1 pairs (within k)
        work: tuple[dict, dict] = ({}, {})  # temporaries reused part to part (`_work`), one set per response
        for start in range(0, width, step):
            part = slice(start, min(start + step, width))
            local = subset[(subset >= part.start) & (subset < part.stop)] - part.start  # bootstrapped here
            if within:  # ranks within k: r is the stratified rank correlation given k
                r[part], scaled[part], rx, ry = within_k_r(np.ascontiguousarray(x[:, part].T),
                                                           np.ascontiguousarray(y[:, part].T), group, n_groups)
                if local.size and len(draws):
                    sums, counts = block_sums(rx[local].T, ry[local].T, rows, draws.shape[1], self.n_inputs)
                    boot_sums.append(sums)
                if perms is not None:
                    out[PERM_COLUMN][part] = within_permutation_p(rx, ry, r[part], perms)
                sx = centre_within(np.asarray(x[:, part], dtype=np.float64).T, group, n_groups)
                pearson[part] = np.where(np.isfinite(r[part]), correlation(sx, centre_within(
                    np.asarray(y[:, part], dtype=np.float64).T, group, n_groups)), np.nan)
                continue
            xt, yt = np.ascontiguousarray(x[:, part].T), np.ascontiguousarray(y[:, part].T)  # [neurons, pairs]
            (rx, sx), (ry, sy) = twice_centred_ranks(xt, work[0]), twice_centred_ranks(yt, work[1])
            if local.size and len(draws):  # r of fixed ranks is scale-free: twice the centred ranks do
                sums, counts = block_sums(rx[local].T, ry[local].T, rows, draws.shape[1], self.n_inputs)
                boot_sums.append(sums)
            defined = (sx > 0) & (sy > 0)  # neither response constant
            with np.errstate(invalid="ignore", divide="ignore"):
                # the products of whole numbers sum exactly: r is the exact sum, divided once
                r[part] = np.where(defined, np.einsum("ij,ij->i", rx, ry) / (4.0 * np.sqrt(sx * sy)), np.nan)
            pearson[part] = np.where(defined, pearson_rows(xt, yt, work[0]), np.nan)
        if boot_sums:  # one product for the layer's bootstrapped neurons, not one per part
            self.boot[:] = r_from_sums(draws, np.concatenate(boot_sums, axis=2), counts)
        out["xmodal_ci_low"], out["xmodal_ci_high"] = fisher_ci(r, df + 2)
        out["xmodal_p"] = analytic_p(scaled if within else r, df)
        if self.settings.xmodal_perm and not within:
            out[PERM_COLUMN] = permutation_p(r, null_abs_r(n, self.settings.n_perm, self.settings.seed))
        return out

    def layer_outputs(self) -> dict[str, np.ndarray]:
        """What the layer summary needs beyond Table 3: `boot_r` [n_boot, m] (bootstrap r of
        the neurons `boot_neurons(width)`) and those neurons' indices."""
        boot = self.boot if self.boot is not None else np.zeros((0, 0), np.float32)
        return {"boot_r": boot, "boot_neurons": boot_neurons(self.width)}

    def state_dict(self) -> dict[str, object]:
        return {"blocks": self.blocks}

    def merge(self, other: "CrossModal") -> None:
        """Shards hold disjoint inputs: their blocks are put back in input order at the end."""
        self.blocks = self.blocks + other.blocks
        self.complete = self.complete and other.complete


STATISTIC = CrossModal
