"""The per-neuron sign-flip test with its sign vectors drawn from a random subgroup, so that
all P permuted sums of a neuron cost one Walsh-Hadamard transform, not P multiply-adds per input.

Why: the test needs S_p = Σ_i s_pi Δ_i for P permutations (default 1,000) and every neuron, a
[P, I] @ [I, N] product: P multiply-adds per input and neuron, the analysis' largest cost per
pair at 7B widths (a third of its CPU, issue 24.7). With the study's `controls.SignFlips` the
sign vectors are elements of a subgroup H of {±1}^I, and that makes the sums cheap:

- each input i has a k-bit code c_i and permutation p is a non-zero k-bit number e_p, with
  s_pi = (-1)^popcount(e_p & c_i). The 2^k vectors s_e form a group (s_e s_f = s_(e xor f)),
  the identity is e = 0, and 2^k > P;
- so S_p = Σ_c (-1)^popcount(e_p & c) T_c with T_c = Σ_{i: c_i = c} Δ_i: each input's Δ is
  added to its cell (one add per input and neuron, `add`), and one fast Walsh-Hadamard
  transform of the 2^k cells per neuron gives the sum of every element of H at once
  (k·2^k adds per neuron, once per layer whatever the number of inputs, `sums`).

Exactness: under H0 (each input's Δ symmetric about 0, independently; or any joint law that
sign flips leave unchanged) the law of Δ is invariant under H, and comparing the observed
statistic with its values under the identity and P elements drawn without replacement from
H \\ {id} gives an exact test (Hemerik & Goeman 2018, "Exact testing with random permutations",
TEST 27:811-825, Theorem 2); H is drawn independently of the data, so this holds whatever H
is drawn. p = (1 + #{p: |S_p| >= |S|}) / (P + 1), as for independent random sign vectors.
Inputs with one code flip together: the test is the sign-flip test of the cell sums. Under an
effect μ that widens the permuted sums' spread from n(σ² + μ²) to about n(σ² + μ²·I/2^k); at
the smallest effect the test can find (μ/σ ≈ 4/√I) that is a factor 1 + 16/2^k, 1.6% at the
default k = 10 (power: tests/stats/test_sign_group.py).

Arithmetic: float64 throughout; a permuted sum is off from the exact sum of the stored Δ by
at most (I + k)·u·Σ|Δ| (u = 2^-53: the cell sums, then k levels of the transform), and the
observed sum (the transform's identity row) as much, so a permuted sum within twice that of
|S| counts as a tie, as exact arithmetic counts one (the discrete Δ of frac_active).
"""

from __future__ import annotations

import numpy as np

from modalscope.stats import blocks
from modalscope.stats.controls import PermutationT, SignFlips
from modalscope.stats.moments import RunningMoments

FLOAT64_UNIT = 2.0**-53


