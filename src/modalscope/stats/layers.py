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


# Least squares' own p and standard error treat the layers as independent observations, which
# they are not (every layer sees the same inputs): they contradict the input-level inference
# (bootstrap CI, sign-flip p) both ways, so they keep names that say so and are never printed.
OLS_P, OLS_SE = "ols_p_value_layers_as_independent", "ols_stderr_layers_as_independent"
MODIFIED_Z = 3.5  # Iglewicz & Hoaglin (1993): a modified z-score above 3.5 marks an outlier


def layer_trend(layers: np.ndarray, layer_means: np.ndarray) -> dict[str, float]:
    """Least-squares line of layer mean on layer index: slope, intercept, r2 (and OLS p, se)."""
    x = np.asarray(layers, dtype=np.float64)
    y = np.asarray(layer_means, dtype=np.float64)
    keep = np.isfinite(y)
    if keep.sum() < 3:
        return {"slope": np.nan, "intercept": np.nan, "r2": np.nan, OLS_P: np.nan, OLS_SE: np.nan}
    fit = sps.linregress(x[keep], y[keep])
    return {
        "slope": float(fit.slope),
        "intercept": float(fit.intercept),
        "r2": float(fit.rvalue**2),
        OLS_P: float(fit.pvalue),
        OLS_SE: float(fit.stderr),
    }


def leave_one_out_slopes(layers: np.ndarray, layer_means: np.ndarray) -> dict[int, float]:
    """{layer: the least-squares slope without that layer}, for 4 or more finite layers.

    Why: a slope whose sign hangs on one layer is not a trend over depth, however small its
    bootstrap CI (the CI resamples inputs, not layers)."""
    x = np.asarray(layers, dtype=np.float64)
    y = np.asarray(layer_means, dtype=np.float64)
    keep = np.flatnonzero(np.isfinite(y))
    if keep.size < 4:
        return {}
    return {int(x[i]): float(sps.linregress(x[keep[keep != i]], y[keep[keep != i]]).slope) for i in keep}


def standout_layers(layers: np.ndarray, layer_means: np.ndarray) -> list[int]:
    """Layers whose mean lies far off the line: modified z-score of the residual above 3.5
    (median absolute deviation as the scale, Iglewicz & Hoaglin), for 5 or more finite layers."""
    x = np.asarray(layers, dtype=np.float64)
    y = np.asarray(layer_means, dtype=np.float64)
    keep = np.isfinite(y)
    if keep.sum() < 5:
        return []
    fit = sps.linregress(x[keep], y[keep])
    residual = y[keep] - (fit.intercept + fit.slope * x[keep])
    deviation = np.abs(residual - np.median(residual))
    mad = np.median(deviation)
    if mad == 0:
        return []
    z = 0.6745 * deviation / mad
    return [int(layer) for layer in x[keep][z > MODIFIED_Z]]
