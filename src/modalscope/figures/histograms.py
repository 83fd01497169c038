"""Figure 1: per-layer distributions of neuron mean Δ and t-values.

Design choices:

* Pre-binned bars, not raw values. A real model has 32 layers x 11,008
  neurons; embedding every value as a ``go.Histogram`` trace would make the
  HTML grow with the neuron count (~350k floats per column). We bin with
  ``np.histogram`` and draw ``go.Bar`` traces, so the output size depends only
  on ``layers x bins``.
* Shared bins per column. Edges come from the global finite min/max of each
  column over all layers (widened to include 0), and the y range is fixed to
  the global maximum count, so moving the slider compares like with like.
* Non-finite values (e.g. NaN t-values of zero-variance neurons) are dropped
  from the counts; the number dropped is shown in the per-layer title.
* Trace order is ``[layer0 mean Δ, layer0 t, layer1 mean Δ, layer1 t, ...]``;
  slider step ``i`` makes traces ``2i`` and ``2i + 1`` visible. Only visible traces
  appear in the legend, so it names the layer on show.
* A PNG or SVG cannot move a slider, so static exports get ``figure1_static``: the same
  bins as two heatmaps, layer on y and bin on x, every layer at once. The report draws it
  first (the whole depth at a glance) and the slider figure below it (one layer's shape).
* The t panel marks the FDR threshold: dashed lines at ±|t| of the weakest neuron with
  q < 0.05 (from Table 3's own q values), so what lies beyond them is what the counts count.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from modalscope.figures.style import (
    BLACK, BLUE, DEFAULT_CONTRAST, LAYER_AXIS, ORANGE, apply_layout, delta_axis, layer_ticks,
)
from modalscope.stats.columns import site_rows

__all__ = ["figure1", "figure1_static", "for_static", "fdr_threshold", "shared_bin_edges", "N_BINS"]

N_BINS = 60
FDR_ALPHA = 0.05  # the q threshold the tables and the report count neurons at
FDR_MARK = "fdr-threshold"  # name of the t panel's threshold lines and note
T_AXIS = "t-value (one-sample t of Δ over inputs; no unit)"


def _columns(stat: str, contrast: str) -> tuple[tuple[str, str, str, str], ...]:
    """(column, axis title, short name, colour) of the two panels."""
    return (
        ("mean_diff", delta_axis(stat, "neuron mean Δ", contrast), "mean Δ", BLUE),
        ("t_value", T_AXIS, "t-value", ORANGE),
    )


def shared_bin_edges(values: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Equal-width edges spanning the finite values of ``values`` and 0."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.linspace(-1.0, 1.0, n_bins + 1)
    lo = min(float(finite.min()), 0.0)
    hi = max(float(finite.max()), 0.0)
    if hi - lo <= 0.0:  # all values are exactly 0
        lo, hi = -0.5, 0.5
    return np.linspace(lo, hi, n_bins + 1)


def _select_site(neurons: pd.DataFrame, site: str) -> pd.DataFrame:
    """The rows of `site` (all rows when the table has no site column), checked to be usable."""
    return site_rows(neurons, site, ("layer", "mean_diff", "t_value"), "neurons")


def _title(site: str, layer: int, n: int, n_nan_t: int, contrast: str = DEFAULT_CONTRAST) -> str:
    extra = f"; {n_nan_t} NaN t-values dropped" if n_nan_t else ""
    return (
        f"{site} — layer {layer}: t-value vs. mean difference ({contrast}) across neurons "
        f"(n = {n}{extra})"
    )


def fdr_threshold(neurons: pd.DataFrame, alpha: float = FDR_ALPHA) -> float | None:
    """The smallest |t| among the neurons with q < alpha, or None when none has it.

    Why from the table and not a formula: the q values are the analysis's own (BH or BY over
    the whole site), so the line falls exactly between the neurons the tables call significant
    and the rest (for neurons of equal n, q grows as |t| shrinks)."""
    if "q_value" not in neurons.columns:
        return None
    t = neurons["t_value"].to_numpy(dtype=float)
    q = neurons["q_value"].to_numpy(dtype=float)
    hits = np.abs(t[np.isfinite(t) & (q < alpha)])
    return float(hits.min()) if hits.size else None


def _layer_bars(rows: pd.DataFrame, layer: int, column: tuple[str, str, str, str], edges: np.ndarray,
                visible: bool) -> go.Bar:
    """One layer's histogram of one column on the shared bins (NaN dropped)."""
    col, _, label, color = column
    vals = rows[col].to_numpy(dtype=float)
    counts, e = np.histogram(vals[np.isfinite(vals)], bins=edges)
    return go.Bar(
        x=(e[:-1] + e[1:]) / 2.0,
        y=counts,
        width=np.diff(e),
        customdata=np.column_stack([e[:-1], e[1:]]),
        hovertemplate=(f"{label}: [%{{customdata[0]:.4g}}, %{{customdata[1]:.4g}})"
                       "<br>neurons: %{y}<extra>layer " + str(layer) + "</extra>"),
        marker=dict(color=color, line=dict(width=0)),
        name=f"layer {layer}: {label} of its {len(rows)} neurons",
        showlegend=True,
        visible=visible,
    )


