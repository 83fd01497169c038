"""Linear CKA of the two modalities: the plug-in value, the debiased value and its interval.

- `linear_cka` (Kornblith et al. 2019): ||Ycᵀ Xc||²_F / (||Xcᵀ Xc||_F ||Ycᵀ Yc||_F), the
  plug-in (biased) estimate: HSIC estimated with the biased V-statistic tr(HKHL)/(n-1)², which
  adds a positive term of order d/n, so unrelated clouds of many neurons score far above 0.
- `debiased_cka`: the same ratio with each HSIC replaced by Song et al.'s (2012, eq. 5)
  unbiased estimator (Kornblith's `debiased=True`), with K̃, L̃ the Gram matrices of the pairs
  with their diagonals set to 0:
      HSIC_u(K, L) = [tr(K̃L̃) + 1ᵀK̃1 1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2) 1ᵀK̃L̃1] / (n(n-3)).
  Each HSIC_u is a U-statistic of order 4, unbiased for the population HSIC; the ratio is
  consistent for the population CKA (||Σ_xy||²_F / (||Σ_xx||_F ||Σ_yy||_F) for linear
  kernels) with a bias of order 1/n, and 0 in expectation's numerator when the two
  modalities are uncorrelated. HSIC_u is unchanged by a shift of either modality, so a pair
  left out needs no recentring.
- `debiased_cka_jackknife`: its delete-one jackknife standard error with half of Efron and
  Stein's (1981) second-order correction. The plain jackknife variance v_J over-counts the
  second-order (pair-interaction) part of the variance twice over; that part dominates when
  the true CKA is near 0 (the U-statistic is then degenerate), where the plain interval
  covers 99-100%. Efron and Stein's estimate of the excess is Σ_{i<j} D_ij²,
  D_ij = θ - θ_(i) - θ_(j) + θ_(ij) (θ_(ij): both pairs left out). Subtracting all of it is
  unbiased for the variance but noisy, and where the estimate is skewed (true CKA near 0,
  variance in few directions) its interval covered only 0.89-0.92; subtracting half keeps
  the variance estimate conservative in expectation and covered 0.95-0.99 at nominal 0.95 in
  every case of tests/stats/test_alignment_coverage.py (120-200 pairs, 40-300 neurons,
  true CKA 0-0.8). All n delete-one and n(n-1)/2 delete-two values come from closed-form
  updates of the sums that make up HSIC_u: O(n²) besides three n x n matrix products
  (K̃L̃, K̃K̃, L̃L̃); the delete-two values a block of rows at a time.
- `cka_shuffled`: both CKAs for shuffled pairings (the null), from one gather per pairing.
"""

from __future__ import annotations

import numpy as np

from modalscope.stats.alignment_common import MIN_PAIRS, pair_matrices
from modalscope.stats.blocks import block_rows

MIN_PAIRS_DEBIASED = 6  # HSIC_u needs n >= 4; its delete-two values n - 2 >= 4


def unit_centred(x: np.ndarray) -> np.ndarray | None:
    """Columns centred, scaled to Frobenius norm 1 (CKA is scale-free; this keeps sums tame)."""
    xc = x - x.mean(axis=0)
    flat = xc.reshape(-1)
    size = np.sqrt(np.dot(flat, flat))  # no squared copy
    if not size > 0:
        return None
    xc /= size
    return xc


def _inner(a: np.ndarray, b: np.ndarray) -> float:
    """Σ a∘b of two arrays of one shape (einsum: no temporary, and fast for small blocks)."""
    return float(np.einsum("ij,ij->", a, b))


def _cross_sq(a: np.ndarray, b: np.ndarray) -> float:
    """||aᵀ b||_F², a [n, p] and b [n, q], a block of a's columns at a time."""
    cols = block_rows(b.shape[1])
    return float(sum(np.sum((a[:, s : s + cols].T @ b) ** 2) for s in range(0, a.shape[1], cols)))


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Plug-in linear CKA of the rows of X [n, p] and Y [n, q]: ||Ycᵀ Xc||²_F / (||Xcᵀ Xc||_F ||Ycᵀ Yc||_F).

    Xc, Yc are column-centred. The feature form costs n(p² + pq + q²), the Gram form
    (tr(K L) with K = Xc Xcᵀ, L = Yc Ycᵀ, the same numbers) n²(p + q): the cheaper is used,
    a block at a time either way. NaN for fewer than MIN_PAIRS pairs or a constant matrix.
    Biased upwards in finite samples (see the module doc): `debiased_cka` is the estimate.
    """
    x, y = pair_matrices(X, Y)
    n, p, q = x.shape[0], x.shape[1], y.shape[1]
    xc, yc = (unit_centred(x), unit_centred(y)) if n >= MIN_PAIRS else (None, None)
    if xc is None or yc is None:
        return float("nan")
    if p * p + p * q + q * q <= n * (p + q):  # feature space
        cross, xx, yy = _cross_sq(xc, yc), _cross_sq(xc, xc), _cross_sq(yc, yc)
    else:  # Gram matrices, a block of rows at a time
        cross = xx = yy = 0.0
        rows = block_rows(n)
        for s in range(0, n, rows):
            k, l = xc[s : s + rows] @ xc.T, yc[s : s + rows] @ yc.T
            cross, xx, yy = cross + _inner(k, l), xx + _inner(k, k), yy + _inner(l, l)
    return float(cross / np.sqrt(xx * yy))


def grams(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The Gram matrices of the unit-centred pairs (None if either modality is constant)."""
    made = centred_grams(x, y)
    return None if made is None else made[2:]


