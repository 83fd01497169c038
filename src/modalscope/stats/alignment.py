"""Layer alignment of the two modalities: linear CKA, mutual k-NN and cross-modal retrieval.

Why: a neuron's xmodal_r says whether one unit agrees across modalities; these say whether a
layer's whole population code of a pair is the same when the pair arrives as words or as
pixels. Input per layer: X [pairs, neurons] (text) and Y [pairs, neurons] (image), row i of
both the same pair, e.g. the `mean` reduction. Views, from loose to strict:

- `cka_debiased` and `cka` (Kornblith et al. 2019; alignment_cka.py): are the two point clouds
  the same up to a rotation and a scale. `cka_debiased` (unbiased HSIC, Song et al. 2012) is
  the estimate; `cka`, the plug-in value, is kept for comparison with earlier studies and is
  biased upwards (0.2-0.5 for unrelated clouds of many neurons);
- `mutual_knn` (Huh et al. 2024; alignment_knn.py): do the pairs that are near a pair in
  text space tend to be near it in image space (local structure only);
- retrieval (alignment_retrieval.py): is the caption's own image its nearest image by cosine
  in the same neurons (and back), the strictest: the neurons themselves must carry the match.

`alignment_with_uncertainty` gives each with a shuffled-pairing null (the rows of Y
permuted: any alignment left is what two unrelated clouds with these spectra and
neighbourhoods give by chance), a one-sided p and the null band; the measures in
WITH_INTERVAL also with a 95% interval whose coverage is checked by simulation
(tests/stats/test_alignment_coverage.py): the jackknife over pairs with half of Efron and
Stein's second-order correction, for `cka_debiased` (alignment_cka.py says why half) and for
top-1 and MRR of both directions (alignment_retrieval.py `jackknife_se`; given where at least
MIN_OUTCOMES queries are at rank 1 and as many are not). Mutual k-NN and top-5 have no
interval (NaN): their statistic is far from additive in the pairs (a pair left out reshuffles
the neighbour lists, or the top-5, of many others), the jackknife counts that twice over and
more, and no correction of it covered (docs/method.md §11).
Pairings draw from the study's `alignment_null` stream (seeds.py), one `permutation(n)` per
pairing, the same draws for every measure and every layer of n pairs.

Cost and memory (n pairs, d neurons): n x n arrays are held a measure at a time (CKA's Grams
and a few n x n products for the jackknife; retrieval's similarities and two int32 rank
matrices; k-NN's [n, k] lists and an n x n bool table for its null): ~40 n² bytes at peak.
Time: O(n² d) to build them, O(n³) for the jackknife's three products, O(P n²) gathers for
P CKA null pairings and O(P n k) for k-NN and retrieval's null.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
from scipy.stats import norm

from modalscope.seeds import generator
from modalscope.stats.alignment_cka import (
    centred_grams,
    cka_shuffled,
    debiased_cka,
    debiased_cka_jackknife,
    grams,
    linear_cka,
)
from modalscope.stats.alignment_common import (
    MIN_PAIRS,
    pair_matrices,
    unit_rows,
)
from modalscope.stats.alignment_knn import (
    gram_neighbours,
    knn_shuffled,
    mutual_knn,
    neighbours,
    shared,
)
from modalscope.stats.alignment_retrieval import (
    DIRECTIONS,
    MIN_OUTCOMES,
    RETRIEVAL_NAMES,
    WITH_SE,
    centred_similarities,
    chance,
    retrieval,
    retrieval_all,
)
from modalscope.stats.blocks import block_rows
from modalscope.stats.controls import (
    TIE,  # a null value equal to the observed one counts as >=
)

__all__ = ["MEASURES", "WITH_INTERVAL", "alignment_layer", "alignment_with_uncertainty", "debiased_cka",
           "interval", "linear_cka", "mutual_knn", "retrieval", "RETRIEVAL_NAMES"]

MEASURES = ("cka", "cka_debiased", "mutual_knn", *RETRIEVAL_NAMES)
# measures reported with an interval (each one's coverage is tested: tests/stats/test_alignment_coverage.py)
WITH_INTERVAL = ("cka_debiased", *(f"{m}_{d}" for d in DIRECTIONS for m in WITH_SE))
INTERVAL_METHOD = {"cka_debiased": "jackknife over pairs, half Efron-Stein correction",
                   **{name: f"jackknife over pairs, half Efron-Stein correction (>= {MIN_OUTCOMES} queries at rank 1 "
                            f"and as many not)" for name in WITH_INTERVAL[1:]}}


def interval(value, se, level: float = 0.95, tests: int = 1):
    """Normal interval value ± z se, z the (1 + level)/2 quantile, Bonferroni over `tests`
    (a simultaneous interval over that many layers): (low, high)."""
    z = norm.ppf(1 - (1 - level) / (2 * tests))
    return value - z * se, value + z * se


def _pairings(n: int, n_null: int, seed: int) -> Iterator[np.ndarray]:
    """Shuffled pairings as [rows, n] blocks: in row π, image row π[i] goes with caption i;
    from the alignment null stream, one `permutation(n)` per pairing."""
    rng, rows = generator(seed, "alignment_null"), block_rows(n)
    for start in range(0, n_null, rows):
        yield np.array([rng.permutation(n) for _ in range(min(rows, n_null - start))]).reshape(-1, n)


def _summary(name: str, observed: float, se: float, null: np.ndarray, level: float) -> dict[str, float]:
    tails = [50 * (1 - level), 50 * (1 + level)]
    with warnings.catch_warnings():  # no pairings, or all NaN: NaN bounds
        warnings.simplefilter("ignore", RuntimeWarning)
        null_low, null_high = np.nanpercentile(null, tails) if null.size else (np.nan, np.nan)
    hits = np.sum(null >= observed - TIE * abs(observed))
    p = (1.0 + hits) / (null.size + 1) if np.isfinite(observed) else np.nan
    low, high = interval(observed, se, level)
    return {name: float(observed), f"{name}_se": float(se), f"{name}_low": float(low), f"{name}_high": float(high),
            f"{name}_null_low": float(null_low), f"{name}_null_high": float(null_high), f"{name}_p": float(p)}


def _cka_all(x, y, n_null, seed, g=None):
    """Plug-in and debiased CKA: observed, the debiased one's se, and [n_null] nulls of each
    (`g`: the unit-centred Grams, when made already)."""
    nan = np.full(n_null, np.nan)
    g = grams(x, y) if g is None else g
    if g is None:
        return (np.nan, nan), (np.nan, np.nan, nan)
    k, l = g
    n = x.shape[0]
    plain = float(np.einsum("ij,ij->", k, l) / np.sqrt(np.einsum("ij,ij->", k, k) * np.einsum("ij,ij->", l, l)))
    value, se, _ = debiased_cka_jackknife(k, l) if n >= 4 else (np.nan, np.nan, np.nan)
    nulls = [cka_shuffled(k, l, block) for block in _pairings(n, n_null, seed)]
    null_plain = np.concatenate([a for a, _ in nulls] or [np.empty(0)])
    null_debiased = np.concatenate([b for _, b in nulls] or [np.empty(0)])
    return (plain, null_plain), (value, se, null_debiased)


def _knn_all(x, y, n_null, seed, k, center, g=None):
    """Observed and [n_null] mutual k-NN (centred: the neighbours from CKA's Grams `g`, when
    given, so that no second n x n x d product is made)."""
    if center and g is not None:
        nx, ny = gram_neighbours(g[0], k), gram_neighbours(g[1], k)
    else:
        nx, ny = neighbours(unit_rows(x, center), k), neighbours(unit_rows(y, center), k)
    null = [knn_shuffled(nx, ny, block, k) for block in _pairings(x.shape[0], n_null, seed)]
    return float(shared(nx, ny).mean() / k), np.concatenate(null or [np.empty(0)])


def alignment_layer(X: np.ndarray, Y: np.ndarray, n_null: int = 1000, seed: int = 0, k: int = 10,
                    center: bool = True, level: float = 0.95) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """`alignment_with_uncertainty`'s dict and, per measure, its [n_null] shuffled-pairing
    draws (layer_alignment.py compares them across layers: the max-statistic p)."""
    x, y = pair_matrices(X, Y, same_width=True)
    n = x.shape[0]
    ok, knn_ok = n >= MIN_PAIRS, n >= MIN_PAIRS and 1 <= k <= n - 2
    nan_null = np.full(n_null, np.nan)
    made = centred_grams(x, y) if ok else None  # unit-centred pairs and Grams: CKA's, k-NN's and retrieval's
    g = None if made is None else made[2:]
    s = (centred_similarities(made[0], made[1], np.diagonal(made[2]), np.diagonal(made[3]))
         if center and made is not None else None)  # retrieval's cosines, before the [n, d] pairs go
    del made
    (plain, plain_null), (debiased, se, debiased_null) = (
        _cka_all(x, y, n_null, seed, g) if g is not None else ((np.nan, nan_null), (np.nan, np.nan, nan_null)))
    knn, knn_null = _knn_all(x, y, n_null, seed, k, center, g) if knn_ok else (np.nan, nan_null)
    if ok:
        observed, null, retrieval_se = retrieval_all(x, y, list(_pairings(n, n_null, seed)), center, s)
    else:
        observed, null, retrieval_se = np.full(6, np.nan), np.full((n_null, 6), np.nan), np.full(6, np.nan)
    nulls = {"cka": plain_null, "cka_debiased": debiased_null, "mutual_knn": knn_null,
             **{name: null[:, j] for j, name in enumerate(RETRIEVAL_NAMES)}}
    values = {"cka": (plain, np.nan), "cka_debiased": (debiased, se), "mutual_knn": (knn, np.nan),
              **{name: (observed[j], retrieval_se[j]) for j, name in enumerate(RETRIEVAL_NAMES)}}
    out: dict[str, float] = {}
    for name in MEASURES:
        out.update(_summary(name, *values[name], nulls[name], level))
    out["mutual_knn_chance"] = k / (n - 1) if knn_ok else np.nan
    rates = np.tile(chance(n), 2) if ok else np.full(6, np.nan)
    out.update({f"{name}_chance": float(c) for name, c in zip(RETRIEVAL_NAMES, rates)})
    out.update({"n_pairs": n, "k": int(k), "n_null": int(n_null)})
    return out, nulls


def alignment_with_uncertainty(X: np.ndarray, Y: np.ndarray, n_boot: int = 0, n_null: int = 1000,
                               seed: int = 0, k: int = 10, center: bool = True,
                               level: float = 0.95) -> dict[str, float]:
    """CKA (plug-in and debiased), mutual k-NN and retrieval of one layer, each with a
    shuffled-pairing null; the debiased CKA with a jackknife interval.

    For each measure m in MEASURES: `m`; `m_se`, `m_low`, `m_high`: its standard error and
    normal `level` interval m ± z se (NaN for measures outside WITH_INTERVAL); the
    shuffled-pairing null band `m_null_low`, `m_null_high` (its central `level` share) and
    the one-sided p = (1 + #null >= observed) / (n_null + 1); `m_chance` for k-NN (k/(n-1))
    and retrieval (1/n, 5/n, H_n/n); and n_pairs, k, n_null. `center` as in `mutual_knn` and
    `retrieval` (CKA always centres). `n_boot` is accepted and ignored: no bootstrap is drawn
    any more (the percentile bootstrap over pairs did not cover, docs/method.md §11).

    Everything is NaN for fewer than MIN_PAIRS pairs; the debiased CKA below 4 pairs and its
    interval below 6 (alignment_cka.MIN_PAIRS_DEBIASED); k-NN unless 1 <= k <= n - 2.
    """
    del n_boot
    return alignment_layer(X, Y, n_null=n_null, seed=seed, k=k, center=center, level=level)[0]

