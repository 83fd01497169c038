"""Concept selectivity (stats/concepts.py): AUROC and the Mann-Whitney p against scipy and a
brute-force count, with ties; BH of a shuffled family from its small p-values alone; a planted
neuron that responds to "red" from the caption and from the image is an imagery neuron, and
shuffled labels find about none."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

from modalscope import concepts as stage
from modalscope.stats.concepts import (
    ALPHA, Ranked, ShuffledNull, agreeing, auroc_p, bh_rejected, concept_labels, q_values,
)


def brute_auroc(with_: np.ndarray, without: np.ndarray) -> float:
    """P(with > without) + P(tie) / 2 over every pair, counted one by one."""
    wins = sum((a > b) + 0.5 * (a == b) for a in with_ for b in without)
    return wins / (len(with_) * len(without))


CASES = {
    "no ties": (np.array([3.1, 0.2, 5.0, 4.4, 1.7, 2.9, 6.3, 0.8]), np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)),
    "ties across groups": (np.array([1, 2, 2, 3, 3, 3, 4, 4, 5, 1, 2, 3], float),
                           np.array([0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0], bool)),
    "mostly tied (float16-like)": (np.array([0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1], float),
                                   np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0, 1], bool)),
    "perfect separation": (np.arange(10.0), np.arange(10) >= 6),
    "reversed": (-np.arange(9.0), np.arange(9) < 4),
}


@pytest.mark.parametrize("name", list(CASES))
def test_auroc_and_p_equal_scipy_and_brute_force(name):
    values, labels = CASES[name]
    auroc, p = auroc_p(values, labels)
    result = st.mannwhitneyu(values[labels], values[~labels], method="asymptotic", use_continuity=True)
    n1, n0 = labels.sum(), (~labels).sum()
    assert auroc[0, 0] == pytest.approx(result.statistic / (n1 * n0), abs=1e-12)
    assert auroc[0, 0] == pytest.approx(brute_auroc(values[labels], values[~labels]), abs=1e-12)
    assert p[0, 0] == pytest.approx(result.pvalue, rel=1e-10, abs=1e-15)


def test_one_ranking_serves_every_neuron_and_concept():
    rng = np.random.default_rng(3)
    values = rng.integers(0, 6, size=(40, 9)).astype(np.float32)  # many ties per neuron
    labels = rng.random((40, 4)) < 0.35
    auroc, p = Ranked.of(values).test(labels)
    assert auroc.shape == p.shape == (9, 4)
    for j in range(9):
        for c in range(4):
            a, b = values[labels[:, c], j].astype(float), values[~labels[:, c], j].astype(float)
            expected = st.mannwhitneyu(a, b, method="asymptotic")
            assert p[j, c] == pytest.approx(expected.pvalue, rel=1e-10)
            assert auroc[j, c] == pytest.approx(brute_auroc(a, b), abs=1e-12)


def test_constant_and_nan_neurons():
    values = np.column_stack([np.ones(10), np.r_[np.nan, np.arange(9.0)]])
    auroc, p = auroc_p(values, np.arange(10) < 5)
    assert auroc[0, 0] == 0.5 and p[0, 0] == 1.0  # every response tied: no evidence
    assert np.isnan(auroc[1, 0]) and np.isnan(p[1, 0])


def test_bh_from_the_small_p_values_alone_equals_bh_of_the_family():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = np.concatenate([rng.random(300), rng.random(rng.integers(0, 30)) * 1e-4])
        small = p <= ALPHA
        expected = q_values(p) < ALPHA
        got = np.zeros(p.size, bool)
        got[small] = bh_rejected(p[small], p.size)
        np.testing.assert_array_equal(got, expected)


def test_labels_leave_out_unlabelled_pairs_and_rare_concepts():
    labels = concept_labels([["red", "circle"], None, ["blue"], ["red"], [], ["red", "x"], ["blue"], ["blue"]])
    assert labels.rows.tolist() == [0, 2, 3, 4, 5, 6, 7]
    assert labels.names == ["blue", "red"]  # circle, x: fewer than 3 pairs with them
    assert labels.n_with.tolist() == [3, 3] and labels.n_without.tolist() == [4, 4]


class PlantedStore:
    """A store-like object: `read_layer` gives planted responses. Neuron 5 of layer 1 responds
    to "red" from the caption and from the image; neuron 2 of layer 0 to "red" from the caption
    only; neuron 7 of layer 2 to "circle" from the image only; everything else is noise."""

    sites, stats, conditions, n_layers = ["mlp"], ["max"], ["text", "image"], 3

    def __init__(self, concepts: list[list[str]], seed: int = 0, width: int = 40) -> None:
        rng = np.random.default_rng(seed)
        n = len(concepts)
        self.n_done, self._width = n, width
        red = np.array(["red" in c for c in concepts])
        circle = np.array(["circle" in c for c in concepts])
        self.values = {m: rng.normal(size=(n, self.n_layers, width)).astype(np.float32) for m in self.conditions}
        for m in self.conditions:
            self.values[m][:, 1, 5] += 3.0 * red
        self.values["text"][:, 0, 2] += 3.0 * red
        self.values["image"][:, 2, 7] += 3.0 * circle

    def width(self, site: str) -> int:
        return self._width

    def read_layer(self, site, condition, stat, layer, start=0, stop=None):
        return self.values[condition][start:stop, layer, :]


def _world(n: int, seed: int = 1) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    colours, shapes = ["red", "green", "blue"], ["circle", "square"]
    return [[colours[rng.integers(3)], shapes[rng.integers(2)]] for _ in range(n)]


def test_a_planted_red_neuron_is_the_imagery_neuron_and_the_shuffled_null_finds_about_none():
    concepts = _world(90)
    store = PlantedStore(concepts)
    labels = concept_labels(concepts)
    frame, entry = stage.site_concepts(store, "mlp", "max", labels, seed=0, shuffles=30)
    agree = frame[frame["agree"]]
    assert [tuple(r) for r in agree[["layer", "neuron", "concept"]].itertuples(index=False)] == [(1, 5, "red")]
    red = entry["by_concept"]["red"]
    assert red["n_imagery"] == 1 and red["imagery_neurons"] == [[1, 5]]
    assert red["n_text"] >= 2 and red["n_image"] >= 1  # the caption-only neuron is selective, not imagery
    assert entry["by_concept"]["circle"]["n_imagery"] == 0 and entry["by_concept"]["circle"]["n_image"] >= 1
    assert red["null_mean"] <= 0.1 and red["p_null"] < 0.05  # shuffled labels: ~no imagery neuron
    assert entry["null_mean"] <= 0.2 and entry["concepts_above_null"] == ["red"]
    row = frame[(frame["layer"] == 1) & (frame["neuron"] == 5) & (frame["concept"] == "red")].iloc[0]
    assert row["auroc_text"] > 0.9 and row["auroc_image"] > 0.9 and row["q_text"] < 1e-6
    assert (row["n_with"], row["n_without"]) == (labels.n_with[labels.names.index("red")], 90 - row["n_with"])
    assert len(frame) == 3 * 40 * len(labels.names)
    # the q columns are BH over the site's neurons (all layers) within (modality, concept)
    part = frame[frame["concept"] == "blue"]
    np.testing.assert_allclose(part["q_image"], q_values(part["p_image"].to_numpy()))


def test_the_shuffled_null_counts_agreement_when_labels_carry_nothing():
    """A neuron whose caption and image responses move together with a pair-level factor that no
    concept labels: shuffled labels agree on it about as often as the real ones do."""
    concepts = _world(60, seed=4)
    store = PlantedStore(concepts, seed=2)
    labels = concept_labels(concepts)
    null = ShuffledNull(labels.matrix, 25, np.random.default_rng(0))
    null.add({m: Ranked.of(store.read_layer("mlp", m, "max", 1)) for m in ("text", "image")})
    counts = null.counts()
    assert counts.shape == (25, len(labels.names))
    assert counts.sum() <= 3  # random labels: at most a rare chance agreement


def test_agreeing_needs_both_q_and_the_same_direction():
    a_t, q_t = np.array([0.9, 0.9, 0.1, 0.9]), np.array([0.01, 0.01, 0.01, 0.2])
    a_i, q_i = np.array([0.8, 0.2, 0.1, 0.9]), np.array([0.01, 0.01, 0.01, 0.01])
    assert agreeing(a_t, q_t, a_i, q_i).tolist() == [True, False, True, False]


def test_the_overlap_null_expects_what_unrelated_selective_sets_share():
    """Many neurons read "red" from the caption and many (others, chosen independently) from the
    image: they share some by chance. Shuffled labels find no agreement at all, so only the overlap
    null tells that the observed count is what unrelated sets give."""
    rng = np.random.default_rng(8)
    concepts = _world(120, seed=9)
    red = np.array(["red" in c for c in concepts], dtype=np.float32)

    class Chance(PlantedStore):
        def __init__(self) -> None:
            super().__init__(concepts, seed=3, width=60)
            self.values = {m: rng.normal(size=(120, 3, 60)).astype(np.float32) for m in self.conditions}
            for layer in range(self.n_layers):
                for m in self.conditions:
                    chosen = rng.random(60) < 0.4
                    self.values[m][:, layer, chosen] += 2.0 * red[:, None]

    _, entry = stage.site_concepts(Chance(), "mlp", "max", concept_labels(concepts), seed=0, shuffles=20)
    e = entry["by_concept"]["red"]
    assert e["n_text"] > 50 and e["n_image"] > 50 and e["n_imagery"] > 10
    assert e["null_mean"] < 1 and e["p_null"] < 0.05  # beats shuffled labels ...
    assert abs(e["n_imagery"] - e["overlap_expected"]) < 3 * np.sqrt(e["overlap_expected"])  # ... not chance
    assert e["p_overlap"] > 0.05 and "red" not in entry["concepts_above_null"]


def test_overlap_null_mean_and_tail():
    from modalscope.stats.concepts import overlap_null, overlap_summary

    pmf = overlap_null(np.array([[5, 2], [0, 3]]), np.array([[4, 1], [7, 0]]), np.array([20, 20]))
    assert pmf.sum() == pytest.approx(1.0)
    assert overlap_summary(0, pmf)["overlap_expected"] == pytest.approx(5 * 4 / 20 + 2 * 1 / 20)
    assert overlap_summary(0, pmf)["p_overlap"] == pytest.approx(1.0)
    assert overlap_summary(len(pmf), pmf)["p_overlap"] == 0.0


def test_selective_only_keeps_the_rows_with_a_q_below_alpha():
    concepts = _world(90)
    labels = concept_labels(concepts)
    full, _ = stage.site_concepts(PlantedStore(concepts), "mlp", "max", labels, seed=0, shuffles=5)
    part, _ = stage.site_concepts(PlantedStore(concepts), "mlp", "max", labels, seed=0, shuffles=5,
                                  selective_only=True)
    expected = full[(full["q_text"] < ALPHA) | (full["q_image"] < ALPHA)].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, expected)
    assert 0 < len(part) < len(full)


def test_the_p_is_calibrated_under_the_null_with_ties_where_fdr_reads_it():
    """Known truth: labels unrelated to the responses (240 pairs, 40 labelled, responses rounded
    so that ties are many). 100,000 null neurons: p uniform (KS), and the rate below 1e-3 within
    2x of nominal (the normal approximation's tail, where BH calls)."""
    rng = np.random.default_rng(11)
    labels = np.zeros(240, bool)
    labels[:40] = True
    rates, ps = [], []
    for _ in range(5):
        values = np.round(rng.gamma(2.0, size=(240, 20_000)), 1)  # skewed, and tied
        _, p = auroc_p(values, labels)
        ps.append(p.ravel())
    p = np.concatenate(ps)
    assert st.kstest(p, "uniform").pvalue > 1e-3
    for level in (1e-2, 1e-3):
        rates.append(np.mean(p < level) / level)
    assert all(0.5 < r < 2.0 for r in rates), rates


def test_small_p_is_the_full_test_where_p_is_at_most_alpha():
    """The shuffled null's fast path (Ranked.small_p) gives exactly the entries of Ranked.test
    with p <= alpha, their AUROC and p bit for bit: ties, a constant neuron and a NaN response
    included."""
    from modalscope.stats.concepts import Ranked

    rng = np.random.default_rng(3)
    values = np.round(rng.normal(size=(48, 300)), 1)  # many ties
    values[:, 5] = 1.0  # constant: var 0, p 1, never passes
    values[3, 7] = np.nan  # NaN: never passes
    labels = (rng.random((48, 40)) < 0.3).astype(float)
    ranked = Ranked.of(values)
    auroc, p = ranked.test(labels)
    for alpha in (0.05, 0.001):
        neuron, column = np.nonzero(p <= alpha)
        got = ranked.small_p(labels, alpha)
        assert len(neuron) > (10 if alpha == 0.05 else 0)
        np.testing.assert_array_equal(got[0], neuron)
        np.testing.assert_array_equal(got[1], column)
        np.testing.assert_array_equal(got[2], auroc[neuron, column])
        np.testing.assert_array_equal(got[3], p[neuron, column])
