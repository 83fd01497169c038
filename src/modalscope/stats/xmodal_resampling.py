"""The cross-modal statistic's resampling (stats/neuron/xmodal.py): the random pairings of its
null (`xmodal_null` stream; within k or over all pairs), the permutation p against them, and the
block bootstrap of r over inputs (`bootstrap` stream) that xmodal_layers.py turns into the
cross-modal share's interval.
"""

from __future__ import annotations

import functools

import numpy as np

from modalscope.seeds import generator
from modalscope.stats import blocks
from modalscope.stats.controls import (
    TIE,  # a permuted r equal to the observed one counts as extreme
)

BOOT_NEURONS = 256  # neurons per layer whose r is bootstrapped over inputs
BOOT_BLOCKS = 100  # the bootstrap resamples this many blocks of inputs (each input, when fewer)
SMALL_PRODUCT = 1 << 23  # multiply-adds under which a product skips BLAS (`_product`)


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
    bound = np.abs(r) * (1 - TIE)
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
    step = max(1, blocks.per_neuron_elements() // max(n, 1))
    for start in range(0, n_perm, step):
        block = np.stack([rng.permutation(n) for _ in range(min(step, n_perm - start))])
        out[start : start + len(block)] = centred[block] @ centred / (centred @ centred)
    return np.sort(np.abs(out))


def permutation_p(r: np.ndarray, null: np.ndarray) -> np.ndarray:
    """(1 + #{k: |null_k| >= |r|}) / (P + 1) against the sorted |r| of the shared null."""
    if null.size == 0:
        return np.full(r.shape, np.nan)
    bound = np.abs(r) * (1 - TIE)
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
