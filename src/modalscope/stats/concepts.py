"""Concept selectivity of neurons, per modality, and the neurons that agree across modalities.

Why: a neuron that prefers text or images says nothing about *what* it responds to. With pairs
that carry concept labels (the drawn world's colour, shape and count; COCO's object categories;
a JSONL `concepts` list), each neuron's response to the caption alone and to the image alone is
compared between the pairs with a concept and those without it. A neuron selective for the same
concept, in the same direction, from the caption and from the image is what the seed report's
title asks about: an "imagery neuron" for that concept.

The statistics (pure; concepts.py owns the I/O):

* selectivity = AUROC of the neuron's response for pairs with vs without the concept: the
  probability that a random pair with it has the larger response (ties count one half), i.e.
  the Mann-Whitney U of the "with" group over n_with * n_without. 0.5: no selectivity.
* its two-sided p: the Mann-Whitney U test's normal approximation with the tie correction and
  the continuity correction (as `scipy.stats.mannwhitneyu(..., method="asymptotic")`). The
  responses of one layer are ranked once (average ranks, per neuron); every concept's rank sum
  is then one matrix product ranks.T @ labels, and the tie correction Σ(t³ - t) of each neuron
  comes from the same ranks (average ranks lower Σ r² by exactly Σ(t³ - t) / 12).
* q: Benjamini-Hochberg over the neurons of a site (all layers) within (site, modality,
  concept, reduction).
* agreement: q_text < 0.05 and q_image < 0.05 with the AUROCs on the same side of 0.5.
* two nulls of the agreement count. Shuffled labels: the pairs' concept labels permuted (one permutation of the
  pairs for all concepts, the same for both modalities, so each pair's caption and image stay
  together), everything above recomputed, the agreeing neurons counted; BH of a shuffled family
  needs only its p-values below 0.05 (no q < 0.05 can come from a larger p), so only those are
  kept between layers. This null asks whether any neuron reads the concept at all: it makes
  both modalities' selectivity vanish, so a model with many selective neurons in each modality
  beats it even when the two sets meet only by chance. Overlap: the neurons selective from the
  caption and from the image taken as unrelated sets of their layer (per direction, a
  hypergeometric overlap; summed over layers), so a count above it means the same neurons read
  the concept from both modalities more often than their numbers alone make likely.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr, ndtri
from scipy.stats import rankdata

from modalscope.stats.fdr import ALPHA, benjamini_hochberg

# A q below ALPHA (stats/fdr.py, the report's level) is "selective".
CHUNK = 1 << 22  # [neuron, column] results computed at once by the shuffled null (memory)
MIN_GROUP = 3  # a concept is tested only with at least this many labelled pairs with it and without it


@dataclass(frozen=True)
class ConceptLabels:
    """The labelled pairs of a study and which concepts each has."""

    names: list[str]  # the tested concepts, sorted
    rows: np.ndarray  # [labelled pair] their input indices (rows of the store)
    matrix: np.ndarray  # [labelled pair, concept] bool: the pair has the concept

    @property
    def n_with(self) -> np.ndarray:
        return self.matrix.sum(axis=0)

    @property
    def n_without(self) -> np.ndarray:
        return len(self.rows) - self.n_with


def concept_labels(concepts: Sequence[Sequence[str] | None], min_group: int = MIN_GROUP) -> ConceptLabels:
    """`concepts[i]`: the concept names of input i, or None when input i is not labelled (it is
    then left out of every test; an empty list is a labelled pair without any concept). Concepts
    with fewer than `min_group` labelled pairs on either side are not tested."""
    rows = np.array([i for i, c in enumerate(concepts) if c is not None], dtype=np.int64)
    sets = [set(map(str, concepts[i])) for i in rows]
    every = sorted(set().union(*sets)) if sets else []
    matrix = np.array([[name in s for name in every] for s in sets], dtype=bool).reshape(len(rows), len(every))
    n_with = matrix.sum(axis=0)
    keep = (n_with >= min_group) & (len(rows) - n_with >= min_group)
    return ConceptLabels([n for n, k in zip(every, keep) if k], rows, matrix[:, keep])


@dataclass
class Ranked:
    """One [input, neuron] response matrix ranked once: average ranks per neuron and each
    neuron's tie term Σ(t³ - t) over its groups of equal responses. A neuron with a NaN response
    gets NaN results."""

    ranks: np.ndarray  # [input, neuron] float64
    ties: np.ndarray  # [neuron] Σ(t³ - t)
    finite: np.ndarray  # [neuron] bool: no NaN response

    @classmethod
    def of(cls, values: np.ndarray) -> "Ranked":
        values = np.asarray(values)
        n = values.shape[0]
        finite = ~np.isnan(values).any(axis=0)
        ranks = rankdata(np.where(finite, values, 0.0), axis=0).astype(np.float64)
        # Average ranks lower Σ r² below Σ i² = n(n+1)(2n+1)/6 by Σ(t³ - t)/12, exactly (half-integers).
        ties = 12.0 * (n * (n + 1) * (2 * n + 1) / 6.0 - np.einsum("ij,ij->j", ranks, ranks))
        return cls(ranks, np.maximum(ties, 0.0), finite)

    def test(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(AUROC, two-sided p), each [neuron, k], of every column of `labels` ([input, k], 0/1):
        the responses of the inputs with the label against those without it."""
        labels = np.asarray(labels, dtype=np.float64)
        n = self.ranks.shape[0]
        n1 = labels.sum(axis=0)
        n0 = n - n1
        u = self.ranks.T @ labels - n1 * (n1 + 1) / 2.0  # U of the "with" group, [neuron, k]
        pairs = n1 * n0
        with np.errstate(divide="ignore", invalid="ignore"):
            auroc = u / pairs
            var = pairs / 12.0 * ((n + 1) - self.ties[:, None] / (n * (n - 1)))
            z = (np.abs(u - pairs / 2.0) - 0.5) / np.sqrt(var)
            p = np.clip(2.0 * ndtr(-z), 0.0, 1.0)
        p = np.where(var > 0, p, 1.0)  # every response tied: no evidence either way
        auroc[~self.finite] = np.nan
        p[~self.finite] = np.nan
        return auroc, p


    def small_p(self, labels: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The entries of `test(labels)` with p <= alpha, as (neuron, column, AUROC, p): the same
        numbers, computed only where they can pass. Why: the shuffled-label null needs nothing
        else, and the normal tail (ndtr) over every [neuron, shuffle x concept] entry was most
        of the concept statistics' time (17 of 34 s on the 48-pair trained demo).

        p <= alpha needs |U - n1 n0 / 2| - 0.5 >= z_alpha sqrt(var), var = n1 n0 / 12 · c_neuron.
        U is a sum of half-integer ranks below 2^24 (n up to 4,095; beyond, `test` itself runs),
        exact in float32, so the screen runs in
        float32 (half the memory traffic) with a bound 1e-4 (relative) below the threshold for
        its rounding, and the entries past it get the float64 formula and their own p <= alpha
        test: the result is `test`'s bit for bit (tests/concepts)."""
        n = self.ranks.shape[0]
        if n * (n + 1) >= 1 << 24:  # rank sums up to n (n + 1) / 2 no longer exact in float32: full test
            auroc, p = self.test(labels)
            neuron, column = np.nonzero(p <= alpha)
            return neuron, column, auroc[neuron, column], p[neuron, column]
        labels32 = np.asarray(labels, dtype=np.float32)
        n1 = labels32.sum(axis=0, dtype=np.float64)
        pairs = n1 * (n - n1)
        centred = self._ranks32().T @ labels32  # U + n1 (n1 + 1) / 2, exact
        centred -= (n1 * (n1 + 1) / 2.0 + pairs / 2.0).astype(np.float32)  # U - n1 n0 / 2, exact
        scale = np.sqrt(np.maximum((n + 1) - self.ties / (n * (n - 1)), 0.0))  # [neuron] sqrt(var / (n1 n0 / 12))
        bound = (-ndtri(alpha / 2.0) * (1 - 1e-4)) * np.sqrt(pairs / 12.0)  # [column]
        screen = np.abs(centred)
        screen -= np.float32(0.5)
        candidate = screen >= np.multiply.outer(scale.astype(np.float32), bound.astype(np.float32))
        candidate &= (scale > 0)[:, None] & self.finite[:, None]
        neuron, column = np.nonzero(candidate)
        u = centred[neuron, column].astype(np.float64) + pairs[column] / 2.0
        pairs = pairs[column]
        var = pairs / 12.0 * ((n + 1) - self.ties[neuron] / (n * (n - 1)))
        p = np.clip(2.0 * ndtr(-(np.abs(u - pairs / 2.0) - 0.5) / np.sqrt(var)), 0.0, 1.0)
        keep = (p <= alpha) & (var > 0)
        return neuron[keep], column[keep], (u / pairs)[keep], p[keep]

    def _ranks32(self) -> np.ndarray:
        """The ranks as float32 (half-integers up to n: exact), made once per Ranked."""
        if getattr(self, "_r32", None) is None:
            self._r32 = self.ranks.astype(np.float32)
        return self._r32


def auroc_p(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and Mann-Whitney p ([neuron, k]) of responses `values` [input, neuron] for labels
    [input, k] (a 1-d `values` or `labels` is one column)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[:, None] if values.ndim == 1 else values
    labels = np.asarray(labels)
    labels = labels[:, None] if labels.ndim == 1 else labels
    return Ranked.of(values).test(labels)


def direction(auroc: np.ndarray) -> np.ndarray:
    """+1 where the neuron responds more with the concept, -1 less, 0 neither (or NaN)."""
    return np.sign(np.nan_to_num(np.asarray(auroc) - 0.5, nan=0.0)).astype(np.int8)


def agreeing(auroc_text, q_text, auroc_image, q_image, alpha: float = ALPHA) -> np.ndarray:
    """Selective for the concept in both modalities (q < alpha) and in the same direction."""
    sign = direction(auroc_text)
    return (np.asarray(q_text) < alpha) & (np.asarray(q_image) < alpha) & (sign != 0) & (sign == direction(auroc_image))


def bh_rejected(p: np.ndarray, m: int, alpha: float = ALPHA) -> np.ndarray:
    """Which of `p` BH rejects at q < alpha in a family of `m` tests of which `p` holds (at
    least) every p-value <= alpha: q < alpha needs some p_(j) <= ... < alpha j / m, so the
    larger p-values of the family do not change the answer."""
    p = np.asarray(p, dtype=np.float64)
    if m == 0 or p.size == 0:
        return np.zeros(p.shape, dtype=bool)
    order = np.argsort(p, kind="stable")
    q = np.minimum.accumulate((p[order] * m / np.arange(1, p.size + 1))[::-1])[::-1]
    out = np.zeros(p.shape, dtype=bool)
    out[order] = q < alpha
    return out


@dataclass
class ShuffledNull:
    """The agreement count under shuffled concept labels: `n_shuffles` permutations of the
    labelled pairs, each giving per concept how many neurons of the site agree across modalities.
    Fed one layer at a time (`add`), it keeps only the p-values <= alpha of each shuffled family."""

    labels: np.ndarray  # [labelled pair, concept] bool
    n_shuffles: int
    rng: np.random.Generator
    alpha: float = ALPHA
    permutations: np.ndarray = field(init=False)  # [shuffle, labelled pair]
    shuffled: np.ndarray = field(init=False)  # [labelled pair, shuffle * concepts] the permuted labels
    _kept: dict = field(init=False, default_factory=dict)  # modality -> list of (id, concept, shuffle, p, sign)
    _m: dict = field(init=False, default_factory=dict)  # modality -> tested neurons so far
    _offset: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        n = self.labels.shape[0]
        self.permutations = np.stack([self.rng.permutation(n) for _ in range(self.n_shuffles)]) \
            if self.n_shuffles else np.zeros((0, n), dtype=np.int64)
        k = self.labels.shape[1]
        # [pair, shuffle * k + concept]: shuffle s gives pair i the labels of pair permutation[s, i]
        self.shuffled = self.labels[self.permutations].transpose(1, 0, 2).reshape(n, self.n_shuffles * k)

    def add(self, ranked: dict[str, Ranked], rows: np.ndarray | None = None) -> None:
        """One layer: {modality: its ranked responses} (of the labelled pairs, or of those `rows`
        selects); neuron ids continue across layers."""
        k = self.labels.shape[1]
        width = next(iter(ranked.values())).ranks.shape[1]
        if k == 0 or self.n_shuffles == 0:
            return
        step = max(k, CHUNK // max(width, 1) // k * k)  # columns per product: about CHUNK results at a time
        shuffled = self.shuffled if rows is None else self.shuffled[rows]
        for modality, one in ranked.items():
            for start in range(0, shuffled.shape[1], step):
                neuron, column, auroc, p = one.small_p(shuffled[:, start:start + step], self.alpha)
                column = column + start
                self._kept.setdefault(modality, []).append(
                    (neuron + self._offset, column % k, column // k, p, direction(auroc)))
            self._m[modality] = self._m.get(modality, 0) + int(one.finite.sum())
        self._offset += width

    def counts(self) -> np.ndarray:
        """[shuffle, concept] neurons agreeing across the modalities under shuffled labels."""
        k = self.labels.shape[1]
        out = np.zeros((self.n_shuffles, k), dtype=np.int64)
        if len(self._kept) < 2:
            return out
        families = []  # per modality: the rejected (neuron id, direction) codes of each family
        for modality in list(self._kept)[:2]:
            neuron, concept, shuffle, p, sign = (np.concatenate(parts) for parts in zip(*self._kept[modality]))
            family = shuffle.astype(np.int64) * k + concept
            order = np.argsort(family, kind="stable")
            bounds = np.searchsorted(family[order], np.arange(self.n_shuffles * k + 1))
            codes = neuron * 2 + (sign > 0)
            rejected = []
            for f in range(self.n_shuffles * k):
                mine = order[bounds[f]:bounds[f + 1]]
                rejected.append(codes[mine][bh_rejected(p[mine], self._m[modality], self.alpha)])
            families.append(rejected)
        for f, (a, b) in enumerate(zip(*families)):
            out[f // k, f % k] = np.intersect1d(a, b).size
        return out


def overlap_null(text: np.ndarray, image: np.ndarray, width: np.ndarray) -> np.ndarray:
    """The distribution (pmf over 0, 1, ...) of the agreement count if which neurons are selective
    from the caption and which from the image were unrelated: per layer and direction, the
    overlap of a random `text` of `width` neurons with a random `image` of them is hypergeometric;
    the count is their sum (taken as independent). `text`, `image`: [layer, direction] counts of
    selective neurons (direction: up, down); `width`: [layer] neurons tested."""
    from scipy.stats import hypergeom

    pmf = np.ones(1)
    for a_row, b_row, w in zip(np.asarray(text), np.asarray(image), np.asarray(width)):
        for a, b in zip(a_row, b_row):
            if a and b:
                pmf = np.convolve(pmf, hypergeom(int(w), int(a), int(b)).pmf(np.arange(min(a, b) + 1)))
    return pmf


def overlap_summary(observed: int, pmf: np.ndarray) -> dict[str, float]:
    """The overlap null of one agreement count: its mean and P(count >= observed)."""
    pmf = np.asarray(pmf, dtype=np.float64)
    return {"overlap_expected": float(np.arange(pmf.size) @ pmf),
            "p_overlap": float(min(1.0, pmf[observed:].sum())) if observed < pmf.size else 0.0}


def q_values(p: np.ndarray) -> np.ndarray:
    """BH q of one family (site, modality, concept, reduction): NaN p-values stay NaN."""
    return benjamini_hochberg(p)


def null_summary(observed: int, null: np.ndarray) -> dict[str, float]:
    """The shuffled-label null of one agreement count: its mean, 95th percentile, how far the
    observed count is above the mean, and the permutation p (1 + #null >= observed) / (S + 1)."""
    null = np.asarray(null, dtype=np.float64)
    if null.size == 0:
        return {"null_mean": float("nan"), "null_q95": float("nan"), "excess": float("nan"), "p_null": float("nan")}
    return {"null_mean": float(null.mean()), "null_q95": float(np.quantile(null, 0.95)),
            "excess": float(observed - null.mean()),
            "p_null": float((1 + np.count_nonzero(null >= observed)) / (null.size + 1))}
