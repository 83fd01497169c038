"""Figure 2: layer mean Δ across decoder depth, with its uncertainty, controls and linear fit.

Design choices:

* Every band is ONE closed polygon (``fill="toself"``): x runs up the layers along the
  upper edge and back down along the lower one. Unlike a pair of ``tonexty`` traces it
  cannot be broken by trace reordering, and it carries its own legend entry. Layers whose
  interval is not finite (e.g. a single neuron) are left out of the band but kept in the
  mean line.
* The regression line is drawn from the caller's ``regression`` dict (the numbers reported
  in the tables), not refitted here, so figure and table cannot disagree. Its legend name
  carries R² and slope. It is the report's red dashed line, in Okabe-Ito vermillion.
* A horizontal zero line marks "no modality preference".
* Controls, drawn when the layers table has them (see docs/method.md): the input-level
  95% CI (t-interval over inputs of each input's layer mean: the inputs are the sampled
  units), the sign-flip permutation null band (where layer means fall when Δ has no
  preferred sign), and a second reduction (by default matched_max, which removes the
  length bias of a max over a few caption tokens vs hundreds of image tokens) beside the
  first. The report's band over neurons is kept but named for what it is: the neurons' spread.
  How many tokens each side had is the study's own count (`token_lengths`, from the store's
  `tokens/<stream>`): 576 image tokens for LLaVA-1.5, 216-484 for Qwen2.5-VL, 1,440-2,880 for
  LLaVA-NeXT, so a caption that named one number for every family would be wrong for most.
* Hovering a layer shows its mean, both intervals, the null band and how many of its
  neurons are FDR-significant each way, named by the contrast (text-/image-preferring for
  text − image, "A > B" / "B > A" for any other).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from modalscope.figures.style import (
    BLUE, DEFAULT_CONTRAST, GREEN, LAYER_AXIS, PURPLE, TWIN_GREY, VERMILLION, apply_layout, delta_axis, format_p,
    layer_ticks, permutation_floor,
    contrast_sides, no_preference, preferring, rgba,
)
from modalscope.stats.columns import column, site_rows

__all__ = ["figure2", "fit_label", "token_counts", "token_lengths"]

TOKEN_NOUNS = {"text": "caption", "image": "image", "text_base": "caption (base LLM)"}  # the streams in words


def token_counts(out_dir: Path) -> dict[str, np.ndarray]:
    """{stream: [input]} content tokens of every finished input, from DIR's store; {} without one."""
    from modalscope.folder import study_store
    from modalscope.store import STORE

    if not (Path(out_dir) / STORE).exists():
        return {}
    return {stream: np.asarray(n) for stream, n in study_store(out_dir).token_counts().items()}


def _count(n: np.ndarray) -> str:
    """'576' or 'median 12 (8-19)': a stream's content tokens over the inputs."""
    lo, mid, hi = np.min(n), np.median(n), np.max(n)
    return f"{lo:,.0f}" if lo == hi else f"median {mid:,.4g} ({lo:,.0f}-{hi:,.0f})"


def token_lengths(counts: Mapping[str, np.ndarray], contrast: str = DEFAULT_CONTRAST) -> str | None:
    """'median 12 (8-19) caption vs 576 image tokens': the two contrasted streams' content tokens in
    this study, or None when the store has no count for one of them (e.g. no store, a derived stream)."""
    sides = contrast_sides(contrast)
    found = [np.asarray(counts[side]) for side in sides if side in counts and len(counts[side])]
    if len(found) < 2:
        return None
    first, second = (TOKEN_NOUNS.get(side, side) for side in sides)
    return f"{_count(found[0])} {first} vs {_count(found[1])} {second} tokens"


def _p_text(regression: dict) -> str:
    """'= 0.0312', or '≤ 0.001' at the permutation floor 1/(n_perm + 1)."""
    text = format_p(regression.get("slope_p_perm"), permutation_floor(regression.get("n_perm")))
    return text if text.startswith("≤") else f"= {text}"


def fit_label(regression: dict, stat: str | None = None) -> str:
    """Legend name of the regression line, e.g. 'linear fit (max), R² = 0.97, ...'."""
    r2 = float(regression["r2"])
    slope = float(regression["slope"])
    r2_txt = f"{r2:.2f}" if math.isfinite(r2) else "n/a"
    label = "linear fit" + (f" ({stat})" if stat else "") + f", R² = {r2_txt}, slope = {slope:.3g}/layer"
    if "slope_ci_low" in regression:
        label += (f"<br>(bootstrap 95% CI {regression['slope_ci_low']:.3g} to "
                  f"{regression['slope_ci_high']:.3g}; sign-flip p {_p_text(regression)})")
    return label




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