def centred_grams(x: np.ndarray, y: np.ndarray):
    """(xc, yc, K, L): the unit-centred pairs (`unit_centred`) and their Grams K = xc xcᵀ,
    L = yc ycᵀ; None if either modality is constant. Retrieval's cosines are xc ycᵀ scaled by
    the rows' norms, sqrt(diag K) and sqrt(diag L), so the centred pairs serve all three measures."""
    xc, yc = unit_centred(x), unit_centred(y)
    return None if xc is None or yc is None else (xc, yc, xc @ xc.T, yc @ yc.T)


# --- unbiased HSIC and its leave-out updates -------------------------------------------

def _hsic_u(t, sk, sl, c, n):
    """Song et al.'s HSIC_u from tr(K̃L̃), 1ᵀK̃1, 1ᵀL̃1 and 1ᵀK̃L̃1 of n pairs (broadcasts)."""
    return (t + sk * sl / ((n - 1) * (n - 2)) - 2 * c / (n - 2)) / (n * (n - 3))


class _Sums:
    """The sums behind HSIC_u(K, L) of diagonal-free Grams K, L [..., n, n] (a stack of
    samples allowed) and their per-pair parts: row sums rk, rl; a_i = Σ_j K_ij L_ij; p = L rk,
    q = K rl; and the product M = K̃L̃ (M_ji = (L̃K̃)_ij), for the delete-two values."""

    def __init__(self, k: np.ndarray, l: np.ndarray):
        self.k, self.l, self.n = k, l, k.shape[-1]
        self.rk, self.rl = k.sum(axis=-1), l.sum(axis=-1)
        self.a = np.einsum("...ij,...ij->...i", k, l)
        self.t, self.sk, self.sl = self.a.sum(axis=-1), self.rk.sum(axis=-1), self.rl.sum(axis=-1)
        self.c = np.einsum("...i,...i->...", self.rk, self.rl)
        self.p = np.einsum("...ij,...j->...i", l, self.rk)
        self.q = np.einsum("...ij,...j->...i", k, self.rl)
        # a stack of small Grams (a simulation's samples): einsum spares each a BLAS call
        self.m = k @ l if k.ndim == 2 else np.einsum("...ij,...jk->...ik", k, l)

    def full(self) -> np.ndarray:
        return _hsic_u(self.t, self.sk, self.sl, self.c, self.n)

    def drop_one(self) -> np.ndarray:
        """[..., n] HSIC_u with pair j left out (its row and column of K̃ and L̃ removed)."""
        one = lambda v: v[..., None]  # noqa: E731
        t = one(self.t) - 2 * self.a
        sk, sl = one(self.sk) - 2 * self.rk, one(self.sl) - 2 * self.rl
        c = one(self.c) - self.q - self.p + self.a - self.rk * self.rl
        return _hsic_u(t, sk, sl, c, self.n - 1)

    def drop_two(self, rows: slice) -> np.ndarray:
        """[..., rows, n] HSIC_u with pairs i (in rows) and j left out (the diagonal i = j is junk)."""
        k, l = self.k[..., rows, :], self.l[..., rows, :]
        kl, lk = self.m[..., rows, :], np.swapaxes(self.m, -1, -2)[..., rows, :]  # (K̃L̃)_ij and (K̃L̃)_ji
        col = lambda v: v[..., rows][..., None]  # noqa: E731 (the i side of a per-pair part)
        row = lambda v: v[..., None, :]  # noqa: E731 (the j side)
        two = lambda v: v[..., None, None]  # noqa: E731 (a total)
        t = two(self.t) - 2 * col(self.a) - 2 * row(self.a) + 2 * k * l
        sk = two(self.sk) - 2 * col(self.rk) - 2 * row(self.rk) + 2 * k
        sl = two(self.sl) - 2 * col(self.rl) - 2 * row(self.rl) + 2 * l
        c = (two(self.c) - col(self.p) - row(self.p) - col(self.q) - row(self.q) + col(self.a) + row(self.a)
             + kl + lk - (col(self.rk) - k) * (col(self.rl) - l) - (row(self.rk) - k) * (row(self.rl) - l))
        return _hsic_u(t, sk, sl, c, self.n - 2)


def _ratio(kl, kk, ll):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((kk > 0) & (ll > 0), kl / np.sqrt(np.abs(kk * ll)), np.nan)


