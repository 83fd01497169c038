"""Figure 1: per-layer distributions of neuron mean Δ and t-values.

Design choices:

* Pre-binned bars, not raw values. A real model has 32 layers x 11,008
  neurons; embedding every value as a ``go.Histogram`` trace would make the
  HTML grow with the neuron count (~350k floats per column). We bin with
  ``np.histogram`` and draw ``go.Bar`` traces, so the output size depends only
  on ``layers x bins``.
* Each layer its own bins (``layer_bins``). Bins shared across layers let one neuron set
  everyone's range: on a trained model a neuron at mean Δ -631 stretched the range to
  -631..92 and put 79-95% of a layer's neurons in one bin. A layer's range is instead its
  1st-99th percentile widened by WIDEN of that width each side (no further than its own min
  and max), reaching out to 0 when 0 is within half that width, so the central 98% of every
  layer spans at least N_BINS / 2 bins. What lies beyond goes to two overflow bars set apart
  in grey at the ends, labelled with their count and where they reach. The slider moves the
  axes with the layer; the counts compare across layers as "neurons per bin", each layer
  having N_BINS bins.
* Non-finite values (e.g. NaN t-values of zero-variance neurons) are dropped
  from the counts; the number dropped is shown in the per-layer title.
* Trace order is ``[layer0 mean Δ, layer0 t, layer1 mean Δ, layer1 t, ...]``;
  slider step ``i`` makes traces ``2i`` and ``2i + 1`` visible. Only visible traces
  appear in the legend, so it names the layer on show.
* A PNG or SVG cannot move a slider, so static exports get ``figure1_static``: every layer at
  once, a row of cells per layer on its own bins (one heatmap trace per layer and column, on
  a common axis), the overflow cells set apart at the row's ends. The report draws it first
  (the whole depth at a glance) and the slider figure below it (one layer's shape).
* The t panel marks the FDR threshold: dashed lines at ±|t| of the weakest neuron with
  q < 0.05 (from Table 3's own q values), so what lies beyond them is what the counts count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from modalscope.figures.style import (
    BLACK, BLUE, DEFAULT_CONTRAST, GREY, LAYER_AXIS, ORANGE, apply_layout, delta_axis, layer_ticks,
)
from modalscope.stats.columns import site_rows
from modalscope.stats.fdr import ALPHA

__all__ = ["figure1", "figure1_static", "for_static", "fdr_threshold", "layer_bins", "LayerBins", "N_BINS"]

N_BINS = 60
CORE = (1.0, 99.0)  # the percentiles a layer's bins must resolve
WIDEN = 0.25  # the range reaches this share of the core's width beyond each end (no further than min, max)
FDR_ALPHA = ALPHA  # the q threshold the tables and the report count neurons at (stats/fdr.py)
FDR_MARK = "fdr-threshold"  # name of the t panel's threshold lines and note
T_AXIS = "t-value (one-sample t of Δ over inputs; no unit)"


def _columns(stat: str, contrast: str) -> tuple[tuple[str, str, str, str], ...]:
    """(column, axis title, short name, colour) of the two panels."""
    return (
        ("mean_diff", delta_axis(stat, "neuron mean Δ", contrast), "mean Δ", BLUE),
        ("t_value", T_AXIS, "t-value", ORANGE),
    )


@dataclass(frozen=True)
class LayerBins:
    """One layer's histogram: `counts` on `edges` (N_BINS equal bins), and the finite values
    beyond them: `below` of them reaching down to `low`, `above` up to `high`."""

    edges: np.ndarray
    counts: np.ndarray
    below: int
    above: int
    low: float
    high: float

    @property
    def width(self) -> float:
        return float(self.edges[1] - self.edges[0])

    def bars(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """x centres, heights, widths and [from, to] of the bars: the bins, then the underflow
        bar one bin apart below them and the overflow bar one bin apart above (last, so that
        the legend's swatch takes a bin's colour)."""
        w, e = self.width, self.edges
        x = np.concatenate([(e[:-1] + e[1:]) / 2.0, [e[0] - 1.5 * w, e[-1] + 1.5 * w]])
        spans = np.column_stack([np.concatenate([e[:-1], [self.low, e[-1]]]),
                                 np.concatenate([e[1:], [e[0], self.high]])])
        return x, np.concatenate([self.counts, [self.below, self.above]]), np.full(x.size, w), spans


def _range(finite: np.ndarray) -> tuple[float, float]:
    """The layer's bin range: its core percentiles widened (module docstring)."""
    lo, hi = (float(v) for v in np.percentile(finite, CORE))
    width = hi - lo
    if width <= 0.0:  # most neurons share one value: show every value
        width = float(finite.max() - finite.min())
    if width <= 0.0:  # all of them
        return lo - 0.5, hi + 0.5
    lo, hi = max(float(finite.min()), lo - WIDEN * width), min(float(finite.max()), hi + WIDEN * width)
    if 0.0 < lo <= width / 2:  # 0 close by: show it, at most half a core width more
        lo = 0.0
    if -width / 2 <= hi < 0.0:
        hi = 0.0
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def layer_bins(values: np.ndarray, n_bins: int = N_BINS) -> LayerBins:
    """The histogram of one layer's finite values on its own robust range, with overflow counts."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        edges = np.linspace(-1.0, 1.0, n_bins + 1)
        return LayerBins(edges, np.zeros(n_bins, dtype=int), 0, 0, -1.0, 1.0)
    lo, hi = _range(finite)
    edges = np.linspace(lo, hi, n_bins + 1)
    counts, _ = np.histogram(finite, bins=edges)
    below, above = finite < lo, finite > hi
    return LayerBins(edges, counts, int(below.sum()), int(above.sum()),
                     float(finite.min()) if below.any() else lo, float(finite.max()) if above.any() else hi)


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


def _layer_bars(rows: pd.DataFrame, layer: int, column: tuple[str, str, str, str], visible: bool,
                n_bins: int = N_BINS) -> go.Bar:
    """One layer's histogram of one column on its own bins, the overflow bars grey and labelled."""
    col, _, label, color = column
    bins = layer_bins(rows[col].to_numpy(dtype=float), n_bins)
    x, counts, width, spans = bins.bars()
    beyond = [f"{bins.below:,} below,<br>down to {bins.low:.3g}" if bins.below else "",
              f"{bins.above:,} above,<br>up to {bins.high:.3g}" if bins.above else ""]
    return go.Bar(
        x=x, y=counts, width=width, customdata=spans,
        text=np.array([""] * len(bins.counts) + beyond, dtype=object), textposition="outside",
        constraintext="none", cliponaxis=False,  # the overflow labels at full size, above their narrow bars
        hovertemplate=(f"{label}: [%{{customdata[0]:.4g}}, %{{customdata[1]:.4g}}]"
                       "<br>neurons: %{y}<extra>layer " + str(layer) + "</extra>"),
        marker=dict(color=[color] * len(bins.counts) + [GREY, GREY], line=dict(width=0)),
        name=f"layer {layer}: {label} of its {len(rows)} neurons",
        showlegend=True,
        visible=visible,
    )


