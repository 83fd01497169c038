"""Coverage of the retrieval intervals (top-1 and MRR, both directions: stats/alignment.WITH_INTERVAL),
by simulation with a known truth: at nominal 95% each must cover in 90-99% of 200 samples, for
several true values and shapes.

Text x ~ N(0, diag(λ)) with λ flat or decaying 1/i, image y = x + s·noise of the same spectrum.
Retrieval depends on n by construction (more pairs, more distractors), so the estimand is the
expected value at this many pairs, E[top-1] and E[MRR] at n; it has no closed form and is
taken from 20,000 independent samples per case (`python tests/stats/test_retrieval_coverage.py
20000`, TRUTH below; its Monte Carlo standard error is under 0.0004, a fiftieth of a
sample's own). Where fewer than MIN_OUTCOMES queries are at rank 1 (or fewer are not) no
interval is given: checked on unrelated clouds (retrieval at chance, about one hit in 120).
"""

from __future__ import annotations

import sys

import numpy as np

from modalscope.stats.alignment import WITH_INTERVAL, interval
from modalscope.stats.alignment_common import unit_rows
from modalscope.stats.alignment_retrieval import RETRIEVAL_NAMES, retrieval_all

REPS = 200
LOW, HIGH = 0.90, 0.99  # accepted coverage at nominal 0.95
CASES = [(120, 20, "flat", 1.4), (120, 20, "flat", 2.0), (120, 50, "flat", 3.0), (120, 100, "decay", 2.0)]
# E[measure] at n per case, in RETRIEVAL_NAMES' order (top1, top5, mrr text_to_image; the same image_to_text),
# from 20,000 samples with seed 12345 + n + d (see the module docstring)
TRUTH = {
    (120, 20, "flat", 1.4): (0.60514, 0.86714, 0.72042, 0.60512, 0.86691, 0.72034),  # MC se 0.00032
    (120, 20, "flat", 2.0): (0.31992, 0.62840, 0.46273, 0.31988, 0.62848, 0.46275),  # MC se 0.00031
    (120, 50, "flat", 3.0): (0.39808, 0.69920, 0.53542, 0.39845, 0.69928, 0.53564),  # MC se 0.00031
    (120, 100, "decay", 2.0): (0.48974, 0.71038, 0.59378, 0.49003, 0.71017, 0.59384),  # MC se 0.00032
}
INTERVAL_NAMES = [name for name in RETRIEVAL_NAMES if name in WITH_INTERVAL]


def sample(rng: np.random.Generator, n: int, d: int, spectrum: str, noise: float | None):
    lam = np.ones(d) if spectrum == "flat" else 1.0 / np.arange(1, d + 1)
    x = rng.normal(size=(n, d)) * np.sqrt(lam)
    y = (x if noise is not None else 0.0) + (1.0 if noise is None else noise) * rng.normal(size=(n, d)) * np.sqrt(lam)
    return x, y


def simulate(case, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[reps, 6] retrieval values and [reps, 6] standard errors, from the production code."""
    rng = np.random.default_rng(seed)
    values, ses = [], []
    for _ in range(reps):
        x, y = sample(rng, *case)
        observed, _, se = retrieval_all(x, y, [], center=True)
        values.append(observed)
        ses.append(se)
    return np.array(values), np.array(ses)


def test_the_retrieval_measures_with_an_interval_are_top1_and_mrr():
    assert INTERVAL_NAMES == ["top1_text_to_image", "mrr_text_to_image", "top1_image_to_text", "mrr_image_to_text"]


def test_retrieval_intervals_cover():
    for i, case in enumerate(CASES):
        values, ses = simulate(case, REPS, seed=i)
        for name in INTERVAL_NAMES:
            j = RETRIEVAL_NAMES.index(name)
            truth = TRUTH[case][j]
            reported = np.isfinite(ses[:, j])
            assert reported.mean() >= 0.95, (case, name, reported.mean())
            low, high = interval(values[reported, j], ses[reported, j])
            coverage = float(np.mean((low <= truth) & (truth <= high)))
            assert LOW <= coverage <= HIGH, (case, name, truth, coverage)


def test_no_interval_at_chance():
    """Unrelated clouds: about one query in 120 finds its partner first, too few for an interval."""
    _, ses = simulate((120, 20, "flat", None), 50, seed=99)
    assert np.isnan(ses).all()


if __name__ == "__main__":  # TRUTH: python tests/stats/test_retrieval_coverage.py 20000
    from modalscope.stats.alignment_retrieval import scores

    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    for case in CASES:
        n, d = case[:2]
        rng = np.random.default_rng(12345 + n + d)
        acc = np.empty((reps, 6))
        for r in range(reps):
            x, y = sample(rng, *case)
            s = unit_rows(x, True) @ unit_rows(y, True).T
            own = np.diagonal(s)
            acc[r] = np.concatenate([scores((s >= own[:, None]).sum(1)), scores((s >= own[None, :]).sum(0))])
        print(f"    {case}: ({', '.join(f'{m:.5f}' for m in acc.mean(0))}),  # MC se "
              f"{acc.std(0).max() / np.sqrt(reps):.5f}", flush=True)
