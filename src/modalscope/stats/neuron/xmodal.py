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
[neurons, pairs] of both conditions until `columns()` (one array each, filled slab by slab, so
that a part of the neurons is a block of rows), as float16 when that holds every value
exactly (a float16 store, the default: 2 x 2 bytes per pair and neuron, 0.22 GB at 5,000 x
11,008), else as float32 (a float32 store: twice that); nothing is lost either way.
`columns()` then ranks a block of neurons at a time, temporaries near blocks.per_neuron_elements().

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

from collections.abc import Mapping

import numpy as np
from scipy import stats as sps

from modalscope.stats import blocks
from modalscope.stats.protocol import Accumulator, Context, Slab
from modalscope.stats.ranking import (  # noqa: F401  (_keys16, average_ranks, standardised_ranks: tests read them here)
    _keys16,
    _work,
    average_ranks,
    centre_within,
    compact,
    correlation,
    exact_half,
    pearson_rows,
    ranked,
    standardised_ranks,
    twice_centred_ranks,
    within_k_r,
)
from modalscope.stats.xmodal_resampling import (  # noqa: F401  (bootstrap_r, pairings: tests read them here)
    BOOT_NEURONS,
    _product,
    block_draws,
    block_sums,
    boot_neurons,
    bootstrap_r,
    null_abs_r,
    pairings,
    permutation_p,
    r_from_sums,
    within_pairings,
    within_permutation_p,
)

WITHIN_BLOCKS = 4  # ranking within k works group by group: 4x the neurons at once, fewer small calls
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


def fisher_ci(r: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """95% CI of Spearman's r from n pairs (n = df + 2 for a partial r):
    tanh(atanh r ± 1.96 sqrt(1.06 / (n - 3)))."""
    if n <= 3:
        return np.full(np.shape(r), np.nan), np.full(np.shape(r), np.nan)
    half = Z95 * np.sqrt(SPEARMAN_SE / (n - 3))
    z = np.arctanh(np.clip(r, -1 + 1e-15, 1 - 1e-15))
    return np.tanh(z - half), np.tanh(z + half)


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
        # [neurons, inputs] of each response, filled slab by slab (`add`): ranks read a part of
        # the neurons over all inputs, a contiguous block of rows here; one copy, never concatenated
        self.x: np.ndarray | None = None
        self.y: np.ndarray | None = None
        self.seen = np.zeros(ctx.n_inputs, bool)  # the inputs added so far
        self.complete = True  # every slab's Δ had no NaN (so neither response has one)
        self.boot: np.ndarray | None = None

    def _store(self, start: int, first: np.ndarray, second: np.ndarray) -> None:
        """Inputs start:start + len of both responses, as `compact` gave them, into [neurons,
        inputs] arrays: float16 while every value so far is one, float32 from the first that is not."""
        dtype = np.result_type(first, second)
        if self.x is None:
            self.x = np.zeros((self.width, self.n_inputs), dtype)
            self.y = np.zeros((self.width, self.n_inputs), dtype)
        elif np.result_type(self.x, dtype) != self.x.dtype:  # a float32 slab after float16 ones: exact either way
            self.x, self.y = self.x.astype(np.float32), self.y.astype(np.float32)
        stop = start + len(first)
        self.x[:, start:stop] = first.T
        self.y[:, start:stop] = second.T
        self.seen[start:stop] = True

    def add(self, slab: Slab) -> None:
        if self.active:
            self.complete = self.complete and slab.complete
            self._store(slab.start, compact(slab.values[self.first], slab.half, slab.complete),
                        compact(slab.values[self.second], slab.half, slab.complete))

    def _values(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input index [n], first [w, n], second [w, n]) in input order (neurons in rows),
        inputs not added or with a missing value left out."""
        if self.x is None:
            return np.zeros(0, np.int64), np.zeros((self.width, 0), np.float32), np.zeros((self.width, 0), np.float32)
        keep = self.seen.copy()
        if not self.complete:
            keep &= ~(np.isnan(self.x).any(axis=0) | np.isnan(self.y).any(axis=0))
        if keep.all():
            return np.arange(self.n_inputs), self.x, self.y
        return np.flatnonzero(keep), self.x[:, keep], self.y[:, keep]

    def columns(self) -> dict[str, np.ndarray]:
        if not self.active:
            self.boot = np.zeros((0, 0), np.float32)
            return {}
        rows, x, y = self._values()  # [neurons, inputs]
        width, n = x.shape
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
        step = max(1, (WITHIN_BLOCKS if within else 1) * blocks.per_neuron_elements() // n)
        boot_sums: list[np.ndarray] = []  # [blocks, 5, neurons] of the bootstrapped neurons, a part at a time
        scaled = np.full(width, np.nan)  # r rescaled to the permutation variance of n - g + 1 pairs (within k)
        work: tuple[dict, dict] = ({}, {})  # temporaries reused part to part (`_work`), one set per response
        for start in range(0, width, step):
            part = slice(start, min(start + step, width))
            local = subset[(subset >= part.start) & (subset < part.stop)] - part.start  # bootstrapped here
            if within:  # ranks within k: r is the stratified rank correlation given k
                r[part], scaled[part], rx, ry = within_k_r(x[part], y[part], group, n_groups)
                if local.size and len(draws):
                    sums, counts = block_sums(rx[local].T, ry[local].T, rows, draws.shape[1], self.n_inputs)
                    boot_sums.append(sums)
                if perms is not None:
                    out[PERM_COLUMN][part] = within_permutation_p(rx, ry, r[part], perms)
                sx = centre_within(x[part], group, n_groups)
                pearson[part] = np.where(np.isfinite(r[part]), correlation(sx, centre_within(y[part], group, n_groups)),
                                         np.nan)
                continue
            xt, yt = x[part], y[part]  # [neurons, pairs], contiguous rows
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
        return {"x": self.x, "y": self.y, "seen": self.seen}

    def merge(self, other: "CrossModal") -> None:
        """Shards hold disjoint inputs: each one's inputs are copied into place."""
        if other.x is not None:
            for start, stop in _runs(other.seen):
                self._store(start, other.x[:, start:stop].T, other.y[:, start:stop].T)
        self.complete = self.complete and other.complete


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in `mask`."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


STATISTIC = CrossModal
