"""Per-neuron one-sample t-tests, vectorised over neurons (FDR control is in fdr.py).

What q reads (`p_value`): the skewness-corrected t of Hall (1992) with a second-order term in
the tail opposite the skew. Student's t p (kept as `p_student`) is anti-conservative in the
far tail where Benjamini-Hochberg reads it when Δ is skewed: a right-skewed Δ has its mean and
sd positively correlated, so a sample without its rare large values has a small mean *and* a
small sd and a very negative t. Hall's monotone transformation of t removes the n^-1/2 term
of its Edgeworth expansion, P(t <= x) = Φ(x) + n^-1/2 γ (2x² + 1) φ(x) / 6 + O(n^-1) (γ the
skewness of Δ):

    T = t + a t² + a² t³ / 3 + b,   a = γ̂ / (3 √n),   b = γ̂ / (6 √n),

γ̂ the sample skewness (stats/moments.py `skewness`). What it leaves, O(n^-1), is largest in
the tail opposite the skew (t < 0 for γ̂ > 0), and for the very samples that land there: those
that lack the rare large values, whose γ̂ is far below the population's (lognormal Δ at n =
240: median γ̂ 2.0 among the samples rejected at 1e-4, 3.5 over all, 6.2 in the population),
so Hall's T alone rejected 2.65-3.0x as often as nominal at 1e-4. In that tail only,

    T₂ = T (1 + γ̃² T² / n)^(-1/4)   (≈ T - γ̃² T³ / (4n)),   γ̃² = max(γ̂² - 6/n, 0),

a term of the Edgeworth expansion's n^-1 order and its γ²x³ form, whose exact coefficient
depends on moments up to the sixth that a sample of a skewed Δ does not pin down: it is set
to 1 (not tuned below that) and checked by simulation on the cases of issue 24 and on others
it was not chosen on (tests/stats/test_calibration.py, docs/method.md §4). γ̃² is γ̂² less
its sampling variance for symmetric Δ (6/n), so that the noise of γ̂ alone does not shrink T:
nothing changes at n = 240 and above (6/n = 0.025), and at a few dozen pairs symmetric Δ keeps
the power of Hall's T. T₂ is referred to
Student's t with n - 1 degrees of freedom (which keeps the exact test for normal Δ, where γ̂
is near 0 and T₂ = T = t to within a few parts in 10^4), two-sided: p = 2 P(t_{n-1} > |T₂|).
Both steps are non-decreasing in t (dT/dt = (1 + a t)² >= 0; x (1 + c x²)^(-1/4) is
increasing), so neither reverses the order of two samples with the same γ̂, and the second
has no ceiling (|T₂| grows as |T|^(1/2)): a strong effect on a skewed Δ still reaches the p's
that BH needs at 7B.

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
    p_value: np.ndarray  # the skewness-corrected p (`hall_p`): what q reads
    cohen_d: np.ndarray
    skew_diff: np.ndarray  # sample skewness of Δ
    p_student: np.ndarray  # Student's t p, 2 P(T_{n-1} > |t|)


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


def hall_statistic(t: np.ndarray, skewness: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Hall's (1992) skewness-corrected t: t + a t² + a² t³ / 3 + b with a = γ̂ / (3 √n),
    b = γ̂ / (6 √n); t itself where γ̂ is not finite (n < 3)."""
    t, skewness, n = (np.asarray(v, dtype=np.float64) for v in (t, skewness, n))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        g = np.where(np.isfinite(skewness), skewness, 0.0)
        a = g / (3.0 * np.sqrt(n))
        return t + a * t * t + a * a * t**3 / 3.0 + a / 2.0


def corrected_statistic(t: np.ndarray, skewness: np.ndarray, n: np.ndarray) -> np.ndarray:
    """`hall_statistic` T, and in the tail opposite the skew (T γ̂ < 0) the second-order
    T (1 + γ̃² T² / n)^(-1/4), γ̃² = max(γ̂² - 6/n, 0) (module doc); t itself where γ̂ is not
    finite (n < 3)."""
    n = np.asarray(n, dtype=np.float64)
    big_t = hall_statistic(t, skewness, n)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        g = np.where(np.isfinite(skewness), skewness, 0.0)
        squared = np.maximum(g * g - 6.0 / n, 0.0)  # γ̂² less its variance for symmetric Δ, 6/n
        shrink = (1.0 + squared * big_t * big_t / n) ** -0.25
        return np.where(big_t * g < 0, big_t * shrink, big_t)


def hall_p(t: np.ndarray, skewness: np.ndarray, n: np.ndarray) -> np.ndarray:
    """`p_value`: the two-sided p of the skewness-corrected statistic (`corrected_statistic`:
    Hall's T, with the second-order term in the tail opposite the skew) against Student's t
    with n - 1 degrees of freedom, 2 P(t_{n-1} > |T₂|) (NaN where t is)."""
    n = np.asarray(n, dtype=np.float64)
    big_t = corrected_statistic(t, skewness, n)
    with np.errstate(invalid="ignore"):
        return np.minimum(1.0, 2.0 * sps.t.sf(np.abs(big_t), np.maximum(n - 1, 1)))


def one_sample_t(moments: RunningMoments) -> NeuronTests:
    """t = mean / (sd / √n) against μ = 0; `p_value` the two-sided skewness-corrected p
    (`hall_p`), `p_student` Student's, both with n - 1 degrees of freedom.

    Where Δ is constant (see `t_defined`) or n < 2, the test is undefined and t, p and d
    are NaN.
    """
    n, mean, sd = moments.n, moments.mean, moments.sd
    defined = t_defined(mean, sd, n)
    t = t_from_moments(mean, sd, n)
    skew = np.where(defined, moments.skewness, np.nan) if moments.m3.size else np.full(n.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(defined, mean / sd, np.nan)
        p_student = np.where(defined, 2.0 * sps.t.sf(np.abs(t), np.maximum(n - 1, 1)), np.nan)
    p = np.where(defined, hall_p(t, skew, n), np.nan)
    return NeuronTests(n=n.astype(np.int64), mean_diff=mean, sd_diff=sd, t_value=t, p_value=p, cohen_d=d,
                       skew_diff=skew, p_student=p_student)
