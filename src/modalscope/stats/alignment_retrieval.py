"""Cross-modal retrieval by cosine in the same neurons, and its shuffled null.

Each caption (row of X) ranks all images (rows of Y), and each image all captions; the rank
of its own partner gives top-1, top-5 accuracy and mean reciprocal rank per direction, with
chance 1/n, 5/n and H_n/n. No interval: retrieval sits at chance or near its ceiling in
most layers, where neither a bootstrap nor a normal interval covers (docs/method.md §11);
read it against chance and its null band.
"""

from __future__ import annotations

import numpy as np

from modalscope.stats.alignment_common import MIN_PAIRS, pair_matrices, unit_rows
from modalscope.stats.blocks import block_rows

RETRIEVAL = ("top1", "top5", "mrr")
DIRECTIONS = ("text_to_image", "image_to_text")
RETRIEVAL_NAMES = tuple(f"{m}_{d}" for d in DIRECTIONS for m in RETRIEVAL)  # top1_text_to_image, ...


def gallery_ranks(s: np.ndarray) -> np.ndarray:
    """[q, g] int32: R_ij = #(l: s_il >= s_ij), the rank of gallery item j for query i with
    ties counted against it (every tied item ranks above it)."""
    out = np.empty(s.shape, dtype=np.int32)
    g, step = s.shape[1], block_rows(s.shape[1])
    for a in range(0, s.shape[0], step):
        block = np.ascontiguousarray(s[a : a + step])
        order = np.argsort(block, axis=1, kind="stable")
        v = np.take_along_axis(block, order, axis=1)
        starts = np.ones(v.shape, dtype=bool)
        starts[:, 1:] = v[:, 1:] != v[:, :-1]
        first = np.maximum.accumulate(np.where(starts, np.arange(g), 0), axis=1)  # of the tie run
        np.put_along_axis(out[a : a + step], order, (g - first).astype(np.int32), axis=1)
    return out


def scores(ranks: np.ndarray) -> np.ndarray:
    """[..., 3] top-1, top-5 accuracy and mean reciprocal rank of ranks [..., n]."""
    return np.stack([np.mean(ranks <= 1, axis=-1), np.mean(ranks <= 5, axis=-1), np.mean(1.0 / ranks, axis=-1)],
                    axis=-1)


def similarities(x: np.ndarray, y: np.ndarray, center: bool) -> np.ndarray:
    return unit_rows(x, center) @ unit_rows(y, center).T  # [caption, image]


def chance(n: int) -> np.ndarray:
    return np.array([1 / n, min(5, n) / n, np.sum(1 / np.arange(1, n + 1)) / n])


def retrieval(X: np.ndarray, Y: np.ndarray, center: bool = True) -> dict[str, float]:
    """Cross-modal retrieval by cosine in the same neurons: top-1, top-5 and MRR per direction,
    with their chance levels (`{name}_chance`).

    Ties count against the query: rank = 1 + #(other items with similarity >= the partner's),
    so a degenerate layer (all similarities equal) scores rank n, never above chance.
    `center` (default) subtracts each modality's own mean first. Why: the two modalities'
    clouds sit apart (the "modality gap", Liang et al. 2022) and decoder neurons carry large
    shared offsets, so uncentred cosines are nearly the same for every caption-image
    combination and the ranking follows the offsets, not the pair; centring keeps what
    varies from pair to pair, the part CKA compares too. NaN for fewer than MIN_PAIRS pairs.
    """
    x, y = pair_matrices(X, Y, same_width=True)
    n = x.shape[0]
    names = RETRIEVAL_NAMES
    if n < MIN_PAIRS:
        return {**dict.fromkeys(names, float("nan")), **dict.fromkeys((f"{a}_chance" for a in names), float("nan"))}
    s = similarities(x, y, center)
    own = s.diagonal()
    values = np.concatenate([scores((s >= own[:, None]).sum(axis=1)), scores((s >= own[None, :]).sum(axis=0))])
    out = {name: float(v) for name, v in zip(names, values)}
    out.update({f"{name}_chance": float(c) for name, c in zip(names, np.tile(chance(n), 2))})
    return out


def centred_similarities(xc: np.ndarray, yc: np.ndarray, k_diag: np.ndarray, l_diag: np.ndarray) -> np.ndarray:
    """`similarities(x, y, center=True)` from the column-centred pairs xc, yc (any scale, e.g.
    CKA's unit-centred ones) and their rows' squared norms (the Grams' diagonals): one product,
    no second centring; a zero row has cosine 0 with everything, as in `unit_rows`."""
    s = xc @ yc.T
    kx, ly = np.sqrt(k_diag), np.sqrt(l_diag)
    s /= np.where(kx > 0, kx, 1.0)[:, None]
    s /= np.where(ly > 0, ly, 1.0)[None, :]
    return s