def walsh_hadamard(x: np.ndarray) -> np.ndarray:
    """x [2^k, ...] in place to y_e = Σ_c (-1)^popcount(e & c) x_c (Sylvester's order: row e is
    the sum under sign vector e). The butterfly: k levels, each one add and one subtract per
    pair of rows h apart."""
    size = x.shape[0]
    if size & (size - 1):
        raise ValueError(f"need 2^k rows, got {size}")
    half = 1
    while half < size:
        pairs = x.reshape(size // (2 * half), 2, half, -1)
        low, high = pairs[:, 0], pairs[:, 1]
        difference = low - high
        low += high
        high[...] = difference
        half *= 2
    return x


class GroupPermutationT(PermutationT):
    """`PermutationT` on the study's `SignFlips`, through their codes: Δ rows are summed into
    2^k cells per neuron (`add`), the permuted sums come from the cells' Walsh-Hadamard
    transform (`sums`), and p is counted as PermutationT counts it (`p_values`). The same
    test as feeding `signs.block(start, stop)` to PermutationT.add, in float64."""

    def __init__(self, signs: SignFlips, moments: RunningMoments | None = None) -> None:
        self.signs = signs
        self.cells: np.ndarray | None = None  # [2^k, N] Σ of the Δ of each code's inputs
        self._owns_moments = moments is None
        self.moments = RunningMoments() if moments is None else moments

    def add(self, delta_block: np.ndarray, start: int, complete: bool = False) -> None:  # type: ignore[override]
        """Fold in Δ rows [inputs, N] of inputs start:start + len; `complete`: the caller knows
        the rows hold no NaN (no masked copy is made). NaN Δ count 0 for that neuron."""
        delta = np.asarray(delta_block, dtype=np.float64)
        if delta.ndim != 2:
            raise ValueError(f"expected a [inputs, neurons] block, got shape {delta.shape}")
        stop = start + delta.shape[0]
        if start < 0 or stop > self.signs.n_inputs:
            raise ValueError(f"inputs {start}:{stop} outside the {self.signs.n_inputs} the sign flips cover")
        values = delta if complete else np.where(np.isnan(delta), 0.0, delta)
        if self.cells is None:
            self.cells = np.zeros((1 << self.signs.k, values.shape[1]))
        elif values.shape[1] != self.cells.shape[1]:
            raise ValueError(f"block has {values.shape[1]} neurons, accumulated {self.cells.shape[1]}")
        cells = self.cells
        for row, code in zip(values, self.signs.codes[start:stop].tolist()):
            cells[code] += row  # one row at a time: a code twice in the block adds twice
        if self._owns_moments:
            self.moments.add(delta, complete)

    def _chunks(self):
        """(columns, transformed cells [2^k, columns]) a block of neurons at a time (the
        transform's copy stays small: blocks.per_neuron_elements() values)."""
        if self.cells is None:
            raise ValueError("no inputs added")
        width = max(1, blocks.per_neuron_elements() // self.cells.shape[0])
        for begin in range(0, self.cells.shape[1], width):
            columns = slice(begin, min(begin + width, self.cells.shape[1]))
            yield columns, walsh_hadamard(self.cells[:, columns].copy())

    @property
    def s(self) -> np.ndarray:  # type: ignore[override]
        """[P, N] the permuted sums S_p (for checks; `p_values` never holds them all)."""
        out = np.empty((self.signs.n_perm, 0 if self.cells is None else self.cells.shape[1]))
        for columns, transformed in self._chunks():
            out[:, columns] = transformed[self.signs.elements]
        return out

    def tie_tolerance(self) -> np.ndarray:
        """[N] twice the most a permuted or the observed sum can be off from the exact sum:
        (I + k)·u·Σ|Δ| each, Σ|Δ| bounded by √(n·ΣΔ²) from the moments (no pass for it)."""
        n, mean, m2 = self.moments.n, self.moments.mean, self.moments.m2
        bound = np.sqrt(np.maximum(n * (m2 + n * mean * mean), 0.0))
        return 2.0 * (self.signs.n_inputs + self.signs.k) * FLOAT64_UNIT * bound

    def p_values(self, rows: int = 256) -> np.ndarray:
        """[N] two-sided permutation p-values, (1 + #|t_perm| ≥ |t|) / (P + 1), counted on the
        sums as PermutationT.p_values says why; the observed sum is the transform's identity
        row. NaN where the observed t is undefined (constant Δ, n < 2)."""
        t_obs = self.t_observed()
        if self.cells is None:
            raise ValueError("no inputs added")
        tolerance = self.tie_tolerance()
        count = np.zeros(t_obs.shape)
        for columns, transformed in self._chunks():
            bound = np.abs(transformed[0]) - tolerance[columns]
            count[columns] = (np.abs(transformed[self.signs.elements]) >= bound).sum(axis=0)
        p = (1.0 + count) / (self.signs.n_perm + 1)
        return np.where(np.isfinite(t_obs), p, np.nan)
