"""From per-pair readouts to effects, their uncertainty over pairs, and p against random sets.

Why: an ablation's effect on a handful of captions says little without its spread, and a large
effect says little if any k neurons of those layers do as much. So, per set, method and readout:
  effect    the mean over scored pairs of d_i = readout_i(ablated) − readout_i(intact);
  CI        the 95% t-interval of that mean over pairs (d_i are paired differences, one per pair;
            the pairs are the sampled units, so this is the uncertainty over inputs);
  p_random  (1 + #random sets whose effect is at least as extreme) / (1 + R), where "extreme" is
            the distance from the random effects' median (two-sided: a set that hurts less than
            any random set is as notable as one that hurts more); its floor is 1 / (1 + R);
  random_low, random_high, random_mean  the 2.5% and 97.5% quantiles and the mean of the R
            random effects: the band the figure draws.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

COLUMNS = ["set", "site", "layer_band", "k", "method", "readout", "effect", "ci_low", "ci_high",
           "p_random", "n_pairs", "n_random", "random_mean", "random_low", "random_high"]


def mean_ci(diffs: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences and its t-interval (NaN bounds for fewer than 2 pairs; the
    mean itself for differences that are all equal)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    mean = float(diffs.mean())
    if diffs.size < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, diffs.size - 1) * diffs.std(ddof=1) / np.sqrt(diffs.size))
    return mean, mean - half, mean + half


def p_against_random(effect: float, random_effects: np.ndarray) -> float:
    """(1 + #random effects at least as far from the random median as `effect`) / (1 + R)."""
    random_effects = np.asarray(random_effects, dtype=np.float64)
    center = float(np.median(random_effects))
    extreme = np.abs(random_effects - center) >= abs(effect - center) - 1e-12 * max(1.0, abs(effect))
    return float((1 + int(extreme.sum())) / (1 + random_effects.size))


def effect_row(values: np.ndarray, intact: np.ndarray, random_values: np.ndarray) -> dict[str, float]:
    """values, intact [pairs]; random_values [R, pairs]: the numbers of one table row. Pairs whose
    intact readout is NaN (nothing to score: a concept readout on a caption without its words) are
    left out."""
    keep = np.isfinite(intact)
    values, intact, random_values = values[keep], intact[keep], random_values[:, keep]
    if not keep.any():
        nan = float("nan")
        return {"effect": nan, "ci_low": nan, "ci_high": nan, "n_pairs": 0, "n_random": int(random_values.shape[0]),
                "p_random": nan, "random_mean": nan, "random_low": nan, "random_high": nan}
    effect, low, high = mean_ci(values - intact)
    random_effects = (random_values - intact[None, :]).mean(axis=1)
    row = {"effect": effect, "ci_low": low, "ci_high": high, "n_pairs": int(values.size),
           "n_random": int(random_values.shape[0])}
    if random_values.shape[0]:
        row.update(p_random=p_against_random(effect, random_effects), random_mean=float(random_effects.mean()),
                   random_low=float(np.quantile(random_effects, 0.025)),
                   random_high=float(np.quantile(random_effects, 0.975)))
    else:
        row.update(p_random=float("nan"), random_mean=float("nan"), random_low=float("nan"), random_high=float("nan"))
    return row


def as_table(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"k": "int64", "n_pairs": "int64", "n_random": "int64"})
