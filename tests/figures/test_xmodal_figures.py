"""The cross-modal figures (figures/xmodal.py) hold the table's numbers, and the report shows them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from modalscope.figures.assemble import StudyTables
from modalscope.figures.histograms import for_static
from modalscope.figures.style import BLACK
from modalscope.figures.xmodal import (
    MAX_POINTS, N_BINS, figure_xmodal_r, figure_xmodal_scatter, labelled, xmodal_scatter_static,
)
from modalscope.report.page import REPORT


def _synthetic(width: int = 2100, n_layers: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = n_layers * width
    r = np.clip(rng.normal(0.1, 0.3, rows), -1, 1)
    return pd.DataFrame({"site": "mlp", "layer": np.repeat(np.arange(n_layers), width),
                         "neuron": np.tile(np.arange(width), n_layers), "cohen_d": rng.normal(size=rows),
                         "xmodal_r": r, "xmodal_q": np.where(np.abs(r) > 0.5, 0.01, 0.5)})


def test_the_r_figure_counts_every_neuron_per_layer_and_marks_the_fdr_cut():
    neurons = _synthetic()
    fig = figure_xmodal_r(neurons, "mlp")
    heat = fig.data[0]
    for layer in range(2):
        want, _ = np.histogram(neurons[neurons["layer"] == layer]["xmodal_r"], bins=np.linspace(-1, 1, N_BINS + 1))
        np.testing.assert_array_equal(np.asarray(heat.z)[layer], want)
    cut = neurons.loc[neurons["xmodal_q"] < 0.05, "xmodal_r"].abs().min()
    assert sorted(round(s.x0, 12) for s in fig.layout.shapes if s.line.dash == "dash") == [round(-cut, 12),
                                                                                           round(cut, 12)]


def test_the_scatter_labels_the_neurons_of_interest_and_draws_at_most_max_points():
    neurons = _synthetic()
    fig = figure_xmodal_scatter(neurons, "mlp")
    layer1 = neurons[neurons["layer"] == 1]
    points, named = fig.data[2], fig.data[3]
    assert len(points.x) == MAX_POINTS
    want = [*layer1.nlargest(3, "cohen_d")["neuron"], *layer1.nsmallest(3, "cohen_d")["neuron"],
            *layer1.nlargest(3, "xmodal_r")["neuron"]]
    assert list(named.text) == [str(n) for n in want]
    assert [len(labelled(layer1)[k]) for k in ("text", "image", "xmodal")] == [3, 3, 3]
    static = xmodal_scatter_static(fig)
    assert not static.layout.sliders and sum(bool(t.visible) for t in static.data[:4]) == 2
    assert for_static(fig).layout.title.text == static.layout.title.text


def test_the_report_and_plot_show_the_cross_modal_figures(small_study):
    html = (small_study / REPORT).read_text(encoding="utf-8")
    tables = StudyTables.read(small_study)
    for site in tables.sites:
        assert f'id="fig-xmodal_r_{site}"' in html and f'id="fig-xmodal_scatter_{site}"' in html
        assert (small_study / "figures" / f"xmodal_scatter_{site}.html").is_file()


def _legend(fig) -> dict[str, object]:
    """{legend name: marker} of the legend-only entries (no data)."""
    return {t.name: t.marker for t in fig.data if t.showlegend is not False and list(t.x) == [None]}


def test_the_scatter_means_one_thing_by_black_and_names_the_top_r_for_how_it_was_picked():
    """Black (a point's fill or a labelled neuron's outline) means xmodal_q < 0.05 and nothing else,
    as the legend says; the top 3 by r have their own symbol and legend entry, whatever their q."""
    neurons = _synthetic()
    neurons.loc[neurons["xmodal_r"].nlargest(40).index[::2], "xmodal_q"] = 0.64  # high r, not significant
    fig = figure_xmodal_scatter(neurons, "mlp")
    legend = _legend(fig)
    assert legend["xmodal_q < 0.05"].color == BLACK and legend["xmodal_q ≥ 0.05"].color != BLACK
    assert legend["outlined: labelled with xmodal_q < 0.05"].line.color == BLACK
    assert not any("most cross-modal" in name for name in legend)
    top_r = [name for name in legend if name.startswith("top 3 by xmodal_r")]
    assert len(top_r) == 1 and legend[top_r[0]].symbol == "diamond"
    assert all(m.line.color != BLACK for name, m in legend.items() if name.startswith("top 3"))
    n_outlined_not_significant = 0
    for layer, rows in neurons.groupby("layer"):
        points, named = fig.data[2 * layer], fig.data[2 * layer + 1]
        q = rows.set_index("neuron")["xmodal_q"]
        drawn = q.loc[np.asarray(points.customdata)[:, 0].astype(int)].to_numpy()
        np.testing.assert_array_equal(np.asarray(points.marker.color) == BLACK, drawn < 0.05)
        neuron_q = q.loc[[int(n) for n in named.text]].to_numpy()
        outlined = np.asarray(named.marker.line.color) == BLACK
        np.testing.assert_array_equal(outlined, neuron_q < 0.05)
        n_outlined_not_significant += int((~(neuron_q < 0.05)).sum())
        symbols = list(named.marker.symbol)
        assert symbols == ["circle"] * 6 + ["diamond"] * 3
        assert list(named.marker.color[6:]) == [legend[top_r[0]].color] * 3
        assert points.showlegend is False and named.showlegend is False  # the legend is the entries above
    assert n_outlined_not_significant > 0  # the top r of a layer included non-significant neurons, drawn unoutlined


def test_the_scatter_title_fits_a_png_and_its_margin_holds_title_and_legend():
    """Each title line stays short enough for the 1,100 px PNG (16 px title, ~8 px a character;
    the second line in <sup>), and the title sits in a top margin above the legend."""
    import re

    fig = figure_xmodal_scatter(_synthetic(width=11008, n_layers=1).assign(site="residual"), "residual")
    for title in (fig.layout.title.text, xmodal_scatter_static(fig).layout.title.text):
        first, second = title.split("<br>")
        assert len(re.sub("<[^>]+>", "", first)) <= 90 and second.startswith("<sup>")
        assert len(re.sub("<[^>]+>", "", second)) <= 130, second
    assert fig.layout.title.yref == "container" and fig.layout.title.yanchor == "top"
    assert fig.layout.margin.t >= 160 and fig.layout.legend.y > 1  # title 2 lines + legend 2 rows above the plot