def _column(df: pd.DataFrame, name: str) -> np.ndarray:
    return df[name].to_numpy(dtype=float) if name in df.columns else np.full(len(df), np.nan)


def _hover(df: pd.DataFrame, stat: str, controls: bool, contrast: str) -> tuple[np.ndarray, str]:
    """customdata and hovertemplate of a layer-mean line."""
    names = ["ci_low", "ci_high", "input_ci_low", "input_ci_high", "null_low", "null_high",
             "n_text_preferring", "n_image_preferring"]
    data = np.column_stack([_column(df, column(n, stat)) for n in names] + [_column(df, "n_neurons")])
    text = ("<b>layer %{x}</b> (" + stat + ")<br>mean Δ = %{y:.4g}"
            "<br>spread over neurons, 95%: [%{customdata[0]:.3g}, %{customdata[1]:.3g}]")
    if controls:
        text += ("<br>95% CI over inputs: [%{customdata[2]:.3g}, %{customdata[3]:.3g}]"
                 "<br>sign-flip null, 95%: [%{customdata[4]:.3g}, %{customdata[5]:.3g}]")
    if column("n_text_preferring", stat) in df.columns:
        up, down = preferring(contrast)
        text += f"<br>q < 0.05: %{{customdata[6]:.0f}} {up}, %{{customdata[7]:.0f}} {down}"
    text += " of %{customdata[8]:.0f} neurons<extra></extra>"
    return data, text


TWIN_NAME = "random twin (re-initialised)"  # the legend's name of the twin's line


def twin_trace(twin: pd.DataFrame, stat: str, regression: dict | None = None) -> go.Scatter | None:
    """The random twin's layer mean Δ of `stat` (its layers table, one site), dark grey and dashed,
    its slope in the legend and its 95% CI over inputs on hover; None when it lacks the reduction."""
    name = column("mean_diff", stat)
    if twin is None or name not in twin.columns or not len(twin):
        return None
    twin = twin.sort_values("layer")
    label = f"{TWIN_NAME}: layer mean Δ ({stat})"
    if regression and "slope" in regression:
        label += f", slope = {float(regression['slope']):.3g}/layer"
    data = np.column_stack([_column(twin, column("input_ci_low", stat)), _column(twin, column("input_ci_high", stat))])
    return go.Scatter(
        x=twin["layer"].to_numpy(dtype=float), y=twin[name].to_numpy(dtype=float), mode="markers+lines", name=label,
        line=dict(color=TWIN_GREY, dash="dash", width=2), marker=dict(size=6, symbol="x", color=TWIN_GREY),
        customdata=data, hovertemplate=("<b>layer %{x}</b>, random twin (" + stat + ")<br>mean Δ = %{y:.4g}"
                                        "<br>95% CI over inputs: [%{customdata[0]:.3g}, %{customdata[1]:.3g}]"
                                        "<extra></extra>"))


