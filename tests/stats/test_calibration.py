"""Type-I error and power of the per-neuron test behind q (issue 24, point 3), simulated.

`p_value` (what q reads) is Hall's (1992) skewness-corrected t with a second-order term in
the tail opposite the skew (stats/one_sample.py). Where Benjamini-Hochberg reads p (1e-3, 1e-4 and
below) Student's t is anti-conservative for skewed Δ: lognormal Δ at n = 240 rejects about 23
times as often as the nominal 1e-4, and Hall's T alone 2.65-3x. Here each replicate is one
"neuron" (a column), so a million replicates are a few matrix passes.

The suite runs fewer replicates than docs/method.md's table (made with `python
tests/stats/test_calibration.py 1000000`, about 10 minutes on 2 cores), so it checks that
the observed rate is not above 2x nominal beyond the simulation's own error; the table has the
precise values. Besides the issue's cases (gamma(2) and lognormal(0, 1) at n = 240 and 2,000),
distributions the second-order term was not chosen on (`UNTUNED`) are checked at n = 240.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from scipy import stats as sps

from modalscope.stats.one_sample import corrected_statistic, hall_p, hall_statistic

LOGNORMAL_MEAN = float(np.exp(0.5))
GAMMA_SHAPE = 2.0  # skewness 2 / √2 = 1.41, the case
ALPHAS = (1e-3, 1e-4)
# Not used to choose the second-order term: chi-square(1) (skewness 2.83), a heavier lognormal
# (sigma 1.2, skewness 16), a sparse mixture (5% of inputs shifted by 5 sd: a neuron that
# fires rarely), left-skewed lognormal (the sign of the correction) and symmetric t(5).
UNTUNED = ("chi2", "lognormal_1.2", "sparse", "negative_lognormal", "t5")


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
    if dist == "chi2":
        x = rng.standard_normal((n, reps), dtype=np.float32)
        x *= x
        x -= np.float32(1.0)
        return x
    if dist == "lognormal_1.2":
        x = rng.standard_normal((n, reps), dtype=np.float32)
        x *= np.float32(1.2)
        np.exp(x, out=x)
        x -= np.float32(np.exp(0.72))
        return x
    if dist == "sparse":
        x = rng.standard_normal((n, reps), dtype=np.float32)
        x += np.float32(5.0) * (rng.random((n, reps), dtype=np.float32) < 0.05) - np.float32(0.25)
        return x
    if dist == "negative_lognormal":
        return -draw(rng, "lognormal", n, reps)
    if dist == "t5":
        return rng.standard_t(5, (n, reps)).astype(np.float32)
    raise ValueError(dist)


def column_tests(x: np.ndarray, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_value as Table 3 computes it, Student's p, Hall's T alone) of each column of x + shift,
    from the moments in float64 (the same (n, mean, sd, skewness) stats/moments.py keeps)."""
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
    size = np.full(t.shape, n)
    return (hall_p(t, skew, size), 2.0 * sps.t.sf(np.abs(t), n - 1),
            2.0 * sps.t.sf(np.abs(hall_statistic(t, skew, size)), n - 1))


