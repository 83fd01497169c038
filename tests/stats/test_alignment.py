"""Layer alignment (stats/alignment.py): linear CKA against the HSIC form with an explicit
centring matrix, mutual k-NN and retrieval against double loops, the bootstrap and the
shuffled-pairing null against replicates rebuilt by brute force from numpy's own seed
children, uniform p-values without alignment and a planted alignment far above its null."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats as sps

from modalscope.stats import alignment
from modalscope.stats.alignment import (
    MEASURES,
    alignment_with_uncertainty,
    linear_cka,
    mutual_knn,
    retrieval,
)

NAMES = [f"{m}_{d}" for d in ("text_to_image", "image_to_text") for m in ("top1", "top5", "mrr")]


# --- independent references -------------------------------------------------------------

def reference_cka(X, Y):
    """Kornblith et al. 2019, eq. 3-4: HSIC(K, L) = tr(K H L H) / (n-1)², H = I - 11ᵀ/n."""
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T
    hsic = lambda a, b: np.trace(a @ H @ b @ H) / (n - 1) ** 2  # noqa: E731
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def unit(X, center):
    """Rows as unit vectors (after centring each column on the full sample, if asked)."""
    X = np.array(X, dtype=float)
    if center:
        X = X - X.sum(axis=0) / len(X)
    out = np.zeros_like(X)
    for i, row in enumerate(X):
        norm = np.sqrt(sum(v * v for v in row))
        out[i] = row / norm if norm > 0 else row
    return out


def cos(u, i, v, j):
    return float(sum(a * b for a, b in zip(u[i], v[j])))


def brute_knn(ux, uy, k, draw=None):
    """Mean over the rows of a sample (row a is pair draw[a]) of |N_X ∩ N_Y| / k, where N is
    the k rows nearest by cosine among rows of *other* pairs, ties by pair index then row."""
    draw = list(range(len(ux))) if draw is None else list(draw)
    total = 0.0
    for i in draw:
        def nearest(u):
            rows = [b for b, j in enumerate(draw) if j != i]
            rows.sort(key=lambda b: (-cos(u, i, u, draw[b]), draw[b], b))
            return set(rows[:k])
        total += len(nearest(ux) & nearest(uy)) / k
    return total / len(draw)


def brute_retrieval(ux, uy, draw=None):
    """[6] top-1, top-5, MRR text→image then image→text over the rows of a sample: rank =
    1 + #(rows of other pairs at similarity >= the own pair's), ties against the query."""
    draw = list(range(len(ux))) if draw is None else list(draw)
    out = []
    for query, gallery in ((ux, uy), (uy, ux)):
        ranks = [1 + sum(1 for j in draw if j != i and cos(query, i, gallery, j) >= cos(query, i, gallery, i))
                 for i in draw]
        out += [np.mean([r == 1 for r in ranks]), np.mean([r <= 5 for r in ranks]),
                np.mean([1 / r for r in ranks])]
    return np.array(out)


