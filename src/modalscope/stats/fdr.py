"""False discovery rate control over the neurons of a site (the family of hypotheses a
researcher scans): Benjamini-Hochberg, or Benjamini-Yekutieli, which holds under any
dependence between the tests (e.g. neurons of one layer)."""

from __future__ import annotations

import numpy as np


def _step_up(p_values: np.ndarray, by: bool) -> np.ndarray:
    """Step-up adjusted p-values: p_(j)·m·c/j, running minimum from the top, capped at 1.

    c = 1 for Benjamini-Hochberg, c = Σ_{i≤m} 1/i for Benjamini-Yekutieli. NaN p-values
    stay NaN and do not count as hypotheses.
    """
    p = np.asarray(p_values, dtype=np.float64)
    q = np.full_like(p, np.nan)
    finite = ~np.isnan(p)
    m = int(finite.sum())
    if m == 0:
        return q
    ranked = p[finite]
    order = np.argsort(ranked)
    rank = np.arange(1, m + 1)
    c = np.sum(1.0 / rank) if by else 1.0
    monotone = np.minimum.accumulate((ranked[order] * m * c / rank)[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(monotone, 1.0)
    q[finite] = adjusted
    return q


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (q); NaN p-values stay NaN and do not count as hypotheses."""
    return _step_up(p_values, by=False)


def benjamini_yekutieli(p_values: np.ndarray) -> np.ndarray:
    """BY-adjusted p-values (q), valid under any dependence between the tests
    (BH with m replaced by m·Σ_{i≤m} 1/i, as `scipy.stats.false_discovery_control(method="by")`)."""
    return _step_up(p_values, by=True)


def fdr(p: np.ndarray, method: str = "bh") -> np.ndarray:
    """q-values: "bh" (Benjamini-Hochberg) or "by" (Benjamini-Yekutieli, any dependence)."""
    if method == "bh":
        return benjamini_hochberg(p)
    if method == "by":
        return benjamini_yekutieli(p)
    raise ValueError(f"unknown FDR method {method!r}; expected 'bh' or 'by'")
