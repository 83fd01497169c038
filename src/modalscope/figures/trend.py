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
* Controls, drawn when the layers table has them (see docs/method.md): the input-level
  95% CI (t-interval over inputs of each input's layer mean: the inputs are the sampled
  units), the sign-flip permutation null band (where layer means fall when Δ has no
  preferred sign), and a second reduction (by default matched_max, which removes the
  length bias of max over 10 caption vs 576 image tokens) beside the first. The report's
  band over neurons is kept but named for what it is: the neurons' spread.
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
    label = f"linear fit, R² = {r2_txt}, slope = {slope:.3g}/layer"
    if "slope_ci_low" in regression:
        label += (f" (bootstrap 95% CI {regression['slope_ci_low']:.3g} to "
                  f"{regression['slope_ci_high']:.3g};<br>sign-flip permutation p = {regression['slope_p_perm']:.2g})")
    return label


def _col(name: str, stat: str) -> str:
    return name if stat == "max" else f"{name}_{stat}"


def _band(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, name: str, color: str, dash: str | None = None) -> go.Scatter:
    ok = np.isfinite(lo) & np.isfinite(hi)
    return go.Scatter(
        x=np.concatenate([x[ok], x[ok][::-1]]),
        y=np.concatenate([hi[ok], lo[ok][::-1]]),
        fill="toself",
        fillcolor=color,
        line=dict(width=1 if dash else 0, color=color, dash=dash),
        mode="lines",
        hoverinfo="skip",
        name=name,
    )


def figure2(
    layers: pd.DataFrame,
    regression: dict,
    site: str,
    stat: str = "max",
    compare: str | None = "matched_max",
    compare_regression: dict | None = None,
) -> go.Figure:
    """Layer mean Δ vs. layer index with 95% CI band and regression line.

    ``layers`` has columns ``layer, mean_diff, ci_low, ci_high, n_neurons``
    (and optionally ``site``: then only rows of ``site`` are used);
    ``regression`` is ``{"slope": float, "intercept": float, "r2": float}``.
    """
    need = {"layer", _col("mean_diff", stat), _col("ci_low", stat), _col("ci_high", stat)}
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
    mean = df[_col("mean_diff", stat)].to_numpy(dtype=float)
    lo = df[_col("ci_low", stat)].to_numpy(dtype=float)
    hi = df[_col("ci_high", stat)].to_numpy(dtype=float)
    controls = _col("input_ci_low", stat) in df.columns
    if "n_neurons" in df.columns:
        n_neurons = df["n_neurons"].to_numpy()
    else:
        n_neurons = np.full(len(df), np.nan)

    fig = go.Figure()
    if controls:
        fig.add_trace(_band(x, lo, hi, "spread over neurons (report's 95% CI)", "rgba(128, 128, 128, 0.15)"))
        fig.add_trace(_band(x, df[_col("null_low", stat)].to_numpy(float), df[_col("null_high", stat)].to_numpy(float),
                            "sign-flip null, 95%", "rgba(230, 159, 0, 0.25)", dash="dot"))
        fig.add_trace(_band(x, df[_col("input_ci_low", stat)].to_numpy(float),
                            df[_col("input_ci_high", stat)].to_numpy(float),
                            "95% CI over inputs", "rgba(31, 119, 180, 0.3)"))
    else:
        fig.add_trace(_band(x, lo, hi, "95% CI over neurons", "rgba(31, 119, 180, 0.2)"))
    fig.add_trace(
        go.Scatter(
            x=x,
            y=mean,
            mode="markers+lines",
            name=f"layer mean Δ ({stat})",
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
    if controls and compare and _col("mean_diff", compare) in df.columns:
        other = df[_col("mean_diff", compare)].to_numpy(dtype=float)
        fig.add_trace(_band(x, df[_col("input_ci_low", compare)].to_numpy(float),
                            df[_col("input_ci_high", compare)].to_numpy(float),
                            f"95% CI over inputs ({compare})", "rgba(0, 158, 115, 0.25)"))
        label = f"layer mean Δ ({compare})"
        if compare_regression:
            label += f", R² = {float(compare_regression['r2']):.2f}"
        fig.add_trace(go.Scatter(x=x, y=other, mode="markers+lines", name=label,
                                 line=dict(color="#009E73", width=2), marker=dict(size=7, symbol="diamond")))
    fig.add_hline(y=0, line=dict(color="black", width=1, dash="dot"))
    fig.update_layout(
        title=dict(text=f"{site}: layer mean Δ (text − image) by decoder layer, reduction: {stat}"),
        xaxis_title="decoder layer",
        yaxis_title=Y_TITLE,
        template="plotly_white",
        height=500,
        legend=dict(orientation="v", yanchor="top", y=1.0, xanchor="left", x=1.02),
        margin=dict(t=80, r=40),
    )
    fig.update_xaxes(dtick=max(1, int(math.ceil(len(x) / 16))) if len(x) > 1 else 1)
    return fig
