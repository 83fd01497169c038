"""Layer summaries (Figure 2): the mean over neurons of the neuron mean Δ, and its trend.

Why: the report summarises each layer by the average of its neurons' mean Δ with a 95%
confidence interval, and fits a straight line of that average on the layer index. The
interval here is the report's: a t-interval over the layer's neurons, i.e. it describes
how the neurons of the layer spread, not how uncertain the layer mean is over inputs.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps


def layer_mean_ci(neuron_means: np.ndarray, level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, ci_low, ci_high, n) of finite neuron means, t-interval with n - 1 dof."""
    values = np.asarray(neuron_means, dtype=np.float64)
    values = values[np.isfinite(values)]
    n = values.size
    if n == 0:
        return (np.nan, np.nan, np.nan, 0)
    mean = float(values.mean())
    if n < 2:
        return (mean, np.nan, np.nan, n)
    half = sps.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / np.sqrt(n)
    return (mean, mean - half, mean + half, n)


def layer_trend(layers: np.ndarray, layer_means: np.ndarray) -> dict[str, float]:
    """Least-squares line of layer mean on layer index: slope, intercept, r2 (and its p, se)."""
    x = np.asarray(layers, dtype=np.float64)
    y = np.asarray(layer_means, dtype=np.float64)
    keep = np.isfinite(y)
    if keep.sum() < 3:
        return {"slope": np.nan, "intercept": np.nan, "r2": np.nan, "p_value": np.nan, "stderr": np.nan}
    fit = sps.linregress(x[keep], y[keep])
    return {
        "slope": float(fit.slope),
        "intercept": float(fit.intercept),
        "r2": float(fit.rvalue**2),
        "p_value": float(fit.pvalue),
        "stderr": float(fit.stderr),
    }