def _panel(fig: go.Figure, df: pd.DataFrame, stat: str, regression: dict | None, colour: str,
           symbol: str, col: int | None, first: bool, contrast: str, twin: pd.DataFrame | None = None,
           twin_regression: dict | None = None) -> None:
    """One reduction's bands, layer means and fit; `first` gives the shared bands their legend entry;
    with `twin` (the random twin's layers of this site) its layer means as a dark grey dashed line."""
    x = df["layer"].to_numpy(dtype=float)
    where = dict(row=1, col=col) if col else {}
    lo, hi = _column(df, column("ci_low", stat)), _column(df, column("ci_high", stat))
    controls = column("input_ci_low", stat) in df.columns
    bands = [(lo, hi, "95% CI over neurons", rgba(colour, 0.2), None)]
    if controls:
        bands = [
            (lo, hi, "spread over neurons, 95% (the report's CI)", "rgba(0, 0, 0, 0.08)", None),
            (_column(df, column("null_low", stat)), _column(df, column("null_high", stat)),
             f"sign-flip null, 95% ({no_preference(contrast)})", rgba(PURPLE, 0.22), "dot"),
            (_column(df, column("input_ci_low", stat)), _column(df, column("input_ci_high", stat)),
             f"95% CI over inputs ({stat})", rgba(colour, 0.25), None),
        ]
    for low, high, name, fill, dash in bands:
        shared = not name.endswith(f"({stat})")
        band = _band(x, low, high, name, fill, dash)
        band.update(legendgroup=name, showlegend=first or not shared)
        fig.add_trace(band, **where)
    data, hover = _hover(df, stat, controls, contrast)
    fig.add_trace(go.Scatter(
        x=x, y=df[column("mean_diff", stat)].to_numpy(dtype=float), mode="markers+lines",
        name=f"layer mean Δ ({stat})", line=dict(color=colour, width=2.5), marker=dict(size=8, symbol=symbol),
        customdata=data, hovertemplate=hover,
    ), **where)
    if regression:
        slope, intercept = float(regression["slope"]), float(regression["intercept"])
        fig.add_trace(go.Scatter(
            x=x, y=intercept + slope * x, mode="lines", name=fit_label(regression, stat),
            line=dict(color=VERMILLION, dash="dash", width=2.5), hoverinfo="skip",
        ), **where)
    trace = twin_trace(twin, stat, twin_regression) if twin is not None else None
    if trace is not None:
        fig.add_trace(trace, **where)


def figure2(
    layers: pd.DataFrame,
    regression: dict,
    site: str,
    stat: str = "max",
    compare: str | None = "matched_max",
    compare_regression: dict | None = None,
    contrast: str = DEFAULT_CONTRAST,
    twin: pd.DataFrame | None = None,
    twin_regressions: Mapping[str, dict] | None = None,
) -> go.Figure:
    """Layer mean Δ vs. layer index with 95% bands and the regression line.

    ``layers`` has columns ``layer, mean_diff, ci_low, ci_high, n_neurons`` (suffixed
    ``_{stat}`` for reductions other than max; optionally ``site``: then only rows of
    ``site`` are used, and the controls ``input_ci_*``, ``null_*``);
    ``regression`` is ``{"slope": float, "intercept": float, "r2": float, ...}``.
    When the table has the controls and ``compare``'s columns, ``compare`` is drawn in a
    second panel beside ``stat`` (its own y axis: reductions differ in scale).
    ``twin``: the random twin's layers table (``--control random-twin``), drawn in each panel as a
    dark grey dashed line; ``twin_regressions``: its trend per reduction (the legend gives its slope).
    """
    need = {"layer", column("mean_diff", stat), column("ci_low", stat), column("ci_high", stat)}
    df = site_rows(layers, site, need, "layers").sort_values("layer")
    controls = column("input_ci_low", stat) in df.columns
    beside = bool(controls and compare and column("input_ci_low", compare) in df.columns)

    if beside:
        fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.13, subplot_titles=[
            f"reduction: {stat}", f"reduction: {compare}" + (" (length-matched)" if compare == "matched_max" else "")])
    else:
        fig = go.Figure()
    twin_rows = twin[twin["site"] == site] if twin is not None and "site" in twin.columns else twin
    regressions = twin_regressions or {}
    _panel(fig, df, stat, regression, BLUE, "circle", 1 if beside else None, True, contrast, twin_rows,
           regressions.get(stat))
    if beside:
        _panel(fig, df, compare, compare_regression, GREEN, "diamond", 2, False, contrast, twin_rows,
               regressions.get(compare))
    for col in (1, 2) if beside else (None,):
        where = dict(row=1, col=col) if col else {}
        fig.add_hline(y=0, line=dict(color="black", width=1, dash="dot"), **where)
        fig.update_xaxes(title_text=LAYER_AXIS, **layer_ticks(len(df)), **where)
    # Beside each other, the panel titles name the reduction; the axis only its unit.
    fig.update_yaxes(title_text=delta_axis(stat, "layer mean Δ", contrast, not beside),
                     **(dict(row=1, col=1) if beside else {}))
    if beside:
        fig.update_yaxes(title_text=delta_axis(compare, "layer mean Δ", contrast, False), row=1, col=2)
    apply_layout(
        fig, f"{site}: layer mean Δ ({contrast}) by decoder layer" + ("" if beside else f", reduction: {stat}"),
        height=640 if beside else 560,
        hovermode="closest",
        legend=dict(orientation="h", yanchor="top", y=-0.16, x=0, xanchor="left"),
        margin=dict(t=80, b=40, l=80, r=20),
    )
    return fig
