"""Tests for modalscope.figures: Figure 1, Figure 2 and export helpers."""

from __future__ import annotations

import os
import re
import stat

import numpy as np
import pandas as pd
import plotly
import plotly.graph_objects as go
import pytest
from plotly.io.json import to_json_plotly

from modalscope.figures import export
from modalscope.figures.export import (
    NO_BROWSER_MESSAGE,
    find_browser,
    write_html,
    write_pngs,
)
from modalscope.figures.histograms import figure1
from modalscope.figures.trend import figure2

N_LAYERS = 4
N_NEURONS = 50
SITE = "mlp_act"


@pytest.fixture()
def neurons() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for layer in range(N_LAYERS):
        # layer-dependent shift so that layers really differ
        mean_diff = rng.normal(0.5 - 0.3 * layer, 0.2, N_NEURONS)
        t_value = mean_diff / 0.05 + rng.normal(0, 1, N_NEURONS)
        if layer == 2:  # zero-variance neurons: NaN t-values
            t_value[:7] = np.nan
        for j in range(N_NEURONS):
            rows.append(
                dict(site=SITE, layer=layer, neuron=j, n=20,
                     mean_diff=mean_diff[j], sd_diff=0.2, t_value=t_value[j],
                     p_value=0.01, q_value=0.02, cohen_d=mean_diff[j] / 0.2)
            )
    return pd.DataFrame(rows)


@pytest.fixture()
def layers() -> pd.DataFrame:
    x = np.arange(6)
    mean = 0.3 - 0.1 * x
    return pd.DataFrame(dict(site=SITE, layer=x, mean_diff=mean,
                             ci_low=mean - 0.05 - 0.01 * x, ci_high=mean + 0.04,
                             n_neurons=100))


REGRESSION = {"slope": -0.0123, "intercept": 0.31, "r2": 0.9712}


# ---------------------------------------------------------------- figure 1
def test_figure1_slider_has_one_step_per_layer(neurons):
    fig = figure1(neurons, SITE)
    steps = fig.layout.sliders[0].steps
    assert len(fig.data) == 2 * N_LAYERS
    assert [s.label for s in steps] == [str(i) for i in range(N_LAYERS)]
    # initially only layer 0 is visible
    assert [bool(t.visible) for t in fig.data] == [True, True] + [False] * (2 * N_LAYERS - 2)


def test_figure1_each_step_shows_exactly_that_layers_two_traces(neurons):
    fig = figure1(neurons, SITE)
    for i, step in enumerate(fig.layout.sliders[0].steps):
        visible = step.args[0]["visible"]
        assert len(visible) == len(fig.data)
        shown = [k for k, v in enumerate(visible) if v]
        assert shown == [2 * i, 2 * i + 1]
        assert fig.data[2 * i].name == f"layer {i} mean_diff"
        assert fig.data[2 * i + 1].name == f"layer {i} t_value"
        assert f"layer {i}" in step.args[1]["title.text"]
        assert SITE in step.args[1]["title.text"]
    assert SITE in fig.layout.title.text and "layer 0" in fig.layout.title.text


def _edges_of(bar: go.Bar) -> np.ndarray:
    cd = np.asarray(bar.customdata, dtype=float)
    return np.append(cd[:, 0], cd[-1, 1])


