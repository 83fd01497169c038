"""Input-level controls for the layer trend and the per-neuron tests.

Why: the report's layer interval (`layers.layer_mean_ci`) is a t-interval over the layer's
neurons: it says how the neurons spread, not how sure we are of the layer mean. The units
sampled are the inputs (image-caption pairs), so uncertainty must come from resampling or
permuting inputs, keeping each input's Δ for all layers and neurons together (they share
the input, so they are correlated). This module gives:

- `input_layer_interval`: a t-interval over inputs of each input's layer mean Δ;
- `bootstrap_trend`: percentile CIs of the slope and R² of the depth trend, resampling
  inputs jointly across layers;
- a sign-flip permutation null (H0: each input's Δ is symmetric about 0, one sign per input
  for all layers and neurons): `SignFlips` (the signs: elements of a random subgroup, kept
  as a code per input and a number per permutation), `trend_null` for the trend and
  `PermutationT` for per-neuron t-tests that do not lean on normality (on the study's
  SignFlips it runs as stats/sign_group.py's `GroupPermutationT`);
- `significant_counts` per layer (massive neurons: stats/massive.py)
  (Sun et al. 2024), neurons whose few huge values can dominate layer means.

All take what a streaming caller has: an [input, layer] matrix of per-input layer means
(small), or [input, neuron] blocks of one layer a chunk of inputs at a time. `seed` is the
study's `--seed`; the sign flips and the bootstrap each draw from their own stream of it
(`seeds.generator(seed, "sign_flips")`, `seeds.generator(seed, "bootstrap")`), independent
of each other and of the shuffle of the pairs, so results are reproducible and uncoupled.

Memory: nothing here holds a [permutation or replicate, input] float64 matrix. The signs
are kept as numbers (4·(P + I) bytes) and widened a block of inputs at a time, and bootstrap
replicates are drawn and fitted a few rows at a time, so peak memory does not grow with
the number of inputs beyond the [input, layer] matrix itself. Blocking keeps the random
draws (the same stream of `rng.integers` calls, hence the same signs and resamples for a
seed); only the order of floating-point sums may differ, in the last bits, as it already
does between BLAS builds and thread counts.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.linalg import blas

from modalscope.seeds import generator
from modalscope.stats import blocks
from modalscope.stats.moments import RunningMoments
from modalscope.stats.one_sample import t_from_moments

BOOT_CHUNK = 256  # replicates drawn and fitted at once, at most (fewer when inputs are many)
# Relative tolerance so that a permuted statistic equal to the observed one (float64 arithmetic)
# counts as at least as extreme; its one home: stats/xmodal_resampling.py and stats/alignment.py read it.
TIE = 1e-12
FLOAT32_UNIT = 2.0**-24  # float32's unit roundoff: the sign-flip test's products are float32 (_add_product)


def _as_matrix(input_layer_means: np.ndarray) -> np.ndarray:
    x = np.asarray(input_layer_means, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected [inputs, layers], got shape {x.shape}")
    return x


def _line_fit(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and R² of each row of y [B, L] on 0..L-1, skipping NaN entries."""
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    keep = np.isfinite(y)
    x = np.broadcast_to(np.arange(y.shape[1], dtype=np.float64), y.shape)
    n = keep.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xc = np.where(keep, x - np.where(keep, x, 0).sum(1, keepdims=True) / n[:, None], 0.0)
        yc = np.where(keep, y - np.where(keep, y, 0).sum(1, keepdims=True) / n[:, None], 0.0)
        sxx, syy, sxy = (xc**2).sum(1), (yc**2).sum(1), (xc * yc).sum(1)
        slope = np.where(n >= 3, sxy / sxx, np.nan)
        r2 = np.where((n >= 3) & (syy > 0), sxy**2 / (sxx * syy), np.nan)
    return slope, r2


