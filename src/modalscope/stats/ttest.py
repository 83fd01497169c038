"""Per-neuron one-sample t-tests, vectorised over neurons (FDR control is in fdr.py).

Why: the report's Table 3 is a t-test per neuron of H0: E[Δ] = 0 over inputs. We compute it
from running moments (see `moments.py`), so it never needs every input in memory, and
check it against `scipy.stats.ttest_1samp` in the tests. Cohen's d_z (mean Δ / sd Δ) is
the paired-design effect size: unlike t it does not grow with the number of inputs.

`t_from_moments` is the one place a t is made from (mean, sd, n): Table 3 and the observed
statistic of the sign-flip test (controls.PermutationT) both call it on the same running
moments, so they agree to the last bit and share one rule for a constant Δ. That rule is
relative, not `sd > 0`: rounding leaves a constant column an sd of a few ulps of its mean
(e.g. 1e-16 · |mean|), which an exact test would turn into t ≈ 1e16. Genuine variation
of Δ from float32 activations is at least one float32 ulp, ~6e-8 relative, far above
`CONSTANT_RTOL`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from modalscope.stats.moments import RunningMoments


@dataclass
class NeuronTests:
    n: np.ndarray
    mean_diff: np.ndarray
    sd_diff: np.ndarray
    t_value: np.ndarray
    p_value: np.ndarray
    cohen_d: np.ndarray


# Δ counts as constant where sd <= CONSTANT_RTOL · max(|mean|, TINY): float rounding of a
# constant column leaves sd ~ 1e-16 · |mean|; TINY makes sd = mean = 0 constant too.
CONSTANT_RTOL = 1e-12
TINY = np.finfo(np.float64).tiny


def t_defined(mean: np.ndarray, sd: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Where the one-sample t is defined: n > 1 and sd not negligible against |mean|."""
    mean, sd, n = (np.asarray(v, dtype=np.float64) for v in (mean, sd, n))
    with np.errstate(invalid="ignore"):
        return (n > 1) & (sd > CONSTANT_RTOL * np.maximum(np.abs(mean), TINY))


def t_from_moments(
    mean: np.ndarray, sd: np.ndarray, n: np.ndarray, undefined: float = np.nan
) -> np.ndarray:
    """t = mean / (sd / √n) against μ = 0; `undefined` where `t_defined` is False.

    NaN (the default) says "no test" for an observed sample. A sign-flipped sample that
    comes out constant has |t| = ∞ in exact arithmetic, so the permutation test passes
    `undefined=np.inf`: it counts as at least as extreme as any observed t.
    """
    mean, sd, n = (np.asarray(v, dtype=np.float64) for v in (mean, sd, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(t_defined(mean, sd, n), mean / (sd / np.sqrt(n)), undefined)


def one_sample_t(moments: RunningMoments) -> NeuronTests:
    """t = mean / (sd / √n) against μ = 0, two-sided p with n - 1 degrees of freedom.

    Where Δ is constant (see `t_defined`) or n < 2, the test is undefined and t, p and d
    are NaN.
    """
    n, mean, sd = moments.n, moments.mean, moments.sd
    defined = t_defined(mean, sd, n)
    t = t_from_moments(mean, sd, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(defined, mean / sd, np.nan)
        p = np.where(defined, 2.0 * sps.t.sf(np.abs(t), np.maximum(n - 1, 1)), np.nan)
    return NeuronTests(n=n.astype(np.int64), mean_diff=mean, sd_diff=sd, t_value=t, p_value=p, cohen_d=d)