def rejections(dist: str, n: int, reps: int, seed: int, shift: float = 0.0,
               alphas=ALPHAS, hall: bool = False):
    """([alpha] rejections of p_value, [alpha] of Student's p) over `reps` replicates (and of
    Hall's T alone, third, with `hall`)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, (1 << 23) // n)
    counts = np.zeros((3, len(alphas)))
    for start in range(0, reps, chunk):
        for row, p in zip(counts, column_tests(draw(rng, dist, n, min(chunk, reps - start)), shift)):
            row += [(p < a).sum() for a in alphas]
    return tuple(counts) if hall else (counts[0], counts[1])


def poisson_upper(count: float, level: float = 0.999) -> float:
    """Upper confidence bound of a Poisson mean from an observed count (Garwood)."""
    return float(sps.chi2.ppf(level, 2 * count + 2) / 2)


def test_p_value_is_student_p_for_zero_skewness_and_monotone_in_t():
    t = np.linspace(-40, 40, 8001)
    n = np.full(t.shape, 240)
    np.testing.assert_allclose(hall_p(t, np.zeros_like(t), n), 2 * sps.t.sf(np.abs(t), 239), rtol=1e-12)
    for g in (-6.0, -3.0, -0.1, 0.7, 6.0):
        big = hall_statistic(t, np.full(t.shape, g), n)
        assert (np.diff(big) >= 0).all()
        second = corrected_statistic(t, np.full(t.shape, g), n)
        assert (np.diff(second) > 0).all()  # strictly: no ceiling, no reversal
        assert (np.sign(second) == np.sign(big)).all()
        same = big * g >= 0  # the tail of the skew keeps Hall's T; the other is pulled in
        np.testing.assert_array_equal(second[same], big[same])
        assert (np.abs(second[~same]) <= np.abs(big[~same])).all()
    # no ceiling: a strong effect on a very skewed Δ still reaches the p's BH reads at 7B
    assert hall_p(np.array([-25.0]), np.array([6.0]), np.array([240]))[0] < 1e-9


def test_type_one_error_within_twice_nominal_for_skewed_delta():
    """Gamma(2) and lognormal Δ at n = 240 and 2,000: the rate of p_value < alpha is not above
    2 alpha beyond the simulation's error (a count whose 99.9% Poisson lower bound lies above
    2 alpha fails); at n = 240, where the counts are large enough, the observed rate itself is
    at most 2 alpha, where Student's t (and at lognormal 1e-4 Hall's T alone) is above it."""
    cases = {("gamma", 240): 300_000, ("lognormal", 240): 300_000, ("gamma", 2000): 40_000,
             ("lognormal", 2000): 40_000}
    for (dist, n), reps in cases.items():
        ours, student = rejections(dist, n, reps, seed=n + len(dist))
        for alpha, count in zip(ALPHAS, ours):
            assert below_twice(count, alpha, reps), (dist, n, alpha, count / reps)
            if n == 240:
                assert count <= 2 * alpha * reps, (dist, n, alpha, count / reps)
        if n == 240:
            assert student[1] > 2.5 * ALPHAS[1] * reps  # the failure this test guards against


def below_twice(count: float, alpha: float, reps: int) -> bool:
    """Whether the rate count / reps is consistent with at most 2 alpha: the 99.9% Poisson lower
    bound of the count (Garwood) is not above 2 alpha reps."""
    lower = sps.chi2.ppf(0.001, 2 * count) / 2 if count else 0.0
    return lower <= 2 * alpha * reps


def test_type_one_error_on_distributions_the_correction_was_not_chosen_on():
    """UNTUNED at n = 240 (the harder size): within 2x nominal beyond the simulation's error at
    1e-3 and 1e-4 (Student's t: up to 50x for the heavier lognormal)."""
    reps = 100_000
    for i, dist in enumerate(UNTUNED):
        ours, _ = rejections(dist, 240, reps, seed=100 + i)
        for alpha, count in zip(ALPHAS, ours):
            assert below_twice(count, alpha, reps), (dist, alpha, count / reps)


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
    for dist, sizes in (("gamma", (240, 2000)), ("lognormal", (240, 2000)), ("normal", (240, 2000)),
                        *((d, (240,)) for d in UNTUNED)):
        for n in sizes:
            start = time.time()
            ours, student, alone = rejections(dist, n, reps, seed=11 + n, alphas=alphas, hall=True)
            print(f"{dist:9s} n={n:5d}", " ".join(
                f"alpha={a:g}: p_value {o / reps:.2e} ({o / reps / a:.2f}x, <= {poisson_upper(o) / reps / a:.2f}x) "
                f"student {s / reps / a:.2f}x hall-alone {h / reps / a:.2f}x"
                for a, o, s, h in zip(alphas, ours, student, alone)),
                f"[{time.time() - start:.0f} s]", flush=True)
    for n, shifts in ((240, (0.18, 0.235, 0.265)), (2000, (0.063, 0.082, 0.092))):
        for alpha, shift in zip(alphas, shifts):
            ours, student = rejections("normal", n, reps // 10, seed=5, shift=shift, alphas=(alpha,))
            print(f"power normal n={n} shift={shift} alpha={alpha:g}: p_value {ours[0] / (reps // 10):.4f} "
                  f"student {student[0] / (reps // 10):.4f} ratio {ours[0] / max(student[0], 1):.4f}", flush=True)