@pytest.mark.parametrize("col,offset", [("mean_diff", 0), ("t_value", 1)])
def test_figure1_bars_equal_np_histogram_on_shared_bins(neurons, col, offset):
    fig = figure1(neurons, SITE)
    all_vals = neurons[col].to_numpy(float)
    all_vals = all_vals[np.isfinite(all_vals)]
    first_edges = _edges_of(fig.data[offset])
    # shared bins: global range (including 0), same edges for every layer
    assert first_edges[0] == pytest.approx(min(all_vals.min(), 0.0))
    assert first_edges[-1] == pytest.approx(max(all_vals.max(), 0.0))
    for layer in range(N_LAYERS):
        bar = fig.data[2 * layer + offset]
        edges = _edges_of(bar)
        np.testing.assert_allclose(edges, first_edges)
        vals = neurons.loc[neurons.layer == layer, col].to_numpy(float)
        finite = vals[np.isfinite(vals)]
        heights = np.asarray(bar.y)
        assert heights.sum() == finite.size
        expected, _ = np.histogram(finite, bins=edges)
        np.testing.assert_array_equal(heights, expected)
        np.testing.assert_allclose(np.asarray(bar.x), (edges[:-1] + edges[1:]) / 2)
    # the NaN layer really lost 7 values in the t column only
    if col == "t_value":
        assert np.asarray(fig.data[2 * 2 + 1].y).sum() == N_NEURONS - 7
        assert "7 NaN t-values dropped" in fig.layout.sliders[0].steps[2].args[1]["title.text"]


def test_figure1_axes_zero_lines_and_size_independent_of_neuron_count(neurons):
    fig = figure1(neurons, SITE)
    assert fig.layout.xaxis.title.text == "mean Δ (text − image)"
    assert fig.layout.xaxis2.title.text == "t-value"
    assert fig.layout.yaxis.title.text == "neurons"
    vlines = [s for s in fig.layout.shapes if s.x0 == 0 and s.x1 == 0]
    assert {s.xref for s in vlines} == {"x", "x2"}
    big = pd.concat([neurons.assign(neuron=neurons.neuron + k * N_NEURONS)
                     for k in range(20)], ignore_index=True)
    n_small = sum(len(t.y) for t in fig.data)
    n_big = sum(len(t.y) for t in figure1(big, SITE).data)
    assert n_small == n_big  # pre-binned: no per-neuron arrays in the figure


def test_figure1_rejects_unknown_site(neurons):
    with pytest.raises(ValueError, match="other"):
        figure1(neurons, "other")


# ---------------------------------------------------------------- figure 2
def _trace(fig: go.Figure, prefix: str) -> go.Scatter:
    (tr,) = [t for t in fig.data if t.name.startswith(prefix)]
    return tr


def test_figure2_regression_line(layers):
    fig = figure2(layers, REGRESSION, SITE)
    reg = _trace(fig, "linear fit")
    x = np.asarray(reg.x, dtype=float)
    np.testing.assert_allclose(x, np.arange(6))
    np.testing.assert_allclose(np.asarray(reg.y), 0.31 - 0.0123 * x)
    assert reg.line.color == "red"
    assert reg.line.dash == "dash"
    assert "R² = 0.97" in reg.name
    assert "slope = -0.0123/layer" in reg.name


def test_figure2_ci_band_mean_and_axes(layers):
    fig = figure2(layers, REGRESSION, SITE)
    band = _trace(fig, "95% CI over neurons")
    assert band.fill == "toself"
    bx, by = np.asarray(band.x, float), np.asarray(band.y, float)
    n = len(layers)
    np.testing.assert_allclose(bx, np.r_[np.arange(n), np.arange(n)[::-1]])
    np.testing.assert_allclose(by[:n], layers.ci_high.to_numpy())
    np.testing.assert_allclose(by[n:], layers.ci_low.to_numpy()[::-1])
    mean = _trace(fig, "layer mean")
    assert mean.mode == "markers+lines"
    np.testing.assert_allclose(np.asarray(mean.y), layers.mean_diff.to_numpy())
    assert fig.layout.xaxis.title.text == "decoder layer"
    assert fig.layout.yaxis.title.text == "mean Δ (text − image)"
    assert SITE in fig.layout.title.text
    assert any(s.y0 == 0 and s.y1 == 0 for s in fig.layout.shapes)


def test_figure2_sorts_layers_and_skips_nan_ci(layers):
    shuffled = layers.iloc[::-1].copy()
    shuffled.loc[shuffled.layer == 5, ["ci_low", "ci_high"]] = np.nan
    fig = figure2(shuffled, REGRESSION, SITE)
    np.testing.assert_allclose(np.asarray(_trace(fig, "layer mean").x, float), np.arange(6))
    band = _trace(fig, "95% CI")
    assert np.isfinite(np.asarray(band.y, float)).all()
    assert len(band.x) == 2 * 5