def retrieval_all(x: np.ndarray, y: np.ndarray, pairings: list[np.ndarray], center: bool,
                  s: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed [6], [n_null, 6] shuffled retrieval (RETRIEVAL_NAMES' order), from the ranks
    of every image for every caption (r) and of every caption for every image (rt), and [6]
    standard errors (`retrieval_se`); `s`: the [caption, image] cosines when made already
    (`centred_similarities`)."""
    s = similarities(x, y, center) if s is None else s
    se = retrieval_se(s)
    r, rt = gallery_ranks(s), gallery_ranks(s.T)
    del s
    rows = np.arange(x.shape[0])
    null = [np.hstack([scores(r[rows, block]), scores(rt[block, rows])])  # caption i ↔ image π_i
            for block in pairings]
    observed = np.concatenate([scores(r.diagonal()), scores(rt.diagonal())])
    return observed, np.vstack(null or [np.empty((0, 6))]), se


# --- the jackknife interval of top-1 and MRR ---------------------------------------------
MIN_OUTCOMES = 10  # an interval needs this many queries at rank 1 and as many not
WITH_SE = ("top1", "mrr")  # top-5 has none (docs/method.md §11 says why)
_SCORE = {"top1": lambda r: (r <= 1).astype(np.float64), "mrr": lambda r: 1.0 / np.maximum(r, 1.0)}


def jackknife_se(s: np.ndarray, measure: str) -> float:
    """The standard error of top-1 or MRR (`measure`) of queries = rows of s [n, n] (the
    partner on the diagonal): the delete-one jackknife over pairs with half of Efron and Stein's
    second-order correction, as the debiased CKA's (alignment_cka.py), from closed forms.

    A query's score is f(R_i), R_i = 1 + sum_j h_ij, h_ij = [s_ij >= s_ii] (j != i): leaving
    pair a out removes query a and gallery item a, so R_i drops by h_ia, and
        theta_(a)  = (S - f_a + (Hᵀg)_a) / (n - 1),            g_i = f(R_i - 1) - f(R_i),
        theta_(ab) = (S - f_a - f_b + (Hᵀg)_a + (Hᵀg)_b - h_ba g_b - h_ab g_a + (Hᵀ diag(q) H)_ab) / (n - 2),
    q_i = f(R_i - 2) - 2 f(R_i - 1) + f(R_i) (the centring of each modality is held fixed, a
    change of order 1/n in every cosine). se² = v_J - ½ sum_{a<b} D_ab², D_ab = theta -
    theta_(a) - theta_(b) + theta_(ab); the plain v_J where that is not positive. Cost: one
    n x n x n product for MRR (0.06 CPU-s at 1,000 pairs), next to nothing for top-1 (its q is 0
    but at ranks 2 and 3). NaN when fewer than MIN_OUTCOMES queries are at rank 1, or fewer not
    (near chance or the ceiling the estimate is a handful of hits, and no normal interval holds)."""
    n = s.shape[0]
    own = np.diagonal(s)
    h = (s >= own[:, None]).astype(np.float64)
    np.fill_diagonal(h, 0.0)
    ranks = 1.0 + h.sum(axis=1)
    hits = int(np.sum(ranks <= 1))
    if n < 6 or hits < MIN_OUTCOMES or n - hits < MIN_OUTCOMES:
        return float("nan")
    f = _SCORE[measure]
    score = f(ranks)
    g = f(ranks - 1) - score
    q = f(ranks - 2) - 2 * f(ranks - 1) + score
    total = score.sum()
    hg = h.T @ g
    one = (total - score + hg) / (n - 1)
    v_plain = (n - 1) / n * np.sum((one - one.mean()) ** 2)
    weighted = h * g[:, None]  # [b, a] = h_ba g_b
    rows = np.flatnonzero(q)  # top-1: only queries at rank 2 or 3 have q != 0
    two = h[rows].T @ (h[rows] * q[rows, None])
    two += total - score[:, None] - score[None, :] + hg[:, None] + hg[None, :]
    two -= weighted.T
    two -= weighted
    two /= n - 2
    d = total / n - one[:, None] - one[None, :] + two
    np.fill_diagonal(d, 0.0)
    corrected = v_plain - np.sum(d * d) / 4  # half of sum_{a<b} D², each pair twice in the matrix
    return float(np.sqrt(corrected if corrected > 0 else v_plain))


def retrieval_se(s: np.ndarray) -> np.ndarray:
    """[6] the standard errors in RETRIEVAL_NAMES' order (`jackknife_se`; NaN for top-5) from the
    [caption, image] cosines s: text_to_image ranks images per caption (rows of s), image_to_text
    captions per image (rows of sᵀ)."""
    out = np.full(len(RETRIEVAL_NAMES), np.nan)
    for d, matrix in enumerate((s, s.T)):
        for m, measure in enumerate(RETRIEVAL):
            if measure in WITH_SE:
                out[d * len(RETRIEVAL) + m] = jackknife_se(np.ascontiguousarray(matrix), measure)
    return out