def _slider(layers: list[int], titles: list[str]) -> dict:
    """Step i shows traces 2i and 2i + 1 (layer i's two panels) and its title."""
    steps = []
    for i, layer in enumerate(layers):
        visible = [False] * (2 * len(layers))
        visible[2 * i] = visible[2 * i + 1] = True
        steps.append(dict(method="update", label=str(layer), args=[{"visible": visible}, {"title.text": titles[i]}]))
    return dict(active=0, currentvalue=dict(prefix="decoder layer: "), pad=dict(t=75), steps=steps)


def _axes(fig: go.Figure, columns: tuple[tuple[str, str, str, str], ...], edges: dict[str, np.ndarray]) -> None:
    """Shared x bins and a y range fixed at the largest count of any layer, per panel."""
    for c, (col, axis, _, _) in enumerate(columns, start=1):
        y_max = max((int(np.max(bar.y, initial=0)) for bar in fig.data[c - 1 :: 2]), default=0)
        fig.add_vline(x=0, line=dict(color="black", width=1, dash="dot"), row=1, col=c)
        fig.update_xaxes(title_text=axis, range=[edges[col][0], edges[col][-1]], row=1, col=c)
        fig.update_yaxes(title_text="neurons (count per bin)", range=[0, max(1, y_max) * 1.05], row=1, col=c)


def _mark_fdr_threshold(fig: go.Figure, threshold: float | None, t_range: tuple[float, float],
                        alpha: float = FDR_ALPHA) -> None:
    """Dashed lines at ±|t| of the FDR threshold in the t panel (column 2) and a note saying
    so, or a note that no neuron reaches it; all named FDR_MARK so `figure1_static` keeps them."""
    text = f"no neuron has q < {alpha:g}"
    if threshold is not None:
        text = f"dashed: q < {alpha:g} beyond |t| = {threshold:.3g}"
        for x in (-threshold, threshold):
            if t_range[0] <= x <= t_range[1]:
                fig.add_vline(x=x, line=dict(color=BLACK, width=1.5, dash="dash"), row=1, col=2, name=FDR_MARK)
    fig.add_annotation(text=text, xref="x2 domain", yref="y2 domain", x=0.98, y=0.98, showarrow=False,
                       xanchor="right", yanchor="top", bgcolor="rgba(255, 255, 255, 0.8)", name=FDR_MARK)


