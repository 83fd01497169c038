"""Cross-modal neurons (stats/neuron/xmodal.py): the distribution of xmodal_r per layer, and
cohen_d against xmodal_r per layer with the neurons of interest named.

Design choices:

* Pre-binned, as Figure 1: the r distribution is a heatmap (layer on y, a bin of r on x,
  colour: neurons per bin) on fixed edges -1..1, so its size depends on layers x bins only
  and one PNG shows every layer. The layer's median r is marked; dashed lines at ±r*, the
  |r| beyond which q < 0.05 (p is monotone in |r|, so the FDR cut is a line).
* The scatter has a layer slider (two traces per layer: the neurons, and the labelled ones).
  To keep the file small at 7B (11,008 neurons a layer) a layer draws at most MAX_POINTS
  neurons, evenly spaced in neuron index, plus every labelled one; the title says how many.
  Labelled: the TOP_LABELLED largest cohen_d (text-preferring), smallest (image-preferring)
  and largest xmodal_r of the layer. A neuron can be both: it prefers text and still ranks
  the pairs alike in both modalities.
* One encoding per meaning, each in the legend: black (a point, or a labelled neuron's
  outline) means xmodal_q < 0.05 and nothing else; the top by xmodal_r are diamonds, named
  for how they were picked, not "cross-modal", since the top r of a layer need not be
  significant. The title is two short lines under a top margin that holds them and the
  legend, so a 1,100 px PNG shows it whole.
* A PNG cannot move a slider: `xmodal_scatter_static` keeps the layer with the highest
  median r (named in its title).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from modalscope.figures.style import (
    BLACK, BLUE, DEFAULT_CONTRAST, GREEN, GREY, LAYER_AXIS, TWIN_GREY, VERMILLION, apply_layout, contrast_sides,
    layer_ticks, preferring, rgba,
)
from modalscope.stats.columns import column, site_rows
from modalscope.stats.xmodal_layers import ALPHA, threshold
from modalscope.outputs import SHARE_FIGURE  # + site: the share per layer beside the twin's; home: outputs.py

__all__ = ["figure_xmodal_r", "figure_xmodal_scatter", "figure_xmodal_share", "xmodal_scatter_static", "has_xmodal",
           "SCATTER_META", "SHARE_FIGURE"]

N_BINS = 80
MAX_POINTS = 2000
TOP_LABELLED = 3
SCATTER_META = "xmodal_scatter"  # layout.meta of the slider figure, so `for_static` knows it
def r_axis(contrast: str = DEFAULT_CONTRAST) -> str:
    first, second = contrast_sides(contrast)
    return f"xmodal_r (Spearman r over pairs, {first} vs {second} response)"
D_AXIS = "cohen_d (d_z of Δ over pairs; no unit)"


def has_xmodal(neurons: pd.DataFrame) -> bool:
    return {"xmodal_r", "xmodal_q"} <= set(neurons.columns)


def _cut(rows: pd.DataFrame) -> float | None:
    cut = threshold(rows["xmodal_r"], rows["xmodal_q"], ALPHA)
    return cut if np.isfinite(cut) else None


def figure_xmodal_r(neurons: pd.DataFrame, site: str, stat: str = "max",
                    contrast: str = DEFAULT_CONTRAST) -> go.Figure:
    """Neurons per bin of xmodal_r (x) and layer (y), the layer's median r, and ±r*."""
    df = site_rows(neurons, site, ("layer", "xmodal_r", "xmodal_q"), "neurons")
    edges = np.linspace(-1.0, 1.0, N_BINS + 1)
    layers = sorted(int(v) for v in df["layer"].unique())
    groups = {int(k): g["xmodal_r"].to_numpy(dtype=float) for k, g in df.groupby("layer")}
    counts = np.array([np.histogram(groups[k][np.isfinite(groups[k])], bins=edges)[0] for k in layers])
    medians = [float(np.median(groups[k][np.isfinite(groups[k])])) if np.isfinite(groups[k]).any() else None
               for k in layers]
    fig = go.Figure(go.Heatmap(
        x=(edges[:-1] + edges[1:]) / 2, y=layers, z=counts, colorscale=[[0.0, "#ffffff"], [1.0, BLUE]], zmin=0,
        colorbar=dict(title="neurons"), name="neurons per bin",
        hovertemplate="layer %{y}<br>r bin centre %{x:.3f}<br>neurons: %{z}<extra></extra>"))
    fig.add_scatter(x=medians, y=layers, mode="markers", marker=dict(color=BLACK, symbol="diamond", size=7),
                    name="median r of the layer", hovertemplate="layer %{y}: median r %{x:.3f}<extra></extra>")
    cut = _cut(df)
    note = f"no neuron has xmodal_q < {ALPHA:g}"
    if cut is not None:
        note = f"dashed: xmodal_q < {ALPHA:g} beyond |r| = {cut:.3g}"
        for x in (-cut, cut):
            fig.add_vline(x=x, line=dict(color=VERMILLION, width=1.5, dash="dash"))
    fig.add_vline(x=0, line=dict(color=GREY, width=1, dash="dot"))
    fig.add_annotation(text=note, xref="paper", yref="paper", x=1.0, y=1.02, showarrow=False, xanchor="right",
                       yanchor="bottom")
    apply_layout(fig, f"{site}: cross-modal r per layer (reduction {stat}; colour: neurons per bin)",
                 height=max(450, 160 + 18 * len(layers)), xaxis_title=r_axis(contrast), yaxis_title=LAYER_AXIS,
                 legend=dict(orientation="h", yanchor="bottom", y=1.06, x=0), margin=dict(t=110))
    fig.update_xaxes(range=[-1, 1])
    fig.update_yaxes(autorange="reversed", **layer_ticks(len(layers)))
    return fig