# ---------------------------------------------------------------- export
def test_write_html_is_offline_atomic_and_contains_data(tmp_path, layers):
    fig = figure2(layers, REGRESSION, SITE)
    out = write_html(fig, tmp_path / "sub" / "dir" / "figure2.html")
    assert out == tmp_path / "sub" / "dir" / "figure2.html"
    text = out.read_text(encoding="utf-8")
    # plotly.js itself mentions cdn.plot.ly (topojson URL); no script may load it
    assert not re.search(r"<script[^>]*\bsrc=", text)
    assert f"plotly.js v{plotly.offline.get_plotlyjs_version()}" in text  # embedded
    assert len(text) > 1_000_000
    # the figure's data: trace names and the CI polygon values, JSON-encoded
    for name in (t.name for t in fig.data):
        assert to_json_plotly(name) in text
    assert "R\\u00b2 = 0.97" in text  # plotly escapes non-ASCII in JSON
    assert to_json_plotly(fig.to_dict()["data"]) in text  # all traces, verbatim
    assert sorted(p.name for p in out.parent.iterdir()) == ["figure2.html"]
    assert not list(tmp_path.rglob("*.tmp"))
    # file permissions follow the umask like a normal file, not 0600 temp files
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_write_html_failure_leaves_old_file_intact(tmp_path, layers, monkeypatch):
    target = tmp_path / "figure2.html"
    target.write_text("previous")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(export.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_html(figure2(layers, REGRESSION, SITE), target)
    assert target.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure2.html"]


def _no_browser_env(monkeypatch, tmp_path) -> None:
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setenv("PATH", str(empty))


def test_find_browser(monkeypatch, tmp_path):
    _no_browser_env(monkeypatch, tmp_path)
    assert find_browser() is None
    fake = tmp_path / "emptybin" / "chromium-browser"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    assert find_browser() == str(fake)
    monkeypatch.setenv("BROWSER_PATH", "/opt/my/chrome")
    assert find_browser() == "/opt/my/chrome"


def test_write_pngs_without_browser_skips(monkeypatch, tmp_path, layers, neurons):
    _no_browser_env(monkeypatch, tmp_path)
    assert find_browser() is None
    figs = {tmp_path / "out" / "figure1.png": figure1(neurons, SITE),
            tmp_path / "out" / "figure2.png": figure2(layers, REGRESSION, SITE)}
    msg = write_pngs(figs)
    assert msg == NO_BROWSER_MESSAGE
    assert "\n" not in msg and "BROWSER_PATH" in msg and "modalscope plot DIR" in msg
    assert not (tmp_path / "out").exists()
    # also with find_browser itself stubbed out
    monkeypatch.setattr(export, "find_browser", lambda: None)
    assert write_pngs(figs) == NO_BROWSER_MESSAGE
    assert not (tmp_path / "out").exists()


def test_write_pngs_reports_kaleido_failure_without_raising(monkeypatch, tmp_path, layers):
    bogus = tmp_path / "not-a-browser"
    monkeypatch.setenv("BROWSER_PATH", str(bogus))
    out = tmp_path / "figure2.png"
    msg = write_pngs({out: figure2(layers, REGRESSION, SITE)})
    assert msg.startswith("PNG figures skipped: kaleido failed")
    assert str(bogus) in msg and "\n" not in msg
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.skipif(find_browser() is None, reason="no Chrome/Chromium on this machine")
def test_write_pngs_with_real_browser(tmp_path, layers, neurons):
    figs = {tmp_path / "figure1.png": figure1(neurons, SITE),
            tmp_path / "figure2.png": figure2(layers, REGRESSION, SITE)}
    assert write_pngs(figs) == "wrote 2 PNG figures"
    for p in figs:
        assert p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert not list(tmp_path.glob("*.tmp"))