def _off_diagonal(k: np.ndarray) -> np.ndarray:
    out = k.copy()
    i = np.arange(k.shape[-1])
    out[..., i, i] = 0.0
    return out


def debiased_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Debiased linear CKA (unbiased HSIC, Song et al. 2012) of the rows of X [n, p] and Y [n, q].

    NaN for fewer than 4 pairs, a constant modality, or a non-positive HSIC_u(K, K) or
    HSIC_u(L, L) (possible only with very few pairs). Can be slightly below 0."""
    x, y = pair_matrices(X, Y)
    g = grams(x, y) if x.shape[0] >= 4 else None
    if g is None:
        return float("nan")
    k, l = (_off_diagonal(m) for m in g)
    return float(_ratio(_Sums(k, l).full(), _Sums(k, k).full(), _Sums(l, l).full()))


def debiased_cka_jackknife(k: np.ndarray, l: np.ndarray):
    """Debiased CKA of Grams K, L [n, n] (the unit-centred pairs'), its jackknife standard
    error with half the Efron-Stein correction and the plain jackknife one: (value, se,
    se_plain). A stack of Grams [..., n, n] gives arrays [...] of each (a simulation's samples
    at once).

    se² = v_J - ½ Σ_{i<j} D_ij², v_J = (n-1)/n Σ_j (θ_(j) - θ_(·))², D_ij = θ - θ_(i) - θ_(j) +
    θ_(ij) (module doc: why half); where that is not positive (a small-sample accident) se falls
    back to the plain jackknife's, which is conservative. NaN se below MIN_PAIRS_DEBIASED pairs."""
    n = k.shape[-1]
    kt, lt = _off_diagonal(k), _off_diagonal(l)
    sums = (_Sums(kt, lt), _Sums(kt, kt), _Sums(lt, lt))
    value = _ratio(*(m.full() for m in sums))
    if n < MIN_PAIRS_DEBIASED:
        nan = np.full(value.shape, np.nan)
        return _out(value, nan, nan)
    one = _ratio(*(m.drop_one() for m in sums))
    v_plain = (n - 1) / n * np.sum((one - one.mean(axis=-1, keepdims=True)) ** 2, axis=-1)
    second = np.zeros(value.shape)
    step = block_rows(8 * n * max(1, int(np.prod(value.shape))))
    diagonal = np.arange(n)
    for s in range(0, n, step):
        rows = slice(s, min(s + step, n))
        two = _ratio(*(m.drop_two(rows) for m in sums))
        d = value[..., None, None] - one[..., rows][..., None] - one[..., None, :] + two
        d[..., diagonal[rows] - s, diagonal[rows]] = 0.0
        second += np.sum(d**2, axis=(-1, -2))
    corrected = v_plain - second / 4  # half of Σ_{i<j} D², each pair counted twice over the rows
    with np.errstate(invalid="ignore"):
        se = np.where(corrected > 0, np.sqrt(np.where(corrected > 0, corrected, 0.0)), np.sqrt(v_plain))
    return _out(value, se, np.sqrt(v_plain))


def _out(*arrays):
    return tuple(float(a) if np.ndim(a) == 0 else a for a in arrays)


def cka_shuffled(k: np.ndarray, l: np.ndarray, pairings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[P] plug-in and [P] debiased CKA with image row π[i] matched to text row i, for each
    row π of pairings, from the unit-centred Grams K, L.

    Both need Σ_ij K_ij L[π_i, π_j], a block of rows at a time: L's rows gathered first (whole
    rows, contiguous copies), then each row's columns (within a row that sits in cache). This
    gather, n² elements per pairing, is the null's cost: about 17 ms per pairing at n = 1,000
    on one core. The debiased one also needs Σ_i K_ii L[π_i, π_i] and Σ_i (K̃1)_i (L̃1)_{π_i}
    (row sums of the centred Grams are 0, so K̃1 = -diag K): O(n) more."""
    n, rows = k.shape[0], block_rows(k.shape[0])
    total = np.zeros(len(pairings))
    for i, pairing in enumerate(pairings):
        for s in range(0, n, rows):
            total[i] += _inner(k[s : s + rows], np.take(l[pairing[s : s + rows]], pairing, axis=1))
    plug_in = total / np.sqrt(_inner(k, k) * _inner(l, l))
    dk, dl = np.diagonal(k), np.diagonal(l)
    rk, rl = k.sum(axis=1) - dk, l.sum(axis=1) - dl
    t = total - dl[pairings] @ dk
    c = rl[pairings] @ rk
    kt, lt = _off_diagonal(k), _off_diagonal(l)
    kk, ll = _Sums(kt, kt).full(), _Sums(lt, lt).full()
    debiased = _ratio(_hsic_u(t, rk.sum(), rl.sum(), c, n), kk, ll) if n >= 4 else np.full(len(pairings), np.nan)
    return plug_in, np.broadcast_to(debiased, plug_in.shape).astype(float)
