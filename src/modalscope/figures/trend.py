"""Figure 2: layer mean Δ across decoder depth, with CI band and linear fit.

Design choices:

* The 95% CI band is ONE closed polygon (``fill="toself"``): x runs up the
  layers along ``ci_high`` and back down along ``ci_low``. Unlike a pair of
  ``tonexty`` traces it cannot be broken by trace reordering, and it carries
  its own legend entry ("95% CI over neurons"). Layers whose CI is not finite
  (e.g. a single neuron) are left out of the band but kept in the mean line.
* The regression line is drawn from the caller's ``regression`` dict (the
  numbers reported in the tables), not refitted here, so figure and table
  cannot disagree. Its legend name carries R² and slope.
* A horizontal zero line marks "no modality preference".
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

__all__ = ["figure2", "fit_label"]

Y_TITLE = "mean Δ (text − image)"


def fit_label(regression: dict) -> str:
    """Legend name of the regression line, e.g. 'linear fit, R² = 0.97, ...'."""
    r2 = float(regression["r2"])
    slope = float(regression["slope"])
    r2_txt = f"{r2:.2f}" if math.isfinite(r2) else "n/a"
    return f"linear fit, R² = {r2_txt}, slope = {slope:.3g}/layer"


def figure2(layers: pd.DataFrame, regression: dict, site: str) -> go.Figure:
    """Layer mean Δ vs. layer index with 95% CI band and regression line.

    ``layers`` has columns ``layer, mean_diff, ci_low, ci_high, n_neurons``
    (and optionally ``site``: then only rows of ``site`` are used);
    ``regression`` is ``{"slope": float, "intercept": float, "r2": float}``.
    """
    need = {"layer", "mean_diff", "ci_low", "ci_high"}
    missing = need - set(layers.columns)
    if missing:
        raise ValueError(f"layers table lacks columns {sorted(missing)}")
    df = layers
    if "site" in df.columns:
        df = df[df["site"] == site]
        if df.empty:
            found = sorted(map(str, layers["site"].unique()))
            raise ValueError(f"no rows for site {site!r}; sites present: {found}")
    if df.empty:
        raise ValueError(f"layers table for site {site!r} is empty")
    df = df.sort_values("layer")

    x = df["layer"].to_numpy(dtype=float)
    mean = df["mean_diff"].to_numpy(dtype=float)
    lo = df["ci_low"].to_numpy(dtype=float)
    hi = df["ci_high"].to_numpy(dtype=float)
    if "n_neurons" in df.columns:
        n_neurons = df["n_neurons"].to_numpy()
    else:
        n_neurons = np.full(len(df), np.nan)

    fig = go.Figure()
    ok = np.isfinite(lo) & np.isfinite(hi)
    fig.add_trace(
        go.Scatter(
            x=np.concatenate([x[ok], x[ok][::-1]]),
            y=np.concatenate([hi[ok], lo[ok][::-1]]),
            fill="toself",
            fillcolor="rgba(31, 119, 180, 0.2)",
            line=dict(width=0, color="rgba(31, 119, 180, 0)"),
            mode="lines",
            hoverinfo="skip",
            name="95% CI over neurons",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=mean,
            mode="markers+lines",
            name="layer mean Δ",
            line=dict(color="#1f77b4", width=2),
            marker=dict(size=7),
            customdata=np.column_stack([lo, hi, n_neurons]),
            hovertemplate=(
                "layer %{x}<br>mean Δ = %{y:.4g}"
                "<br>95% CI [%{customdata[0]:.4g}, %{customdata[1]:.4g}]"
                "<br>neurons: %{customdata[2]}<extra></extra>"
            ),
        )
    )
    slope = float(regression["slope"])
    intercept = float(regression["intercept"])
    fig.add_trace(
        go.Scatter(
            x=x,
            y=intercept + slope * x,
            mode="lines",
            name=fit_label(regression),
            line=dict(color="red", dash="dash", width=2),
            hoverinfo="skip",
        )
    )
    fig.add_hline(y=0, line=dict(color="black", width=1, dash="dot"))
    fig.update_layout(
        title=dict(text=f"{site} — layer mean difference (text − image) by decoder layer"),
        xaxis_title="decoder layer",
        yaxis_title=Y_TITLE,
        template="plotly_white",
        height=500,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
        margin=dict(t=100),
    )
    fig.update_xaxes(dtick=max(1, int(math.ceil(len(x) / 16))) if len(x) > 1 else 1)
    return fig
