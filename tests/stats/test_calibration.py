"""Type-I error and power of the per-neuron test behind q (issue 24, point 3), simulated.

`p_value` (what q reads) is Hall's (1992) skewness-corrected t (stats/ttest.py). Where
Benjamini-Hochberg reads p (1e-3, 1e-4 and below) Student's t is anti-conservative for skewed
Δ: lognormal Δ at n = 240 rejects about 23 times as often as the nominal 1e-4. Here each
replicate is one "neuron" (a column), so a million replicates are a few matrix passes.

The suite runs fewer replicates than docs/method.md's table (made with `python
tests/stats/test_calibration.py 1000000`, about 10 minutes on 2 cores), so it checks that
the observed rate is not above 2x nominal beyond the simulation's own error; the table has the
precise values.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from scipy import stats as sps

from modalscope.stats.ttest import hall_p, hall_statistic

LOGNORMAL_MEAN = float(np.exp(0.5))
GAMMA_SHAPE = 2.0  # skewness 2 / √2 = 1.41, the case
ALPHAS = (1e-3, 1e-4)


def draw(rng: np.random.Generator, dist: str, n: int, reps: int) -> np.ndarray:
    """[n, reps] float32 Δ with mean 0: centred lognormal(0, 1) (skewness 6.2), centred
    gamma(2) (skewness 1.41), or standard normal (symmetric)."""
    if dist == "lognormal":
        x = rng.standard_normal((n, reps), dtype=np.float32)
        np.exp(x, out=x)
        x -= np.float32(LOGNORMAL_MEAN)
        return x
    if dist == "gamma":
        x = rng.standard_gamma(GAMMA_SHAPE, (n, reps), dtype=np.float32)
        x -= np.float32(GAMMA_SHAPE)
        return x
    if dist == "normal":
        return rng.standard_normal((n, reps), dtype=np.float32)
    raise ValueError(dist)


def column_tests(x: np.ndarray, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(p_value as Table 3 computes it, Student's p) of each column of x + shift, from the
    moments in float64 (the same (n, mean, sd, skewness) stats/moments.py keeps)."""
    n = x.shape[0]
    mean = x.sum(axis=0, dtype=np.float64) / n
    centred = x - mean.astype(np.float32)
    residual = centred.sum(axis=0, dtype=np.float64) / n  # float32 centring's rounding
    square = centred * centred
    m2 = square.sum(axis=0, dtype=np.float64) - n * residual**2
    square *= centred
    m3 = square.sum(axis=0, dtype=np.float64) - 3 * residual * m2 - n * residual**3
    mean = mean + shift
    t = mean / np.sqrt(m2 / (n - 1) / n)
    skew = (m3 / n) / (m2 / n) ** 1.5
    return hall_p(t, skew, np.full(t.shape, n)), 2.0 * sps.t.sf(np.abs(t), n - 1)


def rejections(dist: str, n: int, reps: int, seed: int, shift: float = 0.0,
               alphas=ALPHAS) -> tuple[np.ndarray, np.ndarray]:
    """([alpha] rejections of p_value, [alpha] of Student's p) over `reps` replicates."""
    rng = np.random.default_rng(seed)
    chunk = max(1, (1 << 23) // n)
    ours, student = np.zeros(len(alphas)), np.zeros(len(alphas))
    for start in range(0, reps, chunk):
        p, p_t = column_tests(draw(rng, dist, n, min(chunk, reps - start)), shift)
        ours += [(p < a).sum() for a in alphas]
        student += [(p_t < a).sum() for a in alphas]
    return ours, student


def poisson_upper(count: float, level: float = 0.999) -> float:
    """Upper confidence bound of a Poisson mean from an observed count (Garwood)."""
    return float(sps.chi2.ppf(level, 2 * count + 2) / 2)


def test_hall_p_is_student_p_for_zero_skewness_and_monotone_in_t():
    t = np.linspace(-8, 8, 161)
    n = np.full(t.shape, 240)
    np.testing.assert_allclose(hall_p(t, np.zeros_like(t), n), 2 * sps.t.sf(np.abs(t), 239), rtol=1e-12)
    for g in (-3.0, 0.7, 6.0):
        big = hall_statistic(t, np.full(t.shape, g), n)
        assert (np.diff(big) >= 0).all()


def test_type_one_error_within_twice_nominal_for_skewed_delta():
    """Gamma(2) and lognormal Δ at n = 240 and 2,000: the rate of p_value < alpha is not above
    2 alpha beyond the simulation's error (a count whose 99.9% Poisson lower bound lies above
    2 alpha fails), except lognormal at n = 240 and 1e-4, the one cell the correction misses
    (2.65x in 10^6 replicates, docs/method.md §4): there it must stay below 4x, where Student's
    t is above 5x (23x in 10^6)."""
    cases = {("gamma", 240): 300_000, ("lognormal", 240): 300_000, ("gamma", 2000): 40_000,
             ("lognormal", 2000): 40_000}
    for (dist, n), reps in cases.items():
        ours, student = rejections(dist, n, reps, seed=n + len(dist))
        for alpha, count in zip(ALPHAS, ours):
            lower = sps.chi2.ppf(0.001, 2 * count) / 2 if count else 0.0
            if (dist, n, alpha) == ("lognormal", 240, 1e-4):  # the known miss
                assert count <= 4 * alpha * reps, count / reps
                assert student[1] > 5 * alpha * reps  # the failure this test guards against
            else:
                assert lower <= 2 * alpha * reps, (dist, n, alpha, count / reps)


def test_power_on_symmetric_delta_close_to_students():
    """Normal Δ shifted so that Student's t rejects about half the time at 1e-3 and 1e-4:
    p_value rejects at least 90% as often."""
    n, reps = 240, 20_000
    for alpha, shift in zip(ALPHAS, (0.235, 0.265)):
        ours, student = rejections("normal", n, reps, seed=7, shift=shift, alphas=(alpha,))
        assert 0.3 * reps < student[0] < 0.7 * reps
        assert ours[0] >= 0.9 * student[0], (alpha, ours[0] / reps, student[0] / reps)


if __name__ == "__main__":  # the table of docs/method.md: python tests/stats/test_calibration.py 1000000
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    alphas = (1e-2, 1e-3, 1e-4)
    for dist in ("gamma", "lognormal", "normal"):
        for n in (240, 2000):
            start = time.time()
            ours, student = rejections(dist, n, reps, seed=11 + n, alphas=alphas)
            print(f"{dist:9s} n={n:5d}", " ".join(
                f"alpha={a:g}: p_value {o / reps:.2e} ({o / reps / a:.2f}x, <= {poisson_upper(o) / reps / a:.2f}x) "
                f"student {s / reps:.2e} ({s / reps / a:.2f}x)" for a, o, s in zip(alphas, ours, student)),
                f"[{time.time() - start:.0f} s]", flush=True)
    for n, shifts in ((240, (0.18, 0.235, 0.265)), (2000, (0.063, 0.082, 0.092))):
        for alpha, shift in zip(alphas, shifts):
            ours, student = rejections("normal", n, reps // 10, seed=5, shift=shift, alphas=(alpha,))
            print(f"power normal n={n} shift={shift} alpha={alpha:g}: p_value {ours[0] / (reps // 10):.4f} "
                  f"student {student[0] / (reps // 10):.4f} ratio {ours[0] / max(student[0], 1):.4f}", flush=True)