def numpy_child(seed, index):
    """numpy's own: child `index` of SeedSequence(seed), as seeds.py promises (3 and 4)."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(index + 1)[index])


def paired(n, d, seed, noise=1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + 5.0  # an offset shared by all pairs, as decoder neurons have
    return x, x @ (np.eye(d) + 0.3 * rng.normal(size=(d, d)) / np.sqrt(d)) + noise * rng.normal(size=(n, d))


# --- CKA --------------------------------------------------------------------------------

@pytest.mark.parametrize("n, p, q", [(60, 7, 5), (50, 9, 9), (12, 40, 30), (9, 25, 25)])
@pytest.mark.parametrize("blocks", ["whole", "tiny"])
def test_linear_cka_equals_the_hsic_reference_for_n_above_and_below_d(n, p, q, blocks, monkeypatch):
    if blocks == "tiny":  # one row / column per block: the blocked sums add up the same
        monkeypatch.setattr(alignment, "BLOCK_ELEMENTS", 1)
    rng = np.random.default_rng(n + p)
    X = rng.normal(size=(n, p)) + 3.0
    Y = X[:, :q] @ rng.normal(size=(q, q)) + rng.normal(size=(n, q))
    assert linear_cka(X, Y) == pytest.approx(reference_cka(X, Y), rel=1e-10)
    Z = rng.normal(size=(n, q))
    assert linear_cka(X, Z) == pytest.approx(reference_cka(X, Z), rel=1e-10)


def test_linear_cka_takes_the_cheaper_form(monkeypatch):
    """Feature form when p² + pq + q² <= n(p + q), Gram form otherwise (same value)."""
    calls = []
    original = alignment._cross_sq
    monkeypatch.setattr(alignment, "_cross_sq", lambda a, b: calls.append(a.shape) or original(a, b))
    rng = np.random.default_rng(1)
    linear_cka(rng.normal(size=(50, 4)), rng.normal(size=(50, 6)))
    assert len(calls) == 3  # feature space: ||XᵀY||, ||XᵀX||, ||YᵀY||
    linear_cka(rng.normal(size=(6, 50)), rng.normal(size=(6, 40)))
    assert len(calls) == 3  # Gram form: no feature-space product


def test_linear_cka_invariances_and_identity():
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(40, 12)), rng.normal(size=(40, 8))
    Q = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    base = linear_cka(X, Y)
    assert linear_cka(X @ Q, Y) == pytest.approx(base, rel=1e-10)  # orthogonal transform
    assert linear_cka(3.7 * X, 1e-3 * Y) == pytest.approx(base, rel=1e-10)  # isotropic scale
    assert linear_cka(X + 100.0, Y - 7.0) == pytest.approx(base, rel=1e-8)  # translation
    assert linear_cka(X, X) == pytest.approx(1.0, rel=1e-12)
    assert linear_cka(X, 2.0 * X @ Q + 1.0) == pytest.approx(1.0, rel=1e-10)
    scaled = X * np.linspace(0.1, 3.0, 12)  # not invariant to an anisotropic scaling
    assert abs(linear_cka(scaled, X) - 1.0) > 1e-3


# --- mutual k-NN and retrieval ----------------------------------------------------------

@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("k", [1, 4])
def test_mutual_knn_equals_a_double_loop(center, k):
    X, Y = paired(30, 6, 3)
    got = mutual_knn(X, Y, k=k, center=center)
    assert got == pytest.approx(brute_knn(unit(X, center), unit(Y, center), k), abs=1e-12)
    assert 0.0 <= got <= 1.0


def test_mutual_knn_ties_go_to_the_lower_pair_index():
    """Text rows one-hot in 4 groups: cosines are exactly 1 within a group and 0 across,
    so pair i's text neighbours are the lowest other indices of its group (then of the
    rest); the answer is known by hand. 60 pairs: past a sort's small-array cut-off, an
    unstable sort would scramble the ties."""
    n, k = 60, 6
    group = np.arange(n) % 4
    X, Y = np.eye(4)[group], np.random.default_rng(4).normal(size=(n, 3))
    Y[:, 0] += group  # images drawn towards their group, so the two neighbour sets overlap
    uy = unit(Y, False)
    expected = 0.0
    for i in range(n):
        text = sorted((j for j in range(n) if j != i), key=lambda j: (group[j] != group[i], j))[:k]
        image = sorted((j for j in range(n) if j != i), key=lambda j: -cos(uy, i, uy, j))[:k]
        expected += len(set(text) & set(image)) / k / n
    assert 0 < expected < 1
    assert mutual_knn(X, Y, k=k, center=False) == pytest.approx(expected, abs=1e-12)
    assert mutual_knn(np.eye(n), np.eye(n), k=3, center=False) == 1.0


@pytest.mark.parametrize("center", [True, False])
def test_retrieval_equals_a_double_loop(center):
    X, Y = paired(25, 8, 5, noise=2.0)
    got = retrieval(X, Y, center=center)
    want = brute_retrieval(unit(X, center), unit(Y, center))
    assert [got[name] for name in NAMES] == pytest.approx(list(want), abs=1e-12)
    n = 25
    chance = [1 / n, 5 / n, sum(1 / r for r in range(1, n + 1)) / n]
    assert [got[f"{name}_chance"] for name in NAMES] == pytest.approx(chance * 2, rel=1e-12)


def test_retrieval_counts_ties_against_the_query():
    """Exact cosines of 0 and 1: image 1 is a copy of image 0, so caption 0's own image ties
    with it (rank 2), and caption 1 sees four images at cosine 0 (rank 4)."""
    X = np.eye(4)
    Y = np.eye(4)[[0, 0, 2, 3]]
    got = retrieval(X, Y, center=False)
    ranks_t2i = np.array([2, 4, 1, 1])
    ranks_i2t = np.array([1, 4, 1, 1])  # image 1 (= e0) sees its caption e1 at 0, tied by 3
    for prefix, ranks in (("text_to_image", ranks_t2i), ("image_to_text", ranks_i2t)):
        assert got[f"top1_{prefix}"] == pytest.approx(np.mean(ranks == 1))
        assert got[f"top5_{prefix}"] == 1.0
        assert got[f"mrr_{prefix}"] == pytest.approx(np.mean(1 / ranks))
    flat = retrieval(np.ones((6, 3)), np.ones((6, 3)))  # centred to 0: every cosine ties
    assert flat["top1_text_to_image"] == 0.0 and flat["mrr_image_to_text"] == pytest.approx(1 / 6)


# --- bootstrap and null ------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["default", "short"])
def test_bootstrap_and_null_equal_brute_force_replicates(prefix, monkeypatch):
    """Every interval, band and p rebuilt from the documented draws: resamples
    `integers(0, n, (n_boot, n))` of child 3, pairings `permutation(n)` of child 4. "short"
    keeps only 2k neighbours per pair, so resamples often need the full-order fallback, and
    cuts every array into blocks of a few rows (the same streams, cut differently)."""
    n, k, n_boot, n_null, seed, level = 24, 3, 30, 30, 5, 0.9
    if prefix == "short":
        monkeypatch.setattr(alignment, "KNN_PREFIX", 0)
        monkeypatch.setattr(alignment, "BOOT_CHUNK", 7)
        monkeypatch.setattr(alignment, "BLOCK_ELEMENTS", 50)  # every loop in blocks of a few rows
        fallbacks = []
        original = alignment._neighbours
        monkeypatch.setattr(alignment, "_neighbours",
                            lambda u, m, rows=None: fallbacks.append(rows is not None) or original(u, m, rows))
    X, Y = paired(n, 5, 6, noise=1.5)
    got = alignment_with_uncertainty(X, Y, n_boot=n_boot, n_null=n_null, seed=seed, k=k, level=level)
    if prefix == "short":
        assert any(fallbacks)

    ux, uy = unit(X, True), unit(Y, True)
    draws = numpy_child(seed, 3).integers(0, n, size=(n_boot, n))
    rng = numpy_child(seed, 4)
    pairings = [rng.permutation(n) for _ in range(n_null)]
    observed = {"cka": reference_cka(X, Y), "mutual_knn": brute_knn(ux, uy, k),
                **dict(zip(NAMES, brute_retrieval(ux, uy)))}
    boot = {"cka": [reference_cka(X[d], Y[d]) for d in draws],
            "mutual_knn": [brute_knn(ux, uy, k, d) for d in draws]}
    null = {"cka": [reference_cka(X, Y[p]) for p in pairings],
            "mutual_knn": [brute_knn(ux, uy[p], k) for p in pairings]}
    ret_boot = np.array([brute_retrieval(ux, uy, d) for d in draws])
    ret_null = np.array([brute_retrieval(ux, uy[p]) for p in pairings])
    for j, name in enumerate(NAMES):
        boot[name], null[name] = ret_boot[:, j], ret_null[:, j]

    tails = [50 * (1 - level), 50 * (1 + level)]
    assert set(MEASURES) == set(observed)
    for name in MEASURES:
        low, high = np.percentile(boot[name], tails)
        null_low, null_high = np.percentile(null[name], tails)
        p = (1 + np.sum(np.array(null[name]) >= observed[name] - 1e-9)) / (n_null + 1)
        assert got[name] == pytest.approx(observed[name], rel=1e-10, abs=1e-12), name
        assert (got[f"{name}_low"], got[f"{name}_high"]) == pytest.approx((low, high), rel=1e-9, abs=1e-12), name
        assert (got[f"{name}_null_low"], got[f"{name}_null_high"]) == pytest.approx(
            (null_low, null_high), rel=1e-9, abs=1e-12), name
        assert got[f"{name}_p"] == pytest.approx(p), name
    assert got["mutual_knn_chance"] == pytest.approx(k / (n - 1))
    assert (got["n_pairs"], got["k"], got["n_boot"], got["n_null"]) == (n, k, n_boot, n_null)


def test_observed_values_are_the_plain_measures():
    X, Y = paired(40, 10, 7)
    got = alignment_with_uncertainty(X, Y, n_boot=5, n_null=5, seed=1, k=5)
    assert got["cka"] == pytest.approx(linear_cka(X, Y), rel=1e-10)
    assert got["mutual_knn"] == mutual_knn(X, Y, k=5)
    plain = retrieval(X, Y)
    for name in NAMES:
        assert got[name] == plain[name] and got[f"{name}_chance"] == plain[f"{name}_chance"]
    again = alignment_with_uncertainty(X, Y, n_boot=5, n_null=5, seed=1, k=5)
    assert again == got  # seeded: the same draws every time
    other = alignment_with_uncertainty(X, Y, n_boot=5, n_null=5, seed=2, k=5)
    assert other["cka_low"] != got["cka_low"] and other["cka_null_low"] != got["cka_null_low"]


def test_null_p_values_are_uniform_without_alignment():
    """Independent text and image: the shuffled-pairing p of the continuous measures is
    uniform (KS) and that of the discrete ones never below it (P(p <= a) <= a)."""
    p = {name: [] for name in MEASURES}
    for seed in range(200):
        rng = np.random.default_rng(10_000 + seed)
        got = alignment_with_uncertainty(rng.normal(size=(16, 4)), rng.normal(size=(16, 4)),
                                         n_boot=0, n_null=99, seed=seed, k=3)
        for name in MEASURES:
            p[name].append(got[f"{name}_p"])
    for name in ("cka", "mrr_text_to_image", "mrr_image_to_text"):
        assert sps.kstest(p[name], "uniform").pvalue > 0.01, name
    for name in MEASURES:
        values = np.array(p[name])
        for a in (0.05, 0.1, 0.25, 0.5):
            assert np.mean(values <= a) <= a + 3 * np.sqrt(a * (1 - a) / 200), (name, a)


def test_planted_alignment_is_far_above_the_null_band():
    """Y = X R + noise with R near the identity: every measure's CI lies above its null band.
    With R a full rotation, CKA and k-NN (rotation-free) stay, retrieval (same neurons) goes."""
    n, d = 80, 20
    X, Y = paired(n, d, 8, noise=0.5)
    got = alignment_with_uncertainty(X, Y, n_boot=200, n_null=200, seed=3, k=5)
    for name in ("cka", "mutual_knn", "top1_text_to_image", "top1_image_to_text", "mrr_text_to_image"):
        assert got[f"{name}_low"] > got[f"{name}_null_high"] + 0.1, name
        assert got[f"{name}_p"] == pytest.approx(1 / 201), name
    assert got["top1_text_to_image"] > 10 * got["top1_text_to_image_chance"]
    assert got["mutual_knn_null_low"] <= got["mutual_knn_chance"] <= got["mutual_knn_null_high"]

    Q = np.linalg.qr(np.random.default_rng(9).normal(size=(d, d)))[0]
    rotated = alignment_with_uncertainty(X, Y @ Q, n_boot=0, n_null=200, seed=3, k=5)
    assert rotated["cka"] == pytest.approx(got["cka"], rel=1e-9)
    assert rotated["mutual_knn"] > rotated["mutual_knn_null_high"] + 0.1
    assert rotated["top1_text_to_image"] < 0.1


# --- degenerate input --------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 2])
def test_fewer_than_three_pairs_give_nan_without_warnings(n):
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = alignment_with_uncertainty(X, Y, n_boot=10, n_null=10, seed=0)
        assert np.isnan(linear_cka(X, Y)) and np.isnan(mutual_knn(X, Y))
        assert all(np.isnan(v) for v in retrieval(X, Y).values())
    for name in MEASURES:
        for suffix in ("", "_low", "_high", "_null_low", "_null_high", "_p"):
            assert np.isnan(got[name + suffix]), name + suffix
    assert got["n_pairs"] == n


def test_constant_modality_and_too_large_k():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(10, 3)), np.ones((10, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = alignment_with_uncertainty(X, Y, n_boot=20, n_null=20, seed=0, k=8)
    assert np.isnan(got["cka"]) and np.isnan(got["cka_low"]) and np.isnan(got["cka_p"])
    assert got["mutual_knn"] == pytest.approx(brute_knn(unit(X, True), unit(Y, True), 8))
    assert got["top1_text_to_image"] == 0.0  # all image cosines 0: ties, rank n
    assert got["top1_text_to_image_p"] == 1.0  # every pairing ties with it: all count
    assert np.isnan(mutual_knn(X, X, k=9)) and np.isnan(alignment_with_uncertainty(X, X, 5, 5, k=9)["mutual_knn"])
    assert mutual_knn(X, X, k=8) == 1.0


def test_bad_input_is_one_clear_error():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(10, 4))
    with pytest.raises(ValueError, match="same pairs"):
        linear_cka(X, X[:9])
    with pytest.raises(ValueError, match="NaN"):
        mutual_knn(X, np.where(X > 1, np.nan, X))
    with pytest.raises(ValueError, match="same neurons"):
        retrieval(X, X[:, :3])
    with pytest.raises(ValueError, match="same neurons"):
        alignment_with_uncertainty(X, X[:, :3])
