"""Figure 1's t panel marks the FDR threshold: dashed lines at ±|t| of the weakest neuron with
q < 0.05 (Table 3's own q), or a note when no neuron has it; the static heatmap keeps them; each
layer is binned on its own robust range, so one huge outlier cannot squash the others; p values
have one format; and figures/histograms.py is built of small functions, one idea each."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pandas as pd

from modalscope.figures.histograms import FDR_MARK, fdr_threshold, figure1, figure1_static
from modalscope.figures.style import format_p


def _neurons(q: np.ndarray) -> pd.DataFrame:
    t = np.array([-6.0, -3.5, -1.0, 0.5, 2.9, 4.0, np.nan, 7.0])
    return pd.DataFrame({"site": "mlp", "layer": [0, 0, 0, 0, 1, 1, 1, 1], "neuron": [0, 1, 2, 3] * 2,
                         "mean_diff": t / 10, "t_value": t, "q_value": q})


def test_threshold_is_the_weakest_significant_t_and_both_figures_mark_it():
    q = np.array([0.001, 0.03, 0.6, 0.9, 0.049, 0.01, np.nan, 0.0001])
    neurons = _neurons(q)
    assert fdr_threshold(neurons) == 2.9  # |t| of the q = 0.049 neuron; |t| = 3.5 and above too
    fig = figure1(neurons, "mlp")
    for drawn in (fig, figure1_static(fig)):
        marks = [s for s in drawn.layout.shapes if s.name == FDR_MARK]
        assert sorted(s.x0 for s in marks) == [-2.9, 2.9] and {s.line.dash for s in marks} == {"dash"}
        notes = [a.text for a in drawn.layout.annotations if a.name == FDR_MARK]
        assert notes == ["dashed: q < 0.05 beyond |t| = 2.9"]


def test_without_a_significant_neuron_the_panel_says_so():
    neurons = _neurons(np.full(8, 0.5))
    assert fdr_threshold(neurons) is None and fdr_threshold(neurons.drop(columns="q_value")) is None
    fig = figure1(neurons, "mlp")
    assert not [s for s in fig.layout.shapes if s.name == FDR_MARK]
    assert [a.text for a in figure1_static(fig).layout.annotations if a.name == FDR_MARK] == [
        "no neuron has q < 0.05"]


def test_p_values_have_one_format():
    assert [format_p(p) for p in (0.004975124, 0.0312, 1.0, 3.2149e-05, 0.05, float("nan"), None)] == [
        "0.00498", "0.0312", "1", "3.21e-05", "0.05", "—", "—"]


def test_histograms_has_no_function_over_50_lines():
    import modalscope.figures.histograms as histograms

    tree = ast.parse(inspect.getsource(histograms))
    lengths = {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(tree)
               if isinstance(node, ast.FunctionDef)}
    assert {"figure1", "_layer_bars", "_slider", "_axes", "_mark_fdr_threshold", "figure1_static"} <= set(lengths)
    assert max(lengths.values()) <= 50, lengths


def test_every_layer_resolves_its_own_bulk_despite_one_huge_outlier():
    """A neuron at mean Δ -631 (as on a trained model) and layers of very different spread:
    the central 98% of every layer spans at least 20 of its bins, and the outlier is counted
    in the layer's labelled underflow bar."""
    rng = np.random.default_rng(0)
    frames = []
    for layer, sd in enumerate(np.geomspace(0.05, 5.0, 8)):
        mean_diff = rng.normal(-0.2 * sd, sd, 3000)
        t = mean_diff / sd * 4 + rng.normal(0, 1, 3000)
        if layer == 3:
            mean_diff[17], t[17] = -631.0, -4e4
        frames.append(pd.DataFrame({"site": "mlp", "layer": layer, "neuron": np.arange(3000), "mean_diff": mean_diff,
                                    "t_value": t, "q_value": 0.5}))
    neurons = pd.concat(frames, ignore_index=True)
    fig = figure1(neurons, "mlp")
    static = figure1_static(fig)
    for layer, rows in neurons.groupby("layer"):
        for column, name in enumerate(("mean_diff", "t_value")):
            bar = fig.data[2 * layer + column]
            spans = np.asarray(bar.customdata, dtype=float)
            width = spans[0, 1] - spans[0, 0]
            low, high = np.percentile(rows[name], [1, 99])
            assert (high - low) / width >= 20, (layer, name, (high - low) / width)
            assert low >= spans[0, 0] and high <= spans[-3, 1]  # inside the layer's bins
            if layer == 3:  # the outlier: counted and labelled in the underflow bar
                assert bar.y[-2] >= 1 and bar.text[-2].startswith(f"{bar.y[-2]:,} below")
                assert ("-631" if name == "mean_diff" else "-4e+04") in bar.text[-2]
            row = static.data[column * 8 + layer]  # the static row: the same bins
            np.testing.assert_allclose(np.asarray(row.x)[2:-2], np.append(spans[:-2, 0], spans[-3, 1]))
    shared = (neurons["mean_diff"].max() + 631.0) / 60  # bins shared over all layers, as before
    assert (np.percentile(frames[0]["mean_diff"], 99) - np.percentile(frames[0]["mean_diff"], 1)) / shared < 1
