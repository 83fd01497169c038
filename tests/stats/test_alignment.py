"""Layer alignment (stats/alignment*.py): plug-in linear CKA against the HSIC form with an
explicit centring matrix, debiased CKA against Song et al.'s U-statistic summed over every
4-tuple and its jackknife against deleted samples recomputed by brute force, mutual k-NN and
retrieval against double loops, the shuffled-pairing null against replicates rebuilt from
numpy's own seed child, uniform p-values without alignment and a planted alignment far above
its null. Coverage of the interval: test_alignment_coverage.py."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from modalscope.stats import alignment_cka, alignment_knn
from modalscope.stats import blocks as stats_blocks
from modalscope.stats.alignment import (
    MEASURES,
    WITH_INTERVAL,
    alignment_with_uncertainty,
    debiased_cka,
    linear_cka,
    mutual_knn,
    retrieval,
)
from modalscope.stats.alignment_cka import debiased_cka_jackknife, grams
from modalscope.stats.alignment_knn import gram_neighbours, neighbours
from modalscope.stats.alignment_retrieval import MIN_OUTCOMES, jackknife_se

NAMES = [f"{m}_{d}" for d in ("text_to_image", "image_to_text") for m in ("top1", "top5", "mrr")]


# --- independent references -------------------------------------------------------------

def reference_cka(X, Y):
    """Kornblith et al. 2019, eq. 3-4: HSIC(K, L) = tr(K H L H) / (n-1)², H = I - 11ᵀ/n."""
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T
    hsic = lambda a, b: np.trace(a @ H @ b @ H) / (n - 1) ** 2  # noqa: E731
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def song_hsic(X, Y):
    """Song et al. 2012, Theorem 2: the U-statistic (1/(n)_4) Σ over ordered 4-tuples of
    distinct pairs (i, j, q, r) of K_ij L_ij + K_ij L_qr - 2 K_ij L_iq, linear kernels on the
    raw (uncentred) rows: a loop, sharing nothing with the closed form in alignment_cka.py."""
    n = len(X)
    K, L = X @ X.T, Y @ Y.T
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2 * K[i, j] * L[i, q]
        count += 1
    return total / count


def reference_debiased_cka(X, Y):
    return song_hsic(X, Y) / np.sqrt(song_hsic(X, X) * song_hsic(Y, Y))


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
        monkeypatch.setattr(stats_blocks, "BLOCK_ELEMENTS", 1)
    rng = np.random.default_rng(n + p)
    X = rng.normal(size=(n, p)) + 3.0
    Y = X[:, :q] @ rng.normal(size=(q, q)) + rng.normal(size=(n, q))
    assert linear_cka(X, Y) == pytest.approx(reference_cka(X, Y), rel=1e-10)
    Z = rng.normal(size=(n, q))
    assert linear_cka(X, Z) == pytest.approx(reference_cka(X, Z), rel=1e-10)


def test_linear_cka_takes_the_cheaper_form(monkeypatch):
    """Feature form when p² + pq + q² <= n(p + q), Gram form otherwise (same value)."""
    calls = []
    original = alignment_cka._cross_sq
    monkeypatch.setattr(alignment_cka, "_cross_sq", lambda a, b: calls.append(a.shape) or original(a, b))
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


@pytest.mark.parametrize("n, p, q, shift", [(8, 3, 4, 2.0), (9, 12, 5, -7.0), (7, 2, 2, 0.0)])
def test_debiased_cka_equals_song_et_al_u_statistic(n, p, q, shift):
    """To 1e-10, in pairs fewer and more than neurons, shifted or not (HSIC_u is unchanged by a
    shift, so the loop over raw rows and the centred closed form must agree)."""
    rng = np.random.default_rng(n * p + q)
    X = rng.normal(size=(n, p)) + shift
    Y = X[:, :1] @ rng.normal(size=(1, q)) + rng.normal(size=(n, q))
    assert debiased_cka(X, Y) == pytest.approx(reference_debiased_cka(X, Y), rel=1e-10, abs=1e-12)
    Z = rng.normal(size=(n, q)) - shift
    assert debiased_cka(X, Z) == pytest.approx(reference_debiased_cka(X, Z), rel=1e-10, abs=1e-12)


def test_debiased_cka_invariances_and_bias():
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(40, 12)), rng.normal(size=(40, 8))
    Q = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    base = debiased_cka(X, Y)
    assert debiased_cka(X @ Q, Y) == pytest.approx(base, rel=1e-9)
    assert debiased_cka(3.7 * X + 5.0, 1e-3 * Y) == pytest.approx(base, rel=1e-8)
    assert debiased_cka(X, 2.0 * X @ Q + 1.0) == pytest.approx(1.0, rel=1e-10)
    wide_x, wide_y = rng.normal(size=(60, 200)), rng.normal(size=(60, 200))  # unrelated, many neurons
    assert linear_cka(wide_x, wide_y) > 0.5 and abs(debiased_cka(wide_x, wide_y)) < 0.05


def test_debiased_cka_jackknife_equals_deleted_samples_recomputed():
    """θ_(j) and θ_(ij) from the closed-form updates equal debiased_cka of the deleted samples
    (recentred), so se² = (n-1)/n Σ (θ_(j) - θ_(·))² - ½ Σ_{i<j} (θ - θ_(i) - θ_(j) + θ_(ij))²."""
    rng = np.random.default_rng(5)
    n = 14
    X = rng.normal(size=(n, 4)) + 1.0
    Y = X @ rng.normal(size=(4, 3)) + 2 * rng.normal(size=(n, 3))
    value, se, se_plain = debiased_cka_jackknife(*grams(X, Y))
    one = np.array([debiased_cka(np.delete(X, j, 0), np.delete(Y, j, 0)) for j in range(n)])
    v_plain = (n - 1) / n * np.sum((one - one.mean()) ** 2)
    second = sum((value - one[i] - one[j] + debiased_cka(np.delete(X, [i, j], 0), np.delete(Y, [i, j], 0))) ** 2
                 for i in range(n) for j in range(i + 1, n))
    assert value == pytest.approx(debiased_cka(X, Y), rel=1e-12)
    assert se_plain == pytest.approx(np.sqrt(v_plain), rel=1e-9)
    assert v_plain > second and se == pytest.approx(np.sqrt(v_plain - second / 2), rel=1e-9)


def test_debiased_cka_jackknife_in_blocks(monkeypatch):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(20, 5))
    Y = X + rng.normal(size=(20, 5))
    whole = debiased_cka_jackknife(*grams(X, Y))
    monkeypatch.setattr(stats_blocks, "BLOCK_ELEMENTS", 1)  # one row per block
    assert debiased_cka_jackknife(*grams(X, Y)) == pytest.approx(whole, rel=1e-12)


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

@pytest.mark.parametrize("blocks", ["whole", "tiny"])
def test_null_and_interval_equal_brute_force_replicates(blocks, monkeypatch):
    """Every band and p rebuilt from the documented draws: pairings `permutation(n)` of child
    4; the debiased CKA's interval is value ± z se with se from the deleted samples. "tiny"
    cuts every array into blocks of a few rows (the same stream, cut differently)."""
    n, k, n_null, seed, level = 24, 3, 30, 5, 0.9
    if blocks == "tiny":
        monkeypatch.setattr(stats_blocks, "BLOCK_ELEMENTS", 50)
    X, Y = paired(n, 5, 6, noise=1.5)
    got = alignment_with_uncertainty(X, Y, n_null=n_null, seed=seed, k=k, level=level)

    ux, uy = unit(X, True), unit(Y, True)
    rng = numpy_child(seed, 4)
    pairings = [rng.permutation(n) for _ in range(n_null)]
    observed = {"cka": reference_cka(X, Y), "cka_debiased": debiased_cka(X, Y), "mutual_knn": brute_knn(ux, uy, k),
                **dict(zip(NAMES, brute_retrieval(ux, uy)))}
    null = {"cka": [reference_cka(X, Y[p]) for p in pairings],
            "cka_debiased": [debiased_cka(X, Y[p]) for p in pairings],
            "mutual_knn": [brute_knn(ux, uy[p], k) for p in pairings]}
    ret_null = np.array([brute_retrieval(ux, uy[p]) for p in pairings])
    for j, name in enumerate(NAMES):
        null[name] = ret_null[:, j]

    tails = [50 * (1 - level), 50 * (1 + level)]
    assert set(MEASURES) == set(observed)
    for name in MEASURES:
        null_low, null_high = np.percentile(null[name], tails)
        p = (1 + np.sum(np.array(null[name]) >= observed[name] - 1e-9)) / (n_null + 1)
        assert got[name] == pytest.approx(observed[name], rel=1e-10, abs=1e-12), name
        assert (got[f"{name}_null_low"], got[f"{name}_null_high"]) == pytest.approx(
            (null_low, null_high), rel=1e-9, abs=1e-12), name
        assert got[f"{name}_p"] == pytest.approx(p), name
        if name not in WITH_INTERVAL or name.startswith(("top1", "mrr")):  # none; retrieval's: < 10 hits here
            assert np.isnan([got[f"{name}_se"], got[f"{name}_low"], got[f"{name}_high"]]).all(), name
    se = debiased_cka_jackknife(*grams(X, Y))[1]
    z = sps.norm.ppf(0.95)
    assert got["cka_debiased_se"] == pytest.approx(se, rel=1e-9)
    assert (got["cka_debiased_low"], got["cka_debiased_high"]) == pytest.approx(
        (observed["cka_debiased"] - z * se, observed["cka_debiased"] + z * se), rel=1e-9)
    assert got["mutual_knn_chance"] == pytest.approx(k / (n - 1))
    assert (got["n_pairs"], got["k"], got["n_null"]) == (n, k, n_null)


def test_observed_values_are_the_plain_measures():
    X, Y = paired(40, 10, 7)
    got = alignment_with_uncertainty(X, Y, n_null=5, seed=1, k=5)
    assert got["cka"] == pytest.approx(linear_cka(X, Y), rel=1e-10)
    assert got["cka_debiased"] == pytest.approx(debiased_cka(X, Y), rel=1e-10)
    assert got["mutual_knn"] == mutual_knn(X, Y, k=5)
    plain = retrieval(X, Y)
    for name in NAMES:
        assert got[name] == plain[name] and got[f"{name}_chance"] == plain[f"{name}_chance"]
    again = alignment_with_uncertainty(X, Y, n_boot=7, n_null=5, seed=1, k=5)  # n_boot: ignored
    assert again.keys() == got.keys()
    assert all(again[key] == got[key] or (np.isnan(again[key]) and np.isnan(got[key])) for key in got)
    other = alignment_with_uncertainty(X, Y, n_null=5, seed=2, k=5)
    assert other["cka_debiased_low"] == got["cka_debiased_low"]  # the jackknife draws nothing
    assert other["cka_null_low"] != got["cka_null_low"]


def test_null_p_values_are_uniform_without_alignment():
    """Independent text and image: the shuffled-pairing p of the continuous measures is
    uniform (KS) and that of the discrete ones never below it (P(p <= a) <= a)."""
    p = {name: [] for name in MEASURES}
    for seed in range(200):
        rng = np.random.default_rng(10_000 + seed)
        got = alignment_with_uncertainty(rng.normal(size=(16, 4)), rng.normal(size=(16, 4)),
                                         n_null=99, seed=seed, k=3)
        for name in MEASURES:
            p[name].append(got[f"{name}_p"])
    for name in ("cka", "cka_debiased", "mrr_text_to_image", "mrr_image_to_text"):
        assert sps.kstest(p[name], "uniform").pvalue > 0.01, name
    for name in MEASURES:
        values = np.array(p[name])
        for a in (0.05, 0.1, 0.25, 0.5):
            assert np.mean(values <= a) <= a + 3 * np.sqrt(a * (1 - a) / 200), (name, a)


def test_planted_alignment_is_far_above_the_null_band():
    """Y = X R + noise with R near the identity: every measure lies far above its null band,
    the debiased CKA's interval too. With R a full rotation, CKA and k-NN (rotation-free)
    stay, retrieval (same neurons) goes."""
    n, d = 80, 20
    X, Y = paired(n, d, 8, noise=0.5)
    got = alignment_with_uncertainty(X, Y, n_null=200, seed=3, k=5)
    assert got["cka_debiased_low"] > got["cka_debiased_null_high"] + 0.1
    for name in ("cka", "cka_debiased", "mutual_knn", "top1_text_to_image", "top1_image_to_text",
                 "mrr_text_to_image"):
        assert got[name] > got[f"{name}_null_high"] + 0.1, name
        assert got[f"{name}_p"] == pytest.approx(1 / 201), name
    assert got["top1_text_to_image"] > 10 * got["top1_text_to_image_chance"]
    assert got["mutual_knn_null_low"] <= got["mutual_knn_chance"] <= got["mutual_knn_null_high"]

    Q = np.linalg.qr(np.random.default_rng(9).normal(size=(d, d)))[0]
    rotated = alignment_with_uncertainty(X, Y @ Q, n_null=200, seed=3, k=5)
    assert rotated["cka"] == pytest.approx(got["cka"], rel=1e-9)
    assert rotated["cka_debiased"] == pytest.approx(got["cka_debiased"], rel=1e-9)
    assert rotated["mutual_knn"] > rotated["mutual_knn_null_high"] + 0.1
    assert rotated["top1_text_to_image"] < 0.1


# --- degenerate input --------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 2])
def test_fewer_than_three_pairs_give_nan_without_warnings(n):
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = alignment_with_uncertainty(X, Y, n_null=10, seed=0)
        assert np.isnan(linear_cka(X, Y)) and np.isnan(mutual_knn(X, Y))
        assert all(np.isnan(v) for v in retrieval(X, Y).values())
    for name in MEASURES:
        for suffix in ("", "_se", "_low", "_high", "_null_low", "_null_high", "_p"):
            assert np.isnan(got[name + suffix]), name + suffix
    assert got["n_pairs"] == n


def test_constant_modality_and_too_large_k():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(10, 3)), np.ones((10, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = alignment_with_uncertainty(X, Y, n_null=20, seed=0, k=8)
    assert np.isnan(got["cka"]) and np.isnan(got["cka_p"])
    assert np.isnan(got["cka_debiased"]) and np.isnan(got["cka_debiased_low"]) and np.isnan(got["cka_debiased_p"])
    assert got["mutual_knn"] == pytest.approx(brute_knn(unit(X, True), unit(Y, True), 8))
    assert got["top1_text_to_image"] == 0.0  # all image cosines 0: ties, rank n
    assert got["top1_text_to_image_p"] == 1.0  # every pairing ties with it: all count
    assert np.isnan(mutual_knn(X, X, k=9)) and np.isnan(alignment_with_uncertainty(X, X, n_null=5, k=9)["mutual_knn"])
    assert mutual_knn(X, X, k=8) == 1.0


def test_bad_input_is_one_clear_error():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(10, 4))
    with pytest.raises(ValueError, match="same pairs"):
        linear_cka(X, X[:9])
    with pytest.raises(ValueError, match="NaN"):
        mutual_knn(X, np.where(X > 1, np.nan, X))
    with pytest.raises(ValueError, match="same pairs"):
        debiased_cka(X, X[:9])
    with pytest.raises(ValueError, match="same neurons"):
        retrieval(X, X[:, :3])
    with pytest.raises(ValueError, match="same neurons"):
        alignment_with_uncertainty(X, X[:, :3])


# --- k-NN from the Gram, retrieval's jackknife -------------------------------------------

def test_nearest_is_the_first_m_of_a_stable_sort():
    """Whole-number similarities, so ties straddle the m-th place in most rows: the lower
    columns win, as in the stable argsort this replaced."""
    rng = np.random.default_rng(3)
    sims = rng.integers(0, 4, size=(40, 30)).astype(float)
    for m in (1, 3, 7, 29):
        want = np.sort(np.argsort(-sims, axis=1, kind="stable")[:, :m], axis=1)
        np.testing.assert_array_equal(alignment_knn.nearest(sims, m), want)


def test_gram_neighbours_are_the_neighbours_of_the_unit_rows():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 8))
    x[10] = x[3]  # an exact tie
    x[20] = x.mean(axis=0)  # a zero row once centred: cosine 0 with every row
    xc = x - x.mean(axis=0)
    np.testing.assert_array_equal(gram_neighbours(xc @ xc.T, 6), neighbours(unit(x, True), 6))


def test_retrieval_jackknife_equals_deleted_samples_recomputed():
    """top-1 and MRR se against every delete-one and delete-two sample ranked anew (the
    centring held fixed, as documented), with half the Efron-Stein correction; NaN below
    MIN_OUTCOMES hits."""
    rng = np.random.default_rng(8)
    n = 36
    x = rng.normal(size=(n, 6))
    s = unit(x, True) @ unit(x + 0.9 * rng.normal(size=(n, 6)), True).T
    score = {"top1": lambda r: float(np.mean(r <= 1)), "mrr": lambda r: float(np.mean(1.0 / r))}

    def theta(keep, measure):
        part = s[np.ix_(keep, keep)]
        return score[measure]((part >= np.diagonal(part)[:, None]).sum(axis=1))

    everyone = np.arange(n)
    hits = int(np.sum((s >= np.diagonal(s)[:, None]).sum(axis=1) == 1))
    assert MIN_OUTCOMES <= hits <= n - MIN_OUTCOMES
    for measure in score:
        full = theta(everyone, measure)
        one = np.array([theta(np.delete(everyone, a), measure) for a in range(n)])
        v_plain = (n - 1) / n * np.sum((one - one.mean()) ** 2)
        second = sum((full - one[a] - one[b] + theta(np.delete(everyone, [a, b]), measure)) ** 2
                     for a, b in itertools.combinations(range(n), 2))
        want = np.sqrt(v_plain - second / 2 if v_plain - second / 2 > 0 else v_plain)
        assert jackknife_se(s, measure) == pytest.approx(want, rel=1e-9), measure
    few = s.copy()
    few[np.arange(n), np.arange(n)] = -2.0  # no caption finds its image first
    assert np.isnan(jackknife_se(few, "top1"))