def _view(bars: list[go.Bar]) -> dict:
    """The axis ranges that show a layer's two panels: its own bins, overflow bars and labels."""
    view = {}
    for c, bar in enumerate(bars, start=1):
        x, w, y = np.asarray(bar.x, dtype=float), float(bar.width[0]), np.asarray(bar.y, dtype=float)
        suffix = "" if c == 1 else str(c)
        view[f"xaxis{suffix}.range"] = [float(x.min() - w), float(x.max() + w)]
        view[f"yaxis{suffix}.range"] = [0, max(1.0, float(y.max(initial=0))) * 1.15]
    return view


def _slider(layers: list[int], titles: list[str], views: list[dict]) -> dict:
    """Step i shows traces 2i and 2i + 1 (layer i's two panels), its title and its axis ranges."""
    steps = []
    for i, layer in enumerate(layers):
        visible = [False] * (2 * len(layers))
        visible[2 * i] = visible[2 * i + 1] = True
        steps.append(dict(method="update", label=str(layer),
                          args=[{"visible": visible}, {"title.text": titles[i], **views[i]}]))
    return dict(active=0, currentvalue=dict(prefix="decoder layer: "), pad=dict(t=75), steps=steps)


def _axes(fig: go.Figure, columns: tuple[tuple[str, str, str, str], ...], view: dict) -> None:
    """Axis titles, the zero line and the first layer's ranges, per panel."""
    for c, (_, axis, _, _) in enumerate(columns, start=1):
        suffix = "" if c == 1 else str(c)
        fig.add_vline(x=0, line=dict(color="black", width=1, dash="dot"), row=1, col=c)
        fig.update_xaxes(title_text=axis, range=view[f"xaxis{suffix}.range"], row=1, col=c)
        fig.update_yaxes(title_text="neurons (count per bin)", range=view[f"yaxis{suffix}.range"], row=1, col=c)


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
    """Histograms of neuron mean Δ and t-value per layer, each on its own bins, with a layer
    slider; the t panel marks the FDR threshold (|t| of the weakest neuron with q < 0.05).

    ``neurons`` is Table 3 (one row per neuron) with at least the columns
    ``layer``, ``mean_diff`` and ``t_value`` (and ``q_value`` for the threshold); if it has a
    ``site`` column, only rows of ``site`` are used. ``stat`` and ``contrast`` only name the
    axes and titles. Every layer has ``n_bins`` bins of its own.
    """
    df = _select_site(neurons, site)
    columns = _columns(stat, contrast)
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"neuron mean Δ ({stat})", "t-value"],
                        horizontal_spacing=0.1)
    layers, titles, views = [], [], []
    for i, (layer, rows) in enumerate(df.groupby("layer", sort=True)):
        layers.append(int(layer))
        bars = [_layer_bars(rows, int(layer), column, i == 0, n_bins) for column in columns]
        for c, bar in enumerate(bars, start=1):
            fig.add_trace(bar, row=1, col=c)
        views.append(_view(bars))
        n_nan_t = int((~np.isfinite(rows["t_value"].to_numpy(dtype=float))).sum())
        titles.append(_title(site, int(layer), len(rows), n_nan_t, contrast))
    _axes(fig, columns, views[0])
    t_ranges = np.array([view["xaxis2.range"] for view in views])
    _mark_fdr_threshold(fig, fdr_threshold(df), (float(t_ranges[:, 0].min()), float(t_ranges[:, 1].max())))
    apply_layout(fig, titles[0], height=600, bargap=0, margin=dict(t=125, b=150),
                 legend=dict(orientation="h", yanchor="bottom", y=1.07, x=0),
                 sliders=[_slider(layers, titles, views)])
    return fig


