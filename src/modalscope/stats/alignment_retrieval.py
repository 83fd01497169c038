"""Cross-modal retrieval by cosine in the same neurons, and its shuffled null.

Each caption (row of X) ranks all images (rows of Y), and each image all captions; the rank
of its own partner gives top-1, top-5 accuracy and mean reciprocal rank per direction, with
chance 1/n, 5/n and H_n/n. No interval: retrieval sits at chance or near its ceiling in
most layers, where neither a bootstrap nor a normal interval covers (docs/method.md §11);
read it against chance and its null band.
"""

from __future__ import annotations

import numpy as np

from modalscope.stats.alignment_common import MIN_PAIRS, block_rows, pair_matrices, unit_rows

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


def retrieval_all(x: np.ndarray, y: np.ndarray, pairings: list[np.ndarray], center: bool) -> tuple[np.ndarray, np.ndarray]:
    """Observed [6] and [n_null, 6] shuffled retrieval (RETRIEVAL_NAMES' order), from the ranks
    of every image for every caption (r) and of every caption for every image (rt)."""
    s = similarities(x, y, center)
    r, rt = gallery_ranks(s), gallery_ranks(s.T)
    del s
    rows = np.arange(x.shape[0])
    null = [np.hstack([scores(r[rows, block]), scores(rt[block, rows])])  # caption i ↔ image π_i
            for block in pairings]
    observed = np.concatenate([scores(r.diagonal()), scores(rt.diagonal())])
    return observed, np.vstack(null or [np.empty((0, 6))])