def labelled(rows: pd.DataFrame, k: int = TOP_LABELLED) -> dict[str, pd.DataFrame]:
    """The layer's neurons of interest: top-k by cohen_d each way and by xmodal_r."""
    d = rows[np.isfinite(rows["cohen_d"].to_numpy(dtype=float))]
    r = rows[np.isfinite(rows["xmodal_r"].to_numpy(dtype=float))]
    return {"text": d.nlargest(k, "cohen_d"), "image": d.nsmallest(k, "cohen_d"),
            "xmodal": r.nlargest(k, "xmodal_r")}


def _kinds(contrast: str) -> dict[str, tuple[str, str, str]]:
    """Legend name, fill colour and symbol of each kind of labelled neuron."""
    up, down = preferring(contrast)
    return {"text": (f"top {TOP_LABELLED} {up} (by cohen_d)", BLUE, "circle"),
            "image": (f"top {TOP_LABELLED} {down} (by cohen_d)", VERMILLION, "circle"),
            "xmodal": (f"top {TOP_LABELLED} by xmodal_r (whatever its q)", GREEN, "diamond")}


def _significant(q: pd.Series | np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.asarray(q, dtype=float) < ALPHA


def _labelled_trace(rows: pd.DataFrame, layer: int, kinds: dict, visible: bool) -> go.Scatter:
    """The layer's neurons of interest: fill and symbol by kind, a black outline only where
    xmodal_q < ALPHA (the encoding of the points beneath: black means significant)."""
    keys = [(kind, row) for kind, part in labelled(rows).items() for _, row in part.iterrows()]
    q = np.array([row["xmodal_q"] for _, row in keys], dtype=float)
    return go.Scatter(
        x=[row["cohen_d"] for _, row in keys], y=[row["xmodal_r"] for _, row in keys], visible=visible,
        mode="markers+text", text=[f"{int(row['neuron'])}" for _, row in keys], textposition="top center",
        cliponaxis=False,  # a label above r = 1 stays readable
        marker=dict(color=[kinds[kind][1] for kind, _ in keys], symbol=[kinds[kind][2] for kind, _ in keys], size=10,
                    line=dict(color=np.where(_significant(q), BLACK, "rgba(0, 0, 0, 0)").tolist(), width=2)),
        customdata=[[kinds[kind][0], float(qv)] for (kind, _), qv in zip(keys, q)],  # q a number, for :.3g
        name=f"layer {layer}: labelled neurons", showlegend=False,
        hovertemplate="neuron %{text} (%{customdata[0]})<br>cohen_d %{x:.3f}<br>xmodal_r %{y:.3f}"
                      "<br>xmodal_q %{customdata[1]:.3g}<extra></extra>")


def _legend(fig: go.Figure, kinds: dict) -> None:
    """Legend entries (no data) of every encoding the layers use, always shown."""
    for name, colour in ((f"xmodal_q < {ALPHA:g}", BLACK), (f"xmodal_q ≥ {ALPHA:g}", GREY)):
        fig.add_scatter(x=[None], y=[None], mode="markers", marker=dict(color=colour, size=6), name=name)
    for name, colour, symbol in kinds.values():
        fig.add_scatter(x=[None], y=[None], mode="markers", name=name,
                        marker=dict(color=colour, symbol=symbol, size=10, line=dict(color="rgba(0, 0, 0, 0)", width=2)))
    fig.add_scatter(x=[None], y=[None], mode="markers", name=f"outlined: labelled with xmodal_q < {ALPHA:g}",
                    marker=dict(color="#ffffff", size=10, line=dict(color=BLACK, width=2)))


def _scatter_title(site: str, layer: int, stat: str, shown: int, total: int) -> str:
    """Two short lines (a PNG is 1,100 px wide): what is drawn, then how many and the encoding."""
    return (f"{site} — layer {layer}: cohen_d vs xmodal_r ({stat})<br><sup>{shown:,} of {total:,} neurons drawn; "
            f"black: xmodal_q < {ALPHA:g}</sup>")


def figure_xmodal_scatter(neurons: pd.DataFrame, site: str, stat: str = "max",
                          contrast: str = DEFAULT_CONTRAST) -> go.Figure:
    """Per layer (slider): cohen_d (x) against xmodal_r (y), neurons of interest labelled."""
    df = site_rows(neurons, site, ("layer", "neuron", "cohen_d", "xmodal_r", "xmodal_q"), "neurons")
    up, down = preferring(contrast)
    kinds = _kinds(contrast)
    fig, steps, titles = go.Figure(), [], []
    groups = list(df.groupby("layer", sort=True))
    for i, (layer, rows) in enumerate(groups):
        rows = rows.sort_values("neuron")
        shown = rows.iloc[np.unique(np.linspace(0, len(rows) - 1, min(len(rows), MAX_POINTS)).astype(int))]
        fig.add_scattergl(
            x=shown["cohen_d"], y=shown["xmodal_r"], mode="markers", visible=i == 0, showlegend=False,
            marker=dict(color=np.where(_significant(shown["xmodal_q"]), BLACK, GREY), size=4, opacity=0.6),
            customdata=shown[["neuron", "xmodal_q"]].to_numpy(), name=f"layer {layer}: neurons",
            hovertemplate="neuron %{customdata[0]}<br>cohen_d %{x:.3f}<br>xmodal_r %{y:.3f}"
                          "<br>xmodal_q %{customdata[1]:.3g}<extra></extra>")
        fig.add_trace(_labelled_trace(rows, int(layer), kinds, i == 0))
        titles.append(_scatter_title(site, int(layer), stat, len(shown), len(rows)))
        visible = [False] * (2 * len(groups))
        visible[2 * i] = visible[2 * i + 1] = True
        steps.append(dict(method="update", label=str(layer), args=[{"visible": visible}, {"title.text": titles[-1]}]))
    _legend(fig, kinds)
    fig.add_hline(y=0, line=dict(color=GREY, width=1, dash="dot"))
    fig.add_vline(x=0, line=dict(color=GREY, width=1, dash="dot"))
    apply_layout(fig, titles[0], height=640, xaxis_title=f"{D_AXIS}<br>→ {up}, ← {down}",
                 yaxis_title=r_axis(contrast),
                 legend=dict(orientation="h", yanchor="bottom", y=1.07, x=0), margin=dict(t=175, b=150),
                 sliders=[dict(active=0, currentvalue=dict(prefix="decoder layer: "), pad=dict(t=75), steps=steps)],
                 meta=SCATTER_META)
    fig.update_layout(title=dict(yref="container", y=0.975, yanchor="top"))  # 16 px below the top edge
    fig.update_yaxes(range=[-1.05, 1.05])
    return fig


def xmodal_scatter_static(fig: go.Figure) -> go.Figure:
    """The slider figure at one layer, the one with the highest median r, without the slider."""
    steps = fig.layout.sliders[0].steps
    medians = [np.nanmedian(np.asarray(fig.data[2 * i].y, dtype=float)) if len(fig.data[2 * i].y) else -np.inf
               for i in range(len(steps))]
    best = int(np.nanargmax(medians)) if np.isfinite(medians).any() else 0
    static = go.Figure(fig)
    for j, trace in enumerate(static.data):
        trace.visible = j >= 2 * len(steps) or j // 2 == best
    static.layout.sliders = ()
    static.update_layout(title_text=steps[best].args[1]["title.text"].replace(
        "</sup>", "; the layer with the highest median r (the HTML figure has a slider)</sup>"))
    return static




def _share_trace(rows: pd.DataFrame, stat: str, name: str, colour: str, dash: str | None,
                 symbol: str) -> list[go.Scatter]:
    """A share's 95% CI band (a closed polygon, as Figure 2's) and its line."""
    x = rows["layer"].to_numpy(dtype=float)
    y = rows[column("xmodal_share", stat)].to_numpy(dtype=float)
    names = (column("xmodal_share_ci_low", stat), column("xmodal_share_ci_high", stat))
    traces = []
    if all(n in rows.columns for n in names):
        low, high = (rows[n].to_numpy(dtype=float) for n in names)
        ok = np.isfinite(low) & np.isfinite(high)
        traces.append(go.Scatter(x=np.concatenate([x[ok], x[ok][::-1]]), y=np.concatenate([high[ok], low[ok][::-1]]),
                                 fill="toself", fillcolor=rgba(colour, 0.18), mode="lines", hoverinfo="skip",
                                 line=dict(width=0, color=colour), name=f"{name}: 95% CI over inputs (bootstrap)"))
    traces.append(go.Scatter(x=x, y=y, mode="markers+lines", name=name, marker=dict(size=7, symbol=symbol),
                             line=dict(color=colour, width=2.5 if dash is None else 2, dash=dash),
                             hovertemplate="<b>layer %{x}</b>: " + name + " %{y:.3g}<extra></extra>"))
    return traces


def figure_xmodal_share(layers: pd.DataFrame, site: str, stat: str = "max", twin: pd.DataFrame | None = None,
                        contrast: str = DEFAULT_CONTRAST) -> go.Figure:
    """The share of cross-modal neurons per layer (layers.parquet `xmodal_share`: xmodal_q < 0.05 and
    r > 0) with its 95% CI, and the random twin's beside it (dark grey, dashed): how much of the
    cross-modal code the architecture and the token counts give before any training."""
    df = site_rows(layers, site, ("layer", column("xmodal_share", stat)), "layers").sort_values("layer")
    fig = go.Figure()
    for trace in _share_trace(df, stat, "this model", BLUE, None, "circle"):
        fig.add_trace(trace)
    if twin is not None and column("xmodal_share", stat) in twin.columns:
        rows = twin[twin["site"] == site] if "site" in twin.columns else twin
        for trace in _share_trace(rows.sort_values("layer"), stat, "random twin (re-initialised)", TWIN_GREY,
                                  "dash", "x"):
            fig.add_trace(trace)
    first, second = contrast_sides(contrast)
    apply_layout(fig, f"{site}: share of cross-modal neurons per layer, this model and its random twin "
                      f"(reduction {stat})", height=480, xaxis_title=LAYER_AXIS,
                 yaxis_title=f"share of neurons whose {first} and {second}<br>responses rank the pairs alike "
                             f"(xmodal_q < {ALPHA:g}, r > 0)",
                 legend=dict(orientation="h", yanchor="top", y=-0.2, x=0, xanchor="left"))
    fig.update_xaxes(**layer_ticks(len(df)))
    fig.update_yaxes(rangemode="tozero")
    return fig
