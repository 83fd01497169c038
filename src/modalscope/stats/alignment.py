"""Layer alignment of the two modalities: linear CKA, mutual k-NN and cross-modal retrieval.

Why: a neuron's xmodal_r says whether one unit agrees across modalities; these say whether a
layer's whole population code of a pair is the same when the pair arrives as words or as
pixels. Input per layer: X [pairs, neurons] (text) and Y [pairs, neurons] (image), row i of
both the same pair, e.g. the `mean` reduction. Three views, from loose to strict:

- `linear_cka` (Kornblith et al. 2019): are the two point clouds the same up to a rotation
  and a scale (compares the centred Gram matrices; any orthogonal map between the modalities
  is allowed, so text and image need not use the same neurons for the same thing);
- `mutual_knn` (Huh et al. 2024): do the pairs that are near a pair in text space tend to be
  near it in image space (local structure only, robust to a warp of the whole cloud);
- `retrieval`: is the caption's own image its nearest image by cosine in the same neurons
  (and back), the strictest: the neurons themselves must carry the match.

`alignment_with_uncertainty` gives each with a percentile bootstrap CI over pairs and a
shuffled-pairing null (the rows of Y permuted: any alignment left is what two unrelated
clouds with these spectra and neighbourhoods give by chance), one-sided p-values and the
null band. Resamples draw from the study's `alignment_bootstrap` stream, pairings from its
`alignment_null` stream (seeds.py): `integers(0, n, size=(rows, n))` a few rows at a time
and one `permutation(n)` per pairing, the same draws for all three measures.

Cost and memory (n pairs, d neurons): the measures need every pair against every pair, so
n×n arrays are unavoidable, but they are held a measure at a time (CKA's two centred Gram
matrices, then retrieval's similarities and its two int32 rank matrices: ~16 n² bytes at
peak, 0.4 GB at n = 5,000; k-NN keeps [n, 2k + 40] neighbour lists and, for its null, an
n x n bool table of text neighbourhoods), and every other
temporary is kept to about BLOCK_ELEMENTS. Time: O(n² d) to build them, then O(B n²)
for B bootstrap replicates of CKA and retrieval (matrix products), O(P n²) gathers for P
CKA null pairings and O(n k²) per replicate or pairing for k-NN and retrieval's null.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np

from modalscope.seeds import generator

MIN_PAIRS = 3  # fewer pairs: every measure is NaN (with 2, CKA is 1 and retrieval trivial)
BLOCK_ELEMENTS = 1 << 20  # [rows, n] temporaries are kept to about this many elements
BOOT_CHUNK = 128  # bootstrap replicates drawn and scored at once, at most
KNN_PREFIX = 40  # neighbours kept per pair beyond 2k, for the bootstrap (see _slots)
_TIE = 1e-12  # relative tolerance: a null value equal to the observed one counts as >=

RETRIEVAL = ("top1", "top5", "mrr")
DIRECTIONS = ("text_to_image", "image_to_text")
RETRIEVAL_NAMES = tuple(f"{m}_{d}" for d in DIRECTIONS for m in RETRIEVAL)  # top1_text_to_image, ...
MEASURES = ("cka", "mutual_knn", *RETRIEVAL_NAMES)


def _block_rows(n_columns: int, most: int | None = None) -> int:
    rows = max(1, BLOCK_ELEMENTS // max(n_columns, 1))
    return rows if most is None else max(1, min(rows, most))


def _pair_matrices(X: np.ndarray, Y: np.ndarray, same_width: bool = False) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected text and image matrices [pairs, neurons] with the same pairs, "
                         f"got {x.shape} and {y.shape}")
    if same_width and x.shape[1] != y.shape[1]:
        raise ValueError(f"retrieval compares the same neurons: text has {x.shape[1]}, image {y.shape[1]}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("text or image matrix holds NaN or inf: drop those pairs first")
    return x, y


def _unit_centred(x: np.ndarray) -> np.ndarray | None:
    """Columns centred, scaled to Frobenius norm 1 (CKA is scale-free; this keeps sums tame)."""
    xc = x - x.mean(axis=0)
    size = np.linalg.norm(xc)
    return xc / size if size > 0 else None


def _unit_rows(x: np.ndarray, center: bool) -> np.ndarray:
    """Rows scaled to norm 1 (after centring each column, if `center`); a zero row stays 0,
    so its cosine with everything is 0."""
    u = x - x.mean(axis=0) if center else x.copy()
    norm = np.linalg.norm(u, axis=1, keepdims=True)
    return u / np.where(norm > 0, norm, 1.0)


# --- linear CKA -------------------------------------------------------------------------

def _inner(a: np.ndarray, b: np.ndarray) -> float:
    """Σ a∘b of two arrays of one shape (einsum: no temporary, and fast for small blocks)."""
    return float(np.einsum("ij,ij->", a, b))


def _cross_sq(a: np.ndarray, b: np.ndarray) -> float:
    """||aᵀ b||_F², a [n, p] and b [n, q], a block of a's columns at a time."""
    cols = _block_rows(b.shape[1])
    return float(sum(np.sum((a[:, s : s + cols].T @ b) ** 2) for s in range(0, a.shape[1], cols)))


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA of the rows of X [n, p] and Y [n, q]: ||Ycᵀ Xc||²_F / (||Xcᵀ Xc||_F ||Ycᵀ Yc||_F).

    Xc, Yc are column-centred. The feature form costs n(p² + pq + q²), the Gram form
    (tr(K L) with K = Xc Xcᵀ, L = Yc Ycᵀ, the same numbers) n²(p + q): the cheaper is used,
    a block at a time either way. NaN for fewer than MIN_PAIRS pairs or a constant matrix.
    """
    x, y = _pair_matrices(X, Y)
    n, p, q = x.shape[0], x.shape[1], y.shape[1]
    xc, yc = (_unit_centred(x), _unit_centred(y)) if n >= MIN_PAIRS else (None, None)
    if xc is None or yc is None:
        return float("nan")
    if p * p + p * q + q * q <= n * (p + q):  # feature space
        cross, xx, yy = _cross_sq(xc, yc), _cross_sq(xc, xc), _cross_sq(yc, yc)
    else:  # Gram matrices, a block of rows at a time
        cross = xx = yy = 0.0
        rows = _block_rows(n)
        for s in range(0, n, rows):
            k, l = xc[s : s + rows] @ xc.T, yc[s : s + rows] @ yc.T
            cross, xx, yy = cross + _inner(k, l), xx + _inner(k, k), yy + _inner(l, l)
    return float(cross / np.sqrt(xx * yy))


def _cka_from_grams(k: np.ndarray, l: np.ndarray) -> float:
    return _inner(k, l) / np.sqrt(_inner(k, k) * _inner(l, l))


def _cka_resampled(k: np.ndarray, l: np.ndarray, w: np.ndarray) -> np.ndarray:
    """[B] CKA of the resamples with counts w [B, n], from the full sample's Grams K, L.

    A resample's Gram is K_w = P K Pᵀ (P picks the drawn rows) and it is centred anew,
    H K_w H, so each replicate is exactly linear_cka of X[draw], Y[draw]. With Σw = n,
    tr(H A H B) = tr(AB) - 2/n 1ᵀAB1 + (1ᵀA1)(1ᵀB1)/n², and tr(K_w L_w) = wᵀ(K∘L)w,
    1ᵀK_w L_w 1 = Σ_j w_j (Kw)_j (Lw)_j, 1ᵀK_w 1 = wᵀKw: matrix products, no gathers.
    """
    n = k.shape[0]
    kw, lw = w @ k, w @ l
    quad = np.zeros((3, w.shape[0]))  # wᵀ(K∘L)w, wᵀ(K∘K)w, wᵀ(L∘L)w
    cols = _block_rows(n)
    for s in range(0, n, cols):
        kb, lb, wb = k[:, s : s + cols], l[:, s : s + cols], w[:, s : s + cols]
        for i, h in enumerate((kb * lb, kb * kb, lb * lb)):
            quad[i] += np.sum(wb * (w @ h), axis=1)
    ck, cl = np.sum(w * kw, axis=1), np.sum(w * lw, axis=1)
    hkl = quad[0] - 2 / n * np.sum(w * kw * lw, axis=1) + ck * cl / n**2
    hkk = quad[1] - 2 / n * np.sum(w * kw * kw, axis=1) + ck**2 / n**2
    hll = quad[2] - 2 / n * np.sum(w * lw * lw, axis=1) + cl**2 / n**2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((hkk > 0) & (hll > 0), hkl / np.sqrt(np.abs(hkk * hll)), np.nan)


def _cka_shuffled(k: np.ndarray, l: np.ndarray, pairings: np.ndarray) -> np.ndarray:
    """[P] CKA with image row π[i] matched to text row i, for each row π of pairings:
    Σ_ij K_ij L[π_i, π_j] (the denominators do not change), a block of rows at a time: L's
    rows gathered first (whole rows, contiguous copies), then each row's columns (within a
    row that sits in cache), twice as fast as one flat gather. This gather, n² elements per
    pairing, is still the null's cost: about 17 ms per pairing at n = 1,000 and 70 ms at
    2,000 on one core, n² from there (0.4 s at n = 5,000)."""
    n, rows = k.shape[0], _block_rows(k.shape[0])
    total = np.zeros(len(pairings))
    for i, pairing in enumerate(pairings):
        for s in range(0, n, rows):
            total[i] += _inner(k[s : s + rows], np.take(l[pairing[s : s + rows]], pairing, axis=1))
    return total / np.sqrt(_inner(k, k) * _inner(l, l))


# --- mutual k nearest neighbours --------------------------------------------------------

def _neighbours(u: np.ndarray, m: int, rows: np.ndarray | None = None) -> np.ndarray:
    """[rows, m] the m nearest other pairs of each pair by cosine, u [n, d] unit rows.

    Ties go to the lower pair index (a stable sort); a pair is never its own neighbour.
    """
    rows = np.arange(u.shape[0]) if rows is None else rows
    out = np.empty((rows.size, m), dtype=np.int64)
    step = _block_rows(u.shape[0])
    for s in range(0, rows.size, step):
        block = rows[s : s + step]
        sims = u[block] @ u.T
        sims[np.arange(block.size), block] = -np.inf
        out[s : s + step] = np.argsort(-sims, axis=1, kind="stable")[:, :m]
    return out


def _common(nx: np.ndarray, ny: np.ndarray, sx: np.ndarray | None = None, sy: np.ndarray | None = None) -> np.ndarray:
    """[n] Σ_ab [nx_ia = ny_ib] · min(sx_ia, sy_ib): the shared neighbours of each pair,
    each counted with its slots (1 when sx, sy are None)."""
    out = np.empty(nx.shape[0])
    step = _block_rows(nx.shape[1] * ny.shape[1])
    for s in range(0, nx.shape[0], step):
        same = nx[s : s + step, :, None] == ny[s : s + step, None, :]
        if sx is not None:
            same = same * np.minimum(sx[s : s + step, :, None], sy[s : s + step, None, :])
        out[s : s + step] = same.sum(axis=(1, 2))
    return out


def _slots(order: np.ndarray, w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Slots of the k nearest neighbours in a resample with counts w [n] (or [b, n]: b resamples).

    Walking a pair's neighbours nearest first, neighbour j fills min(w_j, what is left of k)
    slots: its w_j copies are w_j rows of the resample (tied, so a stable order fills them in
    the same way in both modalities). Copies of the pair itself are never its neighbours.
    Returns the slots [(b,) n, m] and which rows the m kept neighbours could not fill.
    """
    wo = w[..., order]
    before = np.cumsum(wo, axis=-1) - wo
    return np.clip(k - before, 0, wo), before[..., -1] + wo[..., -1] < k