def input_layer_interval(
    input_layer_means: np.ndarray, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean [L], low [L], high [L]): t-interval over inputs per layer, NaN inputs skipped.

    `input_layer_means` [I, L] holds per input the mean over the layer's neurons of Δ.
    """
    x = _as_matrix(input_layer_means)
    keep = np.isfinite(x)
    n = keep.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(keep, x, 0.0).sum(axis=0) / n
        sd = np.sqrt(np.where(keep, (x - mean) ** 2, 0.0).sum(axis=0) / (n - 1))
        half = sps.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(n)
    half = np.where(n >= 2, half, np.nan)
    return mean, mean - half, mean + half


def bootstrap_trend(
    input_layer_means: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Slope and R² of layer mean Δ on layer index, with percentile bootstrap CIs over inputs.

    Each replicate draws I inputs with replacement and uses the same draw for every layer.
    Replicates are vectorised a few at a time: the draw becomes a count matrix W [rows, I]
    and the layer means are W @ X / W @ 1 (NaN entries get weight 0). `rows` is at most
    BOOT_CHUNK and rows × I at most about blocks.per_neuron_elements(), so memory does not grow with I.
    The draws are one stream (row after row), whatever the block size.
    """
    x = _as_matrix(input_layer_means)
    n_inputs = x.shape[0]
    finite = np.isfinite(x).astype(np.float64)
    values = np.where(finite > 0, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope, r2 = _line_fit(values.sum(0) / finite.sum(0))
    rng = generator(seed, "bootstrap")
    rows = _block_rows(n_inputs, BOOT_CHUNK)
    slopes, r2s = np.empty(n_boot), np.empty(n_boot)
    for start in range(0, n_boot, rows):
        size = min(rows, n_boot - start)
        draw = rng.integers(0, n_inputs, size=(size, n_inputs))
        draw += n_inputs * np.arange(size)[:, None]  # row b counts into b·I .. (b+1)·I
        weights = np.bincount(draw.ravel(), minlength=size * n_inputs)
        del draw
        weights = weights.astype(np.float64).reshape(size, n_inputs)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = (weights @ values) / (weights @ finite)
        del weights
        slopes[start : start + size], r2s[start : start + size] = _line_fit(means)
    tails = [50 * (1 - level), 50 * (1 + level)]
    with warnings.catch_warnings():  # fewer than 3 layers: every slope is NaN, and so its CI
        warnings.simplefilter("ignore", RuntimeWarning)
        s_low, s_high = np.nanpercentile(slopes, tails)
        r_low, r_high = np.nanpercentile(r2s, tails)
    return {
        "slope": float(slope[0]),
        "r2": float(r2[0]),
        "slope_low": float(s_low),
        "slope_high": float(s_high),
        "r2_low": float(r_low),
        "r2_high": float(r_high),
        "n_boot": int(n_boot),
        "n_inputs": int(n_inputs),
    }


def _block_rows(n_columns: int, most: int) -> int:
    """Rows of a [rows, n_columns] temporary: at most `most`, about blocks.per_neuron_elements() in all."""
    return max(1, min(most, blocks.per_neuron_elements() // max(n_columns, 1)))


class SignFlips:
    """[P, I] ±1, one sign per permutation and input: P distinct non-identity elements of a
    random subgroup of the sign-flip group {±1}^I (stats/sign_group.py says why and how).

    Drawn from the study's sign-flip stream: first the P elements e_p, distinct non-zero k-bit
    numbers (2^k > P), then a k-bit code c_i per input; s_pi = (-1)^popcount(e_p & c_i). Kept
    as those numbers (4·(P + I) bytes). `block(start, stop)` gives the float64 signs of inputs
    start:stop, [P, stop - start]: feed it to `PermutationT.add` with the Δ rows of the same
    inputs; `sign_group.GroupPermutationT` reads the codes instead, which is the same test for
    a fraction of the cost. `trend_null` takes a SignFlips as it is.
    """

    def __init__(self, n_inputs: int, n_perm: int = 1000, seed: int = 0) -> None:
        if n_inputs < 0 or n_perm < 0:
            raise ValueError(f"need n_inputs, n_perm >= 0, got {n_inputs}, {n_perm}")
        self.n_inputs, self.n_perm = int(n_inputs), int(n_perm)
        self.k = max(1, self.n_perm.bit_length())  # 2^k - 1 >= P non-identity elements
        rng = generator(seed, "sign_flips")
        # elements first, so that they do not depend on the number of inputs
        self.elements = (1 + rng.choice((1 << self.k) - 1, size=self.n_perm, replace=False)).astype(np.uint32)
        self.codes = rng.integers(0, 1 << self.k, size=self.n_inputs).astype(np.uint32)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_perm, self.n_inputs

    def block(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """[P, stop - start] float64 ±1: the signs of inputs start:stop."""
        start, stop, _ = slice(start, stop).indices(self.n_inputs)
        stop = max(stop, start)
        parity = np.bitwise_count(self.elements[:, None] & self.codes[None, start:stop]) & np.uint8(1)
        return 1.0 - 2.0 * parity

    def blocks(self, size: int | None = None):
        """(start, stop, block) over all inputs, `size` inputs (about blocks.per_neuron_elements()) at a time."""
        size = size or _block_rows(self.n_perm, self.n_inputs)
        for start in range(0, self.n_inputs, size):
            stop = min(start + size, self.n_inputs)
            yield start, stop, self.block(start, stop)


def _perm_p(null: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Two-sided permutation p (1 + #|null| ≥ |observed|) / (P + 1) along axis 0."""
    bound = np.abs(observed) * (1 - TIE)
    count = (np.abs(null) >= bound).sum(axis=0)
    return np.where(np.isfinite(observed), (1.0 + count) / (null.shape[0] + 1), np.nan)


def trend_null(
    input_layer_means: np.ndarray, signs: np.ndarray | SignFlips, level: float = 0.95
) -> dict:
    """Sign-flip null of the layer means and of their slope on layer index.

    Returns `layer_mean` [L] (observed), `null_means` [P, L] = signs @ X / I, the per-layer
    null band `null_low`, `null_high` [L], `slope` (observed), `slope_null` [P] and the
    two-sided permutation `p_value` of the slope. NaN entries count as 0 and are left out
    of each layer's number of inputs. `signs` is a [P, I] matrix or a `SignFlips`, whose
    product is summed over blocks of inputs so that no [P, I] float64 matrix is formed.
    """
    x = _as_matrix(input_layer_means)
    if not isinstance(signs, SignFlips):
        signs = np.asarray(signs, dtype=np.float64)
    if len(signs.shape) != 2 or signs.shape[1] != x.shape[0]:
        raise ValueError(f"signs {signs.shape} do not match {x.shape[0]} inputs")
    finite = np.isfinite(x)
    values = np.where(finite, x, 0.0)
    n = finite.sum(axis=0)
    if isinstance(signs, SignFlips):  # float64 a block of inputs at a time
        total = np.zeros((signs.shape[0], x.shape[1]))
        for start, stop, block in signs.blocks():
            total += block @ values[start:stop]
    else:  # the matrix is in memory already
        total = signs @ values
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = values.sum(axis=0) / n
        null_means = total / n
    slope, _ = _line_fit(observed)
    slope_null, _ = _line_fit(null_means)
    low, high = np.percentile(null_means, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return {
        "layer_mean": observed,
        "null_means": null_means,
        "null_low": low,
        "null_high": high,
        "slope": float(slope[0]),
        "slope_null": slope_null,
        "p_value": float(_perm_p(slope_null, slope)[0]),
    }


def _add_product(total: np.ndarray, signs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """total += signs @ values, in place, the product of one block in float32 (sgemm) and
    its sum over blocks in float64.

    Why float32: for explicit sign matrices (the study's sign flips take the cheaper road of
    stats/sign_group.py) this product is P multiply-adds per input and neuron, and sgemm plus
    the float64 add takes 0.084 against dgemm's 0.128 CPU-s for a [1000, 256] @ [256, 11008]
    block here. What it costs: a block's sum of up to a few hundred ±Δ carries a relative
    rounding of ~1e-7, which `tie_tolerance` counts as ties. The running total stays float64,
    so blocks do not accumulate float32 error."""
    if values.size == 0 or total.size == 0:  # no inputs (or no neurons): nothing to add
        return total
    values32 = np.asarray(values, dtype=np.float32)
    signs32 = np.asarray(signs, dtype=np.float32)
    total += blas.sgemm(1.0, values32.T, signs32.T).T
    return total


class PermutationT:
    """Per-neuron sign-flip permutation test of the one-sample t, over chunks of inputs.

    Keeps S = Σ_i s_i Δ_i [P, N] and the running moments (n, mean, M2; Chan's update) of
    Δ [N], which are Table 3's moments too (`moments`). The observed t comes from them
    through `tests.t_from_moments`, the function Table 3 uses, so both agree and both say
    NaN for a constant Δ. Since (s_i Δ_i)² = Δ_i², a permuted sample with mean m = S / n
    has Σ(s_i Δ_i - m)² = M2 + n·(mean - m)·(mean + m), so every permuted t needs only S;
    written this way (not ΣΔ² - n·m²) the all-plus row gives back M2 exactly.
    Feed the sign columns of the same inputs as the Δ rows (e.g. `signs[:, start:stop]`,
    or `SignFlips.block(start, stop)`). NaN Δ are skipped (count 0 for that neuron).
    """

    def __init__(self, moments: RunningMoments | None = None) -> None:
        """`moments`: Δ's running moments kept by someone else (Table 3's t-test accumulator,
        which adds each block to them); without, this test keeps its own."""
        self.s: np.ndarray | None = None
        self.abs_sum = np.zeros(0)  # [N] Σ|Δ|: the scale of S's float32 rounding
        self.rows = 0  # the most inputs of one block: its products' length
        self._owns_moments = moments is None
        self.moments = RunningMoments() if moments is None else moments

    @property
    def n(self) -> np.ndarray:
        """[N] the number of non-NaN Δ per neuron."""
        return self.moments.n

    def add(self, delta_block: np.ndarray, signs_block: np.ndarray, complete: bool = False) -> None:
        """Fold in Δ rows [inputs, N] with their signs [P, inputs]; `complete`: the caller knows
        the rows hold no NaN (no masked copy is made)."""
        delta = np.asarray(delta_block, dtype=np.float64)
        signs = np.asarray(signs_block)  # cast to float32 with the product (_add_product)
        if delta.ndim != 2 or signs.ndim != 2 or signs.shape[1] != delta.shape[0]:
            raise ValueError(f"signs {signs.shape} do not match delta block {delta.shape}")
        values = delta if complete else np.where(np.isnan(delta), 0.0, delta)
        if self.s is not None and (signs.shape[0], values.shape[1]) != self.s.shape:
            raise ValueError(f"block gives {(signs.shape[0], values.shape[1])}, accumulated {self.s.shape}")
        if self.s is None:
            self.s = np.zeros((signs.shape[0], values.shape[1]))
            self.abs_sum = np.zeros(values.shape[1])
        self.s = _add_product(self.s, signs, values)  # in place: S is the one [P, N] array kept
        self.abs_sum += np.abs(values).sum(axis=0)
        self.rows = max(self.rows, values.shape[0])
        if self._owns_moments:
            self.moments.add(delta, complete)

    def _t_signed(self, total: np.ndarray) -> np.ndarray:
        """t of sign-flipped samples with sums `total` [rows, N]; a constant one gives ∞."""
        n, mean, m2 = self.moments.n, self.moments.mean, self.moments.m2
        with np.errstate(invalid="ignore", divide="ignore"):
            m = total / n
            sd = np.sqrt(np.maximum(m2 + n * (mean - m) * (mean + m), 0.0) / (n - 1))
        return t_from_moments(m, sd, n, undefined=np.inf)

    def t_observed(self) -> np.ndarray:
        """[N] the ordinary one-sample t of Δ, Table 3's (NaN for constant Δ or n < 2)."""
        return t_from_moments(self.moments.mean, self.moments.sd, self.moments.n)

    def t_perm(self) -> np.ndarray:
        """[P, N] the t of each sign-flipped sample."""
        if self.s is None:
            raise ValueError("no inputs added")
        return self._t_signed(self.s)

    def tie_tolerance(self) -> np.ndarray:
        """[N] the most |S| can be off from the exact sum: a float32 dot product of k terms is
        within k·u·Σ|terms| (u = 2^-24; Higham, Accuracy and Stability, §3.1), k the longest
        block; the float64 sums over blocks add nothing at that scale."""
        return self.rows * FLOAT32_UNIT * self.abs_sum

    def p_values(self, rows: int = 256) -> np.ndarray:
        """[N] two-sided permutation p-values, (1 + #|t_perm| ≥ |t|) / (P + 1).

        Counted on the sums: with Σ(s_i Δ_i)² = ΣΔ² whatever the signs, |t| of a sign-flipped
        sample is increasing in |S| (t = m / sqrt((ΣΔ² - n m²) / (n (n - 1))), m = S / n), so
        |t*| ≥ |t| exactly when |S*| ≥ |S_obs|, S_obs = n·mean. A permuted sum within the
        float32 rounding of S (`tie_tolerance`) of |S_obs| counts as a tie, as the exact
        arithmetic would for a tie (the all-plus signs; the many equal sums of a discrete Δ
        such as frac_active's multiples of 1/T). Computed `rows` permutations at a time so
        the extra memory is rows × N. NaN where the observed t is undefined (constant Δ, n < 2).
        """
        if self.s is None:
            raise ValueError("no inputs added")
        t_obs = self.t_observed()
        bound = np.abs(self.moments.mean * self.moments.n) - self.tie_tolerance()
        count = np.zeros(t_obs.shape)
        for start in range(0, self.s.shape[0], rows):
            count += (np.abs(self.s[start : start + rows]) >= bound).sum(axis=0)
        p = (1.0 + count) / (self.s.shape[0] + 1)
        return np.where(np.isfinite(t_obs), p, np.nan)


def significant_counts(
    layer: np.ndarray, mean_diff: np.ndarray, q: np.ndarray, alpha: float = 0.05
) -> pd.DataFrame:
    """Per layer: neurons with q < alpha and mean Δ > 0 (text) or < 0 (image), and all neurons.

    NaN q-values are never significant.
    """
    layer = np.asarray(layer)
    mean_diff = np.asarray(mean_diff, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        significant = q < alpha
    frame = pd.DataFrame(
        {
            "layer": layer,
            "n_text_preferring": significant & (mean_diff > 0),
            "n_image_preferring": significant & (mean_diff < 0),
            "n_neurons": 1,
        }
    )
    counts = frame.groupby("layer", sort=True).sum().reset_index()
    return counts.astype({c: np.int64 for c in counts.columns if c != "layer"})