def _static_row(bar: go.Bar, layer: int, coloraxis: str) -> go.Heatmap:
    """One layer's bars as a row of cells: its own bins, the overflow cells one bin apart."""
    x, w = np.asarray(bar.x, dtype=float), float(bar.width[0])
    counts, spans = np.asarray(bar.y, dtype=float), np.asarray(bar.customdata, dtype=float)
    regular = np.append(spans[:-2, 0], spans[-3, 1])  # the bins; then the underflow and overflow bars
    edges = np.concatenate([[x[-2] - w / 2, x[-2] + w / 2], regular, [x[-1] - w / 2, x[-1] + w / 2]])
    z = np.concatenate([[counts[-2], np.nan], counts[:-2], [np.nan, counts[-1]]])
    where = [f"[{a:.4g}, {b:.4g}]" for a, b in spans]
    text = [where[-2] + " (below the layer's bins)", "", *where[:-2], "", where[-1] + " (above the layer's bins)"]
    return go.Heatmap(x=edges, y=[layer], z=[z], text=[text], coloraxis=coloraxis, name=f"layer {layer}",
                      hovertemplate=f"layer {layer}<br>%{{text}}<br>neurons: %{{z}}<extra></extra>")


def figure1_static(fig: go.Figure) -> go.Figure:
    """Every layer of a ``figure1`` at once (for PNG/SVG and the report): per column a row of
    cells per layer on that layer's own bins (colour: neurons per bin), built from the figure's
    own binned traces, with the t panel's FDR threshold carried over."""
    bars = list(fig.data)
    layers = [int(step["label"]) for step in fig.layout.sliders[0].steps]
    static = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                           subplot_titles=[fig.layout.annotations[0].text, fig.layout.annotations[1].text])
    for c, color in ((1, BLUE), (2, ORANGE)):
        coloraxis = "coloraxis" if c == 1 else "coloraxis2"
        column = bars[c - 1 :: 2]
        static.add_traces([_static_row(bar, layer, coloraxis) for layer, bar in zip(layers, column)],
                          rows=1, cols=c)
        most = max(float(np.max(bar.y, initial=0)) for bar in column)
        static.update_layout({coloraxis: dict(colorscale=[[0.0, "#ffffff"], [1.0, color]], cmin=0, cmax=max(1.0, most),
                                              colorbar=dict(title="neurons", x=0.44 if c == 1 else 1.0, len=0.9))})
        ranges = np.array([[min(bar.x) - bar.width[0], max(bar.x) + bar.width[0]] for bar in column], dtype=float)
        static.add_vline(x=0, line=dict(color="black", width=1, dash="dot"), row=1, col=c)
        axis = "xaxis" if c == 1 else "xaxis2"
        static.update_xaxes(title_text=fig.layout[axis].title.text, range=[ranges[:, 0].min(), ranges[:, 1].max()],
                            row=1, col=c)
        static.update_yaxes(title_text=LAYER_AXIS, autorange="reversed", **layer_ticks(len(layers)), row=1, col=c)
    for shape in fig.layout.shapes:  # both are 1 x 2 subplots: the same axis references
        if shape.name == FDR_MARK:
            static.add_shape(shape)
    for note in fig.layout.annotations:
        if note.name == FDR_MARK:
            static.add_annotation(note)
    site_title = fig.layout.title.text.split(" — ")[0]
    apply_layout(static, f"{site_title}: neuron mean Δ and t-value per layer, each layer on its own bins<br>"
                 "<sup>colour: neurons per bin; the cells set apart at a row's ends count the neurons beyond its "
                 "bins</sup>",
                 height=max(450, 160 + 18 * len(layers)), margin=dict(t=90, b=90))
    return static


def for_static(fig: go.Figure) -> go.Figure:
    """The figure to export as PNG/SVG: ``figure1_static`` for a slider figure (the cross-modal
    scatter's own static copy for that one), else itself."""
    from modalscope.figures.xmodal import SCATTER_META, xmodal_scatter_static

    if fig.layout.sliders and fig.layout.meta == SCATTER_META:
        return xmodal_scatter_static(fig)
    return figure1_static(fig) if fig.layout.sliders else fig