def figure1(
    neurons: pd.DataFrame,
    site: str,
    n_bins: int = N_BINS,
    stat: str = "max",
    contrast: str = DEFAULT_CONTRAST,
) -> go.Figure:
    """Histograms of neuron mean Δ and t-value per layer, with a layer slider; the t panel marks
    the FDR threshold (|t| of the weakest neuron with q < 0.05).

    ``neurons`` is Table 3 (one row per neuron) with at least the columns
    ``layer``, ``mean_diff`` and ``t_value`` (and ``q_value`` for the threshold); if it has a
    ``site`` column, only rows of ``site`` are used. ``stat`` and ``contrast`` only name the
    axes and titles.
    """
    df = _select_site(neurons, site)
    columns = _columns(stat, contrast)
    edges = {col: shared_bin_edges(df[col].to_numpy(dtype=float), n_bins) for col, *_ in columns}
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"neuron mean Δ ({stat})", "t-value"],
                        horizontal_spacing=0.1)
    layers, titles = [], []
    for i, (layer, rows) in enumerate(df.groupby("layer", sort=True)):
        layers.append(int(layer))
        for c, column in enumerate(columns, start=1):
            fig.add_trace(_layer_bars(rows, int(layer), column, edges[column[0]], i == 0), row=1, col=c)
        n_nan_t = int((~np.isfinite(rows["t_value"].to_numpy(dtype=float))).sum())
        titles.append(_title(site, int(layer), len(rows), n_nan_t, contrast))
    _axes(fig, columns, edges)
    _mark_fdr_threshold(fig, fdr_threshold(df), (edges["t_value"][0], edges["t_value"][-1]))
    apply_layout(fig, titles[0], height=600, bargap=0, margin=dict(t=125, b=150),
                 legend=dict(orientation="h", yanchor="bottom", y=1.07, x=0), sliders=[_slider(layers, titles)])
    return fig


def figure1_static(fig: go.Figure) -> go.Figure:
    """Every layer of a ``figure1`` at once (for PNG/SVG and the report): per column a heatmap of
    neurons per bin (x: the shared bins, y: layer), built from the figure's own binned traces,
    with the t panel's FDR threshold carried over."""
    bars = list(fig.data)
    layers = [int(step["label"]) for step in fig.layout.sliders[0].steps]
    static = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                           subplot_titles=[fig.layout.annotations[0].text, fig.layout.annotations[1].text])
    for c, color in ((1, BLUE), (2, ORANGE)):
        column = bars[c - 1 :: 2]
        counts = np.array([np.asarray(bar.y, dtype=float) for bar in column])
        static.add_trace(
            go.Heatmap(
                x=np.asarray(column[0].x), y=layers, z=counts,
                colorscale=[[0.0, "#ffffff"], [1.0, color]], zmin=0,
                colorbar=dict(title="neurons", x=0.44 if c == 1 else 1.0, len=0.9),
                hovertemplate="layer %{y}<br>bin centre %{x:.4g}<br>neurons: %{z}<extra></extra>",
            ),
            row=1, col=c,
        )
        axis = "xaxis" if c == 1 else "xaxis2"
        static.add_vline(x=0, line=dict(color="black", width=1, dash="dot"), row=1, col=c)
        static.update_xaxes(title_text=fig.layout[axis].title.text, range=fig.layout[axis].range, row=1, col=c)
        static.update_yaxes(title_text=LAYER_AXIS, autorange="reversed", **layer_ticks(len(layers)), row=1, col=c)
    for shape in fig.layout.shapes:  # both are 1 x 2 subplots: the same axis references
        if shape.name == FDR_MARK:
            static.add_shape(shape)
    for note in fig.layout.annotations:
        if note.name == FDR_MARK:
            static.add_annotation(note)
    site_title = fig.layout.title.text.split(" — ")[0]
    apply_layout(static, f"{site_title}: neuron mean Δ and t-value per layer (colour: neurons per bin)",
                 height=max(450, 160 + 18 * len(layers)), margin=dict(t=90, b=90))
    return static


def for_static(fig: go.Figure) -> go.Figure:
    """The figure to export as PNG/SVG: ``figure1_static`` for a slider figure (the cross-modal
    scatter's own static copy for that one), else itself."""
    from modalscope.figures.xmodal import SCATTER_META, xmodal_scatter_static

    if fig.layout.sliders and fig.layout.meta == SCATTER_META:
        return xmodal_scatter_static(fig)
    return figure1_static(fig) if fig.layout.sliders else fig
