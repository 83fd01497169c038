"""The cross-modal figures (figures/xmodal.py) hold the table's numbers, and the report shows them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from modalscope.figures.assemble import StudyTables
from modalscope.figures.histograms import for_static
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