def _matches(ox: np.ndarray, oy: np.ndarray) -> np.ndarray:
    """[n, m] where neighbour ox[i, a] stands in oy[i] (-1: not there). Found once for all
    resamples: the orders do not change, only the slots each neighbour fills."""
    out = np.full(ox.shape, -1, dtype=np.int64)
    step = _block_rows(ox.shape[1] * oy.shape[1])
    for s in range(0, ox.shape[0], step):
        same = ox[s : s + step, :, None] == oy[s : s + step, None, :]
        out[s : s + step] = np.where(same.any(axis=2), same.argmax(axis=2), -1)
    return out


def _knn_resampled(ux: np.ndarray, uy: np.ndarray, ox: np.ndarray, oy: np.ndarray, match: np.ndarray,
                   w: np.ndarray, k: int) -> np.ndarray:
    """[b] mutual k-NN of resamples (counts w [b, n]) given the prefix orders ox, oy [n, m]
    and their `_matches`: pair i shares Σ_a min(sx_ia, sy_i,match_ia) neighbour slots, each
    neighbour being at most once in a list. A few resamples at a time ([b, n, m] slots)."""
    n, m = ox.shape
    found, at = match >= 0, np.maximum(match, 0)
    out = np.empty(w.shape[0])
    step = max(1, BLOCK_ELEMENTS // (n * m))
    for s in range(0, w.shape[0], step):
        ws = w[s : s + step].astype(np.int32)  # counts: exact, and half the memory traffic
        sx, short_x = _slots(ox, ws, k)
        sy, short_y = _slots(oy, ws, k)
        shared = np.where(found, np.minimum(sx, np.take_along_axis(sy, np.broadcast_to(at, sy.shape), axis=2)), 0)
        common = shared.sum(axis=2)
        if m < n - 1:  # where the prefix ran out (rare): those rows from their full orders
            for j in np.flatnonzero(((short_x | short_y) & (ws > 0)).any(axis=1)):
                redo = np.flatnonzero((short_x[j] | short_y[j]) & (ws[j] > 0))
                fx, fy = _neighbours(ux, n - 1, redo), _neighbours(uy, n - 1, redo)
                common[j, redo] = _common(fx, fy, _slots(fx, ws[j], k)[0], _slots(fy, ws[j], k)[0])
        out[s : s + step] = np.sum(ws * common, axis=1) / (k * n)
    return out


def _knn_shuffled(nx: np.ndarray, ny: np.ndarray, pairings: np.ndarray, k: int) -> np.ndarray:
    """[P] mutual k-NN with image row π[i] matched to text row i, for each row π of pairings.

    Pair i's image neighbours are those of image π_i, named as the pairs they now are
    (π⁻¹ of them); a [n, n] table of text neighbourhoods (n² bytes) counts the shared ones
    by lookup, a few pairings at a time ([P, n, k] indices)."""
    n = nx.shape[0]
    member = np.zeros(n * n, dtype=bool)
    member[(np.arange(n)[:, None] * n + nx).ravel()] = True
    out = np.empty(len(pairings))
    step = max(1, BLOCK_ELEMENTS // (n * k))
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
    x, y = _pair_matrices(X, Y)
    n = x.shape[0]
    if n < MIN_PAIRS or not 1 <= k <= n - 2:
        return float("nan")
    nx, ny = _neighbours(_unit_rows(x, center), k), _neighbours(_unit_rows(y, center), k)
    return float(_common(nx, ny).mean() / k)


# --- cross-modal retrieval --------------------------------------------------------------

def _gallery_ranks(s: np.ndarray) -> np.ndarray:
    """[q, g] int32: R_ij = #(l: s_il >= s_ij), the rank of gallery item j for query i with
    ties counted against it (every tied item ranks above it)."""
    out = np.empty(s.shape, dtype=np.int32)
    g, step = s.shape[1], _block_rows(s.shape[1])
    for a in range(0, s.shape[0], step):
        block = np.ascontiguousarray(s[a : a + step])
        order = np.argsort(block, axis=1, kind="stable")
        v = np.take_along_axis(block, order, axis=1)
        starts = np.ones(v.shape, dtype=bool)
        starts[:, 1:] = v[:, 1:] != v[:, :-1]
        first = np.maximum.accumulate(np.where(starts, np.arange(g), 0), axis=1)  # of the tie run
        np.put_along_axis(out[a : a + step], order, (g - first).astype(np.int32), axis=1)
    return out


def _scores(ranks: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """[..., 3] top-1, top-5 accuracy and mean reciprocal rank of ranks [..., n], each query
    weighted by w [..., n] (its copies in a resample) when given."""
    w = np.ones(ranks.shape) if w is None else w
    n = w.sum(axis=-1)
    parts = [(ranks <= 1), (ranks <= 5), 1.0 / ranks]
    return np.stack([np.sum(w * p, axis=-1) / n for p in parts], axis=-1)


def _similarities(x: np.ndarray, y: np.ndarray, center: bool) -> np.ndarray:
    return _unit_rows(x, center) @ _unit_rows(y, center).T  # [caption, image]


def _chance(n: int) -> np.ndarray:
    return np.array([1 / n, min(5, n) / n, np.sum(1 / np.arange(1, n + 1)) / n])


def retrieval(X: np.ndarray, Y: np.ndarray, center: bool = True) -> dict[str, float]:
    """Cross-modal retrieval by cosine in the same neurons: each caption (row of X) ranks all
    images (rows of Y), and each image all captions; the rank of its own partner gives top-1,
    top-5 accuracy and mean reciprocal rank per direction, with chance 1/n, 5/n and H_n/n.

    Ties count against the query: rank = 1 + #(other items with similarity >= the partner's),
    so a degenerate layer (all similarities equal) scores rank n, never above chance.
    `center` (default) subtracts each modality's own mean first. Why: the two modalities'
    clouds sit apart (the "modality gap", Liang et al. 2022) and decoder neurons carry large
    shared offsets, so uncentred cosines are nearly the same for every caption-image
    combination and the ranking follows the offsets, not the pair; centring keeps what
    varies from pair to pair, the part CKA compares too. NaN for fewer than MIN_PAIRS pairs.
    """
    x, y = _pair_matrices(X, Y, same_width=True)
    n = x.shape[0]
    names = RETRIEVAL_NAMES
    if n < MIN_PAIRS:
        return {**dict.fromkeys(names, float("nan")), **dict.fromkeys((f"{a}_chance" for a in names), float("nan"))}
    s = _similarities(x, y, center)
    own = s.diagonal()
    values = np.concatenate([_scores((s >= own[:, None]).sum(axis=1)), _scores((s >= own[None, :]).sum(axis=0))])
    out = {name: float(v) for name, v in zip(names, values)}
    out.update({f"{name}_chance": float(c) for name, c in zip(names, np.tile(_chance(n), 2))})
    return out


def _retrieval_resampled(q: np.ndarray, w: np.ndarray) -> np.ndarray:
    """[B, 3] retrieval scores of resamples (counts w [B, n]) from query-by-gallery ranks q.

    A query's own partner is all copies of its pair; each other pair's copies are w_j
    distractors: rank = 1 + Σ_{j≠i} w_j [s_ij >= s_ii], and s_ij >= s_ii ⇔ q_ij <= q_ii.
    """
    n, ranks = q.shape[0], np.ones(w.shape)
    diag, step = q.diagonal(), _block_rows(q.shape[0])
    for a in range(0, n, step):
        ahead = (q[a : a + step] <= diag[a : a + step, None]).astype(np.float64)
        ahead[np.arange(ahead.shape[0]), np.arange(a, a + ahead.shape[0])] = 0.0
        ranks[:, a : a + step] += w @ ahead.T
    return _scores(ranks, w)


# --- bootstrap, null, summary -----------------------------------------------------------

def _resamples(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples of the pairs as counts [rows, n] float64, from the alignment
    bootstrap stream: `integers(0, n, size=(rows, n))` row after row, whatever the rows."""
    rng, rows = generator(seed, "alignment_bootstrap"), _block_rows(n, BOOT_CHUNK)
    for start in range(0, n_boot, rows):
        size = min(rows, n_boot - start)
        draw = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
        yield np.bincount(draw.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)


def _pairings(n: int, n_null: int, seed: int) -> Iterator[np.ndarray]:
    """Shuffled pairings as [rows, n] blocks: in row π, image row π[i] goes with caption i;
    from the alignment null stream, one `permutation(n)` per pairing."""
    rng, rows = generator(seed, "alignment_null"), _block_rows(n)
    for start in range(0, n_null, rows):
        yield np.array([rng.permutation(n) for _ in range(min(rows, n_null - start))]).reshape(-1, n)


def _summary(name: str, observed: float, boot: np.ndarray, null: np.ndarray, level: float) -> dict[str, float]:
    tails = [50 * (1 - level), 50 * (1 + level)]
    with warnings.catch_warnings():  # no replicates, or all NaN: NaN bounds
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(boot, tails) if boot.size else (np.nan, np.nan)
        null_low, null_high = np.nanpercentile(null, tails) if null.size else (np.nan, np.nan)
    hits = np.sum(null >= observed - _TIE * abs(observed))
    p = (1.0 + hits) / (null.size + 1) if np.isfinite(observed) else np.nan
    return {name: float(observed), f"{name}_low": float(low), f"{name}_high": float(high),
            f"{name}_null_low": float(null_low), f"{name}_null_high": float(null_high), f"{name}_p": float(p)}


def _knn_all(x, y, n_boot, n_null, seed, k, center):
    """Observed, [n_boot] and [n_null] mutual k-NN; neighbour lists cut to 2k + KNN_PREFIX."""
    n = x.shape[0]
    ux, uy = _unit_rows(x, center), _unit_rows(y, center)
    m = min(n - 1, 2 * k + KNN_PREFIX)
    ox, oy = _neighbours(ux, m), _neighbours(uy, m)
    nx, ny = ox[:, :k], oy[:, :k]
    match = _matches(ox, oy)
    boot = [_knn_resampled(ux, uy, ox, oy, match, ws, k) for ws in _resamples(n, n_boot, seed)]
    null = [_knn_shuffled(nx, ny, block, k) for block in _pairings(n, n_null, seed)]
    return (_common(nx, ny).mean() / k, np.concatenate(boot or [np.empty(0)]),
            np.concatenate(null or [np.empty(0)]))


def _cka_all(x, y, n_boot, n_null, seed):
    """Observed, [n_boot] and [n_null] CKA from the two centred Gram matrices."""
    xc, yc = _unit_centred(x), _unit_centred(y)
    if xc is None or yc is None:
        return np.nan, np.full(n_boot, np.nan), np.full(n_null, np.nan)
    k, l = xc @ xc.T, yc @ yc.T
    del xc, yc
    n = x.shape[0]
    boot = [_cka_resampled(k, l, w) for w in _resamples(n, n_boot, seed)]
    null = [_cka_shuffled(k, l, block) for block in _pairings(n, n_null, seed)]
    return _cka_from_grams(k, l), np.concatenate(boot or [np.empty(0)]), np.concatenate(null or [np.empty(0)])


def _retrieval_all(x, y, n_boot, n_null, seed, center):
    """Observed [6], [n_boot, 6] and [n_null, 6] retrieval (RETRIEVAL_NAMES' order), from the
    ranks of every image for every caption (r) and of every caption for every image (rt)."""
    s = _similarities(x, y, center)
    r, rt = _gallery_ranks(s), _gallery_ranks(s.T)
    del s
    n, rows = x.shape[0], np.arange(x.shape[0])
    boot = [np.hstack([_retrieval_resampled(r, w), _retrieval_resampled(rt, w)]) for w in _resamples(n, n_boot, seed)]
    null = [np.hstack([_scores(r[rows, block]), _scores(rt[block, rows])])  # caption i ↔ image π_i
            for block in _pairings(n, n_null, seed)]
    observed = np.concatenate([_scores(r.diagonal()), _scores(rt.diagonal())])
    return observed, np.vstack(boot or [np.empty((0, 6))]), np.vstack(null or [np.empty((0, 6))])


def alignment_with_uncertainty(X: np.ndarray, Y: np.ndarray, n_boot: int = 1000, n_null: int = 1000,
                               seed: int = 0, k: int = 10, center: bool = True,
                               level: float = 0.95) -> dict[str, float]:
    """CKA, mutual k-NN and retrieval of one layer, each with a bootstrap CI and a null.

    For each measure m in MEASURES: `m`, the percentile bootstrap CI `m_low`, `m_high`
    (pairs resampled with replacement, the same draw for text and image), the shuffled-
    pairing null band `m_null_low`, `m_null_high` (its central `level` share) and the
    one-sided p = (1 + #null >= observed) / (n_null + 1); `m_chance` for k-NN (k/(n-1)) and
    retrieval (1/n, 5/n, H_n/n); and n_pairs, k, n_boot, n_null. `center` as in
    `mutual_knn` and `retrieval` (CKA always centres).

    Duplicates in a resample. CKA is recomputed on the resample as it is (recentred on it).
    For k-NN and retrieval, the copies of a pair belong to it: never its own neighbours or
    distractors (a copy's twin, at similarity 1 in both modalities, would otherwise be a
    free shared neighbour). Each copy of another pair is one row of the resample: it fills
    one neighbour slot or is one distractor, so the pool keeps its n rows, and each copy of
    a pair is one query. k-NN and retrieval centre on the full sample's means.

    Read CKA's interval with care: linear CKA is biased upwards in finite samples, the more
    so the larger neurons / pairs, and a resample (about 0.63 n distinct pairs) is more
    biased than the sample, so the percentile interval sits above the estimate and, when
    neurons are not few next to pairs, can exclude it. The null band, at the same n and with
    the same bias, is the fair comparison. Everything is NaN for fewer than MIN_PAIRS pairs;
    k-NN is NaN unless 1 <= k <= n - 2.
    """
    x, y = _pair_matrices(X, Y, same_width=True)
    n = x.shape[0]
    ok, knn_ok = n >= MIN_PAIRS, n >= MIN_PAIRS and 1 <= k <= n - 2
    nan = (np.nan, np.full(n_boot, np.nan), np.full(n_null, np.nan))
    out = _summary("cka", *(_cka_all(x, y, n_boot, n_null, seed) if ok else nan), level)
    out.update(_summary("mutual_knn", *(_knn_all(x, y, n_boot, n_null, seed, k, center) if knn_ok else nan), level))
    out["mutual_knn_chance"] = k / (n - 1) if knn_ok else np.nan
    if ok:
        observed, boot, null = _retrieval_all(x, y, n_boot, n_null, seed, center)
    else:
        observed, boot, null = np.full(6, np.nan), np.full((n_boot, 6), np.nan), np.full((n_null, 6), np.nan)
    chance = np.tile(_chance(n), 2) if ok else np.full(6, np.nan)
    for j, name in enumerate(RETRIEVAL_NAMES):
        out.update(_summary(name, observed[j], boot[:, j], null[:, j], level))
        out[f"{name}_chance"] = float(chance[j])
    out.update({"n_pairs": n, "k": int(k), "n_boot": int(n_boot), "n_null": int(n_null)})
    return out
