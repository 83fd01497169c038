"""Mutual k nearest neighbours of the two modalities (Huh et al. 2024) and its shuffled null.

For each pair, the k other pairs nearest to it by cosine in text space and the k nearest in
image space; the measure is the mean share they have in common. Chance is k / (n - 1).
"""

from __future__ import annotations

import numpy as np

from modalscope.stats import blocks
from modalscope.stats.alignment_common import MIN_PAIRS, pair_matrices, unit_rows
from modalscope.stats.blocks import block_rows


def nearest(sims: np.ndarray, m: int) -> np.ndarray:
    """[r, m] the columns of the m largest values of each row of sims [r, n], in ascending
    column order; among values tied with the m-th largest the lower columns win (what the first
    m of a stable sort by decreasing value hold). A partition per row, not a sort: O(n), and a
    row needs a running count only when ties straddle the m-th place."""
    r, n = sims.shape
    kth = np.partition(sims, n - m, axis=1)[:, n - m]  # the m-th largest of each row
    chosen = sims > kth[:, None]
    tied = sims == kth[:, None]
    need = m - chosen.sum(axis=1)  # how many of the tied values each row takes (>= 1)
    straddle = np.flatnonzero(tied.sum(axis=1) > need)
    chosen |= tied
    if straddle.size:  # lowest columns first among the tied
        chosen[straddle] &= ~tied[straddle] | (np.cumsum(tied[straddle], axis=1) <= need[straddle, None])
    return np.nonzero(chosen)[1].reshape(r, m)


def neighbours(u: np.ndarray, m: int, rows: np.ndarray | None = None) -> np.ndarray:
    """[rows, m] the m nearest other pairs of each pair by cosine, u [n, d] unit rows, in
    ascending pair order (`nearest`: ties go to the lower pair index); a pair is never its own
    neighbour."""
    rows = np.arange(u.shape[0]) if rows is None else rows
    out = np.empty((rows.size, m), dtype=np.int64)
    step = block_rows(u.shape[0])
    for s in range(0, rows.size, step):
        block = rows[s : s + step]
        sims = u[block] @ u.T
        sims[np.arange(block.size), block] = -np.inf
        out[s : s + step] = nearest(sims, m)
    return out


def gram_neighbours(gram: np.ndarray, m: int) -> np.ndarray:
    """`neighbours` from the Gram matrix [n, n] of the column-centred pairs (any scale, e.g.
    CKA's, alignment_cka.grams), so that no second [n, d] product is made: the cosine of
    centred rows i, j is G_ij / sqrt(G_ii G_jj) (a zero row has cosine 0 with every row, as
    `unit_rows` makes it). The same neighbours as `neighbours(unit_rows(x, True), m)` but for
    ties within rounding (a product of n x d numbers summed in another order)."""
    n = gram.shape[0]
    norm = np.sqrt(np.diagonal(gram))
    scale = 1.0 / np.where(norm > 0, norm, 1.0)
    out = np.empty((n, m), dtype=np.int64)
    step = block_rows(n)
    for s in range(0, n, step):
        sims = gram[s : s + step] * scale[s : s + step, None]
        sims *= scale[None, :]
        sims[np.arange(sims.shape[0]), np.arange(s, s + sims.shape[0])] = -np.inf
        out[s : s + step] = nearest(sims, m)
    return out


def shared(nx: np.ndarray, ny: np.ndarray) -> np.ndarray:
    """[n] how many neighbours each pair's two lists nx, ny [n, k] have in common."""
    out = np.empty(nx.shape[0])
    step = block_rows(nx.shape[1] * ny.shape[1])
    for s in range(0, nx.shape[0], step):
        out[s : s + step] = (nx[s : s + step, :, None] == ny[s : s + step, None, :]).sum(axis=(1, 2))
    return out


def knn_shuffled(nx: np.ndarray, ny: np.ndarray, pairings: np.ndarray, k: int) -> np.ndarray:
    """[P] mutual k-NN with image row π[i] matched to text row i, for each row π of pairings.

    Pair i's image neighbours are those of image π_i, named as the pairs they now are
    (π⁻¹ of them); a [n, n] table of text neighbourhoods (n² bytes) counts the shared ones
    by lookup, a few pairings at a time ([P, n, k] indices)."""
    n = nx.shape[0]
    member = np.zeros(n * n, dtype=bool)
    member[(np.arange(n)[:, None] * n + nx).ravel()] = True
    out = np.empty(len(pairings))
    step = max(1, blocks.BLOCK_ELEMENTS // (n * k))
    for s in range(0, len(pairings), step):
        block = pairings[s : s + step]
        inverse = np.empty_like(block)
        np.put_along_axis(inverse, block, np.broadcast_to(np.arange(n), block.shape), axis=1)
        named = np.take_along_axis(inverse[:, None, :], ny[block].reshape(len(block), 1, -1), axis=2)
        named = named.reshape(len(block), n, k)
        out[s : s + step] = member[np.arange(n)[:, None] * n + named].sum(axis=(1, 2)) / (n * k)
    return out


def mutual_knn(X: np.ndarray, Y: np.ndarray, k: int = 10, center: bool = True) -> float:
    """Mutual k-NN alignment (Huh et al. 2024): mean over pairs of |N_X(i) ∩ N_Y(i)| / k.

    N_X(i) is the k pairs other than i nearest to i by cosine in text space (N_Y in image
    space); ties go to the lower pair index. Chance is k / (n - 1). `center` first centres
    each modality on its own mean: decoder neurons carry large shared offsets (massive
    activations), which make every uncentred cosine near 1; center=False is Huh et al.'s
    recipe exactly. NaN for fewer than MIN_PAIRS pairs or k outside 1..n-2.
    """
    x, y = pair_matrices(X, Y)
    n = x.shape[0]
    if n < MIN_PAIRS or not 1 <= k <= n - 2:
        return float("nan")
    nx, ny = neighbours(unit_rows(x, center), k), neighbours(unit_rows(y, center), k)
    return float(shared(nx, ny).mean() / k)
