"""Figure 3: where words and pixels meet, the layer alignment of the two modalities.

Design choices:

* Three panels, loose to strict, as stats/alignment.py orders the views: linear CKA (the
  same geometry up to a rotation), mutual k-NN (the same neighbours), retrieval (the caption's
  own image is its nearest, in the same neurons). Each measure is a line over decoder layers
  with its shuffled-pairing null (95% band) in pink with a dotted edge, as Figure 2's null;
  chance, where it has a closed form, as a grey dashed line. A value above its pink band is
  alignment that unrelated pairs of the same two clouds do not give. The measures with an
  interval (the debiased CKA, retrieval top-1 and MRR: jackknife over pairs, coverage tested
  in tests/stats/test_alignment_coverage.py and test_retrieval_coverage.py) have it as a band
  in their colour, wherever the interval is defined; the plug-in CKA is a thin grey line without bands, for comparison with
  earlier studies (it is biased upwards, so it sits above the debiased one).
* Retrieval shows caption -> image top-1 and mean reciprocal rank (MRR: 1/rank of the own
  image, so it credits near misses); hovering shows image -> caption too, and the table
  (tables/alignment.parquet) has both directions and top-5.
* Bands are closed polygons (`fill="toself"`), a layer with a non-finite bound left out of
  the band but kept in the line, as in Figure 2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from modalscope.figures.style import (
    BLUE, GREEN, GREY, LAYER_AXIS, ORANGE, PURPLE, TWIN_GREY, VERMILLION, apply_layout, contrast_sides, format_p,
    layer_ticks, rgba,
)

__all__ = ["SHOWN", "figure_alignment"]

PANELS = ("linear CKA", "mutual k-NN", "cross-modal retrieval")
# (measure, panel 1-3, legend name, colour, reverse direction shown on hover)
SHOWN = (
    ("cka_debiased", 1, "debiased CKA", BLUE, None),
    ("mutual_knn", 2, "mutual k-NN", GREEN, None),
    ("top1_text_to_image", 3, "top-1, caption → image", VERMILLION, "top1_image_to_text"),
    ("mrr_text_to_image", 3, "MRR, caption → image", ORANGE, "mrr_image_to_text"),
)


def _band(x: np.ndarray, low: np.ndarray, high: np.ndarray, name: str, colour: str, dash: str | None) -> go.Scatter:
    ok = np.isfinite(low) & np.isfinite(high)
    return go.Scatter(x=np.concatenate([x[ok], x[ok][::-1]]), y=np.concatenate([high[ok], low[ok][::-1]]),
                      fill="toself", fillcolor=colour, mode="lines", hoverinfo="skip", name=name,
                      line=dict(width=1 if dash else 0, color=colour, dash=dash))


def _values(part: pd.DataFrame, name: str) -> np.ndarray:
    return part[name].to_numpy(dtype=float)


PLUG_IN = ("cka", 1, "plug-in CKA (biased)", GREY)  # a reference line, no bands


def _twin_lines(fig: go.Figure, rows: pd.DataFrame) -> None:
    """Each shown measure of the random twin: a dark grey dashed line in its panel, no bands."""
    for measure, panel, label, _colour, _reverse in SHOWN:
        part = rows[rows["measure"] == measure].sort_values("layer")
        if not len(part):
            continue
        name = f"random twin: {label}"
        fig.add_trace(go.Scatter(x=part["layer"].to_numpy(dtype=float), y=_values(part, "value"),
                                 mode="markers+lines", name=name, marker=dict(size=6, symbol="x", color=TWIN_GREY),
                                 line=dict(color=TWIN_GREY, width=2, dash="dash"),
                                 hovertemplate="<b>layer %{x}</b>: " + name + " = %{y:.3f}<extra></extra>"),
                      row=1, col=panel)


def figure_alignment(alignment: pd.DataFrame, site: str, twin: pd.DataFrame | None = None) -> go.Figure:
    """`alignment` is tables/alignment.parquet (site, layer, stat, measure, value, ci_low,
    ci_high, null_low, null_high, p_value, p_layers, chance, n_pairs, contrast); the rows of
    `site`. A measure's CI band is drawn only where it has an interval. `twin`: the random twin's
    alignment.parquet (--control random-twin): each measure's twin line, dark grey and dashed."""
    rows = alignment[alignment["site"] == site]
    stat = str(rows["stat"].iloc[0]) if len(rows) else "mean"
    first, second = contrast_sides(str(rows["contrast"].iloc[0]) if len(rows) else None)
    fig = make_subplots(rows=1, cols=3, subplot_titles=PANELS, horizontal_spacing=0.07)
    for measure, panel, label, colour, reverse in SHOWN:
        part = rows[rows["measure"] == measure].sort_values("layer")
        x = part["layer"].to_numpy(dtype=float)
        where = dict(row=1, col=panel)
        fig.add_trace(_band(x, _values(part, "null_low"), _values(part, "null_high"),
                            f"{label}: shuffled-pairing null, 95%", rgba(PURPLE, 0.22), "dot"), **where)
        if np.isfinite(_values(part, "ci_low")).any():
            fig.add_trace(_band(x, _values(part, "ci_low"), _values(part, "ci_high"),
                                f"{label}: 95% CI over pairs (jackknife)", rgba(colour, 0.25), None), **where)
        chance = _values(part, "chance")
        if np.isfinite(chance).any():
            fig.add_trace(go.Scatter(x=x, y=chance, mode="lines", name=f"{label}: chance",
                                     line=dict(color=GREY, dash="dash", width=1.5), hoverinfo="skip"), **where)
        other = rows[rows["measure"] == reverse].sort_values("layer") if reverse else None
        back = _values(other, "value") if other is not None and len(other) == len(part) else np.full(len(part), np.nan)
        layers_p = part["p_layers"] if "p_layers" in part else pd.Series(np.nan, index=part.index)
        p_text = [f"{format_p(p)}, over layers {format_p(q)}" for p, q in zip(part["p_value"], layers_p)]
        data = np.column_stack([_values(part, c) for c in ("ci_low", "ci_high", "null_low", "null_high")]
                               + [part["n_pairs"].to_numpy(dtype=float), back])
        ci = ("<br>95% CI over pairs: [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
              if np.isfinite(_values(part, "ci_low")).any() else "")
        hover = ("<b>layer %{x}</b>: " + label + " = %{y:.3f}" + ci + "<br>shuffled-pairing null, 95%: "
                 "[%{customdata[2]:.3f}, %{customdata[3]:.3f}]<br>p = %{text} (one-sided, vs. the null; "
                 "the second family-wise over layers); %{customdata[4]:.0f} pairs")
        if reverse:
            hover += "<br>image → caption: %{customdata[5]:.3f}"
        fig.add_trace(go.Scatter(x=x, y=_values(part, "value"), mode="markers+lines", name=label,
                                 line=dict(color=colour, width=2.5), marker=dict(size=7), customdata=data,
                                 text=p_text, hovertemplate=hover + "<extra></extra>"), **where)
    if twin is not None:
        _twin_lines(fig, twin[twin["site"] == site])
    measure, panel, label, colour = PLUG_IN
    part = rows[rows["measure"] == measure].sort_values("layer")
    if len(part):
        fig.add_trace(go.Scatter(x=part["layer"].to_numpy(dtype=float), y=_values(part, "value"), mode="lines",
                                 name=label, line=dict(color=colour, width=1.5, dash="dot"),
                                 hovertemplate="<b>layer %{x}</b>: " + label + " = %{y:.3f}<extra></extra>"),
                      row=1, col=panel)
    n_layers = int(rows["layer"].nunique()) if len(rows) else 1
    for col in (1, 2, 3):
        fig.update_xaxes(title_text=LAYER_AXIS, **layer_ticks(n_layers), row=1, col=col)
        fig.update_yaxes(rangemode="tozero", row=1, col=col)
    fig.update_yaxes(title_text=f"alignment of {first} and {second}<br>(1: the same; reduction {stat})", row=1, col=1)
    apply_layout(
        fig, f"{site}: where words and pixels meet, the alignment of {first} and {second} by decoder layer",
        height=560, hovermode="closest",
        legend=dict(orientation="h", yanchor="top", y=-0.2, x=0, xanchor="left"),
        margin=dict(t=80, b=40, l=80, r=20),
    )
    return fig
