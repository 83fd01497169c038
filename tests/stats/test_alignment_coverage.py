"""Coverage of every alignment interval that is reported (stats/alignment.WITH_INTERVAL; the
retrieval ones in test_retrieval_coverage.py), by simulation with a known truth: at nominal 95% the interval must cover in 90-99% of 200
samples, for several true values and shapes.

The debiased CKA (jackknife over pairs with half the Efron-Stein correction): text x ~ N(0, diag(λ)) with λ flat or decaying (the spectrum of a layer
whose variance sits in a few directions), image y = x + noise (or an independent draw for
a true CKA of 0), so the population linear CKA, ||Σ_xy||²_F / (||Σ_xx||_F ||Σ_yy||_F) =
||Λ||_F / ||Λ + s² I||_F, is known exactly; s² is solved for the wanted value. The cases
include many more neurons than pairs (the regime of a 7B layer at the pair cap), where the
plug-in CKA of unrelated clouds is 0.5 and the percentile bootstrap covered 0%.

Also: the interval at the peak layer, simultaneous over the layers (Bonferroni), covers the
peak layer's true value, whichever layer the data made the peak.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from modalscope.stats.alignment import WITH_INTERVAL, interval
from modalscope.stats.alignment_cka import debiased_cka_jackknife

REPS = 200
LOW, HIGH = 0.90, 0.99  # accepted coverage at nominal 0.95

SPECTRA = {"flat": lambda d: np.ones(d), "decaying": lambda d: 1.0 / np.arange(1, d + 1),
           "sqrt": lambda d: 1.0 / np.sqrt(np.arange(1, d + 1))}


def noise_for(cka: float, lam: np.ndarray) -> float:
    """s² with ||Λ||_F / ||Λ + s² I||_F = cka."""
    size = np.sqrt(np.sum(lam**2))
    return brentq(lambda s2: size / np.sqrt(np.sum((lam + s2) ** 2)) - cka, 1e-12, 1e12)


def unit_centred_grams(x: np.ndarray) -> np.ndarray:
    """[R, n, n] Grams of each sample's columns centred, scaled to Frobenius norm 1 (as
    alignment_cka.grams, batched over the samples)."""
    xc = x - x.mean(axis=1, keepdims=True)
    xc /= np.sqrt(np.sum(xc**2, axis=(1, 2), keepdims=True))
    return np.einsum("rid,rjd->rij", xc, xc)  # no BLAS call (and thread start-up) per sample


def simulate(n: int, d: int, spectrum: str, cka: float, seed: int, reps: int = REPS):
    """[reps] debiased CKA and its se from the production jackknife, and the truth."""
    rng = np.random.default_rng(seed)
    lam = SPECTRA[spectrum](d)
    x = rng.normal(size=(reps, n, d)) * np.sqrt(lam)
    if cka == 0:
        y = rng.normal(size=(reps, n, d)) * np.sqrt(lam)
    else:
        y = x + rng.normal(size=(reps, n, d)) * np.sqrt(noise_for(cka, lam))
    return jackknife(unit_centred_grams(x), unit_centred_grams(y))


def jackknife(k: np.ndarray, l: np.ndarray, chunk: int = 50):
    """[R] debiased CKA and se of stacked Grams [R, n, n], `chunk` samples at a time."""
    out = [debiased_cka_jackknife(k[s : s + chunk], l[s : s + chunk])[:2] for s in range(0, len(k), chunk)]
    return np.concatenate([v for v, _ in out]), np.concatenate([e for _, e in out])


CASES = [  # (pairs, neurons, spectrum, true CKA)
    (160, 40, "flat", 0.0), (160, 40, "flat", 0.3), (160, 40, "flat", 0.8),
    (160, 250, "decaying", 0.0), (160, 250, "decaying", 0.05), (160, 64, "sqrt", 0.3),
]


def test_every_reported_interval_has_a_coverage_simulation():
    """The debiased CKA here; top-1 and MRR in tests/stats/test_retrieval_coverage.py. Mutual
    k-NN and top-5 have none (docs/method.md §11 says why)."""
    assert set(WITH_INTERVAL) == {"cka_debiased", "top1_text_to_image", "mrr_text_to_image",
                                  "top1_image_to_text", "mrr_image_to_text"}


@pytest.mark.parametrize("n, d, spectrum, cka", CASES)
def test_debiased_cka_interval_covers(n, d, spectrum, cka):
    value, se = simulate(n, d, spectrum, cka, seed=n * 1000 + d + int(100 * cka))
    low, high = interval(value, se)
    coverage = float(np.mean((low <= cka) & (cka <= high)))
    assert LOW <= coverage <= HIGH, (n, d, spectrum, cka, coverage)
    assert abs(value.mean() - cka) < 0.25 * value.std() + 0.002  # the estimate itself is (nearly) unbiased


def test_the_peak_layers_simultaneous_interval_covers_its_truth():
    """Three layers of one site with true CKA 0.3, 0.32 and 0.05 on the same pairs: the peak
    (the largest estimate) is chosen by the data, so its pointwise interval is optimistic
    (the winner's curse); the interval simultaneous over the 3 layers covers the chosen
    layer's truth at least 95% of the time."""
    truths, n, d, reps = (0.3, 0.32, 0.05), 120, 40, REPS
    rng = np.random.default_rng(77)
    lam = SPECTRA["flat"](d)
    x = rng.normal(size=(reps, n, d))
    k = unit_centred_grams(x)
    values, ses = [], []
    for cka in truths:
        y = x + rng.normal(size=(reps, n, d)) * np.sqrt(noise_for(cka, lam))
        l = unit_centred_grams(y)
        value, se = jackknife(k, l)
        values.append(value)
        ses.append(se)
    values, ses = np.array(values), np.array(ses)  # [layers, reps]
    peak = np.argmax(values, axis=0)
    truth = np.array(truths)[peak]
    chosen, se = values[peak, np.arange(reps)], ses[peak, np.arange(reps)]
    low, high = interval(chosen, se, tests=len(truths))
    coverage = float(np.mean((low <= truth) & (truth <= high)))
    assert 0.95 <= coverage <= 1.0, coverage
