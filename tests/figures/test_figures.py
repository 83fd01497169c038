"""Tests for modalscope.figures: Figure 1, Figure 2 and export helpers."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

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
    write_images,
)
from modalscope.figures.histograms import N_BINS, figure1, for_static
from modalscope.figures.style import BLUE, VERMILLION
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
        # the legend shows the visible pair, so it names the layer on show
        assert fig.data[2 * i].name == f"layer {i}: mean Δ of its {N_NEURONS} neurons"
        assert fig.data[2 * i + 1].name == f"layer {i}: t-value of its {N_NEURONS} neurons"
        assert fig.data[2 * i].showlegend
        assert f"layer {i}" in step.args[1]["title.text"]
        assert SITE in step.args[1]["title.text"]
    assert SITE in fig.layout.title.text and "layer 0" in fig.layout.title.text


def _edges_of(bar: go.Bar) -> np.ndarray:
    """The layer's own bin edges: the bars before the two overflow bars."""
    cd = np.asarray(bar.customdata, dtype=float)[:-2]
    return np.append(cd[:, 0], cd[-1, 1])


@pytest.mark.parametrize("col,offset", [("mean_diff", 0), ("t_value", 1)])
def test_figure1_bars_equal_np_histogram_on_each_layers_bins(neurons, col, offset):
    fig = figure1(neurons, SITE)
    for layer in range(N_LAYERS):
        bar = fig.data[2 * layer + offset]
        edges = _edges_of(bar)
        vals = neurons.loc[neurons.layer == layer, col].to_numpy(float)
        finite = vals[np.isfinite(vals)]
        heights = np.asarray(bar.y)
        assert heights.sum() == finite.size  # the overflow bars count the rest
        expected, _ = np.histogram(finite, bins=edges)
        np.testing.assert_array_equal(heights[:-2], expected)
        assert [heights[-2], heights[-1]] == [(finite < edges[0]).sum(), (finite > edges[-1]).sum()]
        assert edges[0] >= min(finite.min(), 0) and edges[-1] <= max(finite.max(), 0) and len(edges) == N_BINS + 1
        np.testing.assert_allclose(np.asarray(bar.x)[:-2], (edges[:-1] + edges[1:]) / 2)
        assert bar.x[-2] < edges[0] and bar.x[-1] > edges[-1]  # the overflow bars, set apart
        view = fig.layout.sliders[0].steps[layer].args[1]
        axis = "xaxis" if offset == 0 else "xaxis2"
        assert view[f"{axis}.range"][0] < bar.x[-2] and view[f"{axis}.range"][1] > bar.x[-1]  # overflow bars shown
    # the NaN layer really lost 7 values in the t column only
    if col == "t_value":
        assert np.asarray(fig.data[2 * 2 + 1].y).sum() == N_NEURONS - 7
        assert "7 NaN t-values dropped" in fig.layout.sliders[0].steps[2].args[1]["title.text"]


def test_figure1_axes_zero_lines_and_size_independent_of_neuron_count(neurons):
    fig = figure1(neurons, SITE)
    assert fig.layout.xaxis.title.text == "neuron mean Δ (text − image)<br>activation units, max over tokens"
    assert fig.layout.xaxis2.title.text.startswith("t-value")
    assert fig.layout.yaxis.title.text == "neurons (count per bin)"
    other = figure1(neurons, SITE, stat="frac_active", contrast="image_text − text")
    assert other.layout.xaxis.title.text == (
        "neuron mean Δ (image_text − text)<br>share of tokens > 0, frac_active over tokens")
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
    assert reg.line.color == VERMILLION  # the report's red line, in Okabe-Ito's colour-blind-safe red
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
    assert fig.layout.xaxis.title.text == "decoder layer (0 = first)"
    assert fig.layout.yaxis.title.text == "layer mean Δ (text − image)<br>activation units, max over tokens"
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
    msg = write_images(figs, ("png",))
    assert msg == NO_BROWSER_MESSAGE
    assert "\n" not in msg and "BROWSER_PATH" in msg and "modalscope plot DIR" in msg
    assert not (tmp_path / "out").exists()
    # also with find_browser itself stubbed out
    monkeypatch.setattr(export, "find_browser", lambda: None)
    assert write_images(figs, ("png",)) == NO_BROWSER_MESSAGE
    assert not (tmp_path / "out").exists()


def test_write_pngs_reports_kaleido_failure_without_raising(monkeypatch, tmp_path, layers):
    bogus = tmp_path / "not-a-browser"
    monkeypatch.setenv("BROWSER_PATH", str(bogus))
    out = tmp_path / "figure2.png"
    msg = write_images({out: figure2(layers, REGRESSION, SITE)}, ("png",))
    assert msg.startswith("PNG figures skipped: kaleido failed")
    assert str(bogus) in msg and "\n" not in msg
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


NO_BROWSER = ("no Chrome/Chromium on this machine (`apt-get install chromium` or set BROWSER_PATH; "
              "`make test` installs it)")


def _assert_not_blank(png: Path, size: tuple[int, int]) -> None:
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == size
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    ink = (np.abs(rgb - 255).sum(axis=2) > 60).mean()  # share of pixels clearly not white
    assert ink > 0.02, f"{png.name}: only {ink:.1%} of pixels drawn"
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 16  # more than a flat fill
    blue = np.array([int(BLUE[i:i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(rgb - blue).sum(axis=2) < 30).any(), f"{png.name}: no data drawn in the palette's blue"


@pytest.mark.skipif(find_browser() is None, reason=NO_BROWSER)
def test_write_images_png_and_svg_in_one_browser_session(tmp_path, layers, neurons, monkeypatch):
    import xml.etree.ElementTree as ET

    import kaleido

    sessions = []

    class Counted(kaleido.Kaleido):
        def __init__(self, *args, **kwargs):
            sessions.append(kwargs.get("path"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(kaleido, "Kaleido", Counted)
    figs = {tmp_path / "figure1.html": figure1(neurons, SITE),
            tmp_path / "figure2.html": figure2(layers, REGRESSION, SITE)}
    assert export.write_images(figs) == "wrote 2 PNG and 2 SVG figures"
    assert sessions == [find_browser()]  # one browser for all four images
    for path, fig in figs.items():
        width, height = export.DEFAULT_WIDTH, fig.layout.height
        _assert_not_blank(path.with_suffix(".png"), (width * export.PNG_SCALE, height * export.PNG_SCALE))
        root = ET.parse(path.with_suffix(".svg")).getroot()
        assert root.tag.endswith("svg")
        assert (float(root.get("width")), float(root.get("height"))) == (width, height)
        assert len(root.findall(".//{http://www.w3.org/2000/svg}path")) > 10  # drawn, not an empty canvas
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "figure1.png", "figure1.svg", "figure2.png", "figure2.svg"]


def test_write_html_directory_mode_shares_one_plotlyjs(tmp_path, layers, neurons):
    one = write_html(figure2(layers, REGRESSION, SITE), tmp_path / "figure2.html", plotlyjs="directory")
    two = write_html(figure1(neurons, SITE), tmp_path / "figure1.html", plotlyjs="directory")
    js = tmp_path / export.PLOTLYJS
    assert js.read_bytes() == export.plotlyjs_bytes()
    before = js.stat().st_mtime_ns
    write_html(figure1(neurons, SITE), two, plotlyjs="directory")
    assert js.stat().st_mtime_ns == before  # written once, not per figure
    for page in (one, two):
        text = page.read_text(encoding="utf-8")
        assert re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", text) == [export.PLOTLYJS]  # local, no CDN
        assert len(text) < 100_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure1.html", "figure2.html", export.PLOTLYJS]


# ---------------------------------------------------------------- controls, palette, hover
@pytest.fixture()
def layers_with_controls(layers) -> pd.DataFrame:
    frame = layers.copy()
    for suffix, shift in (("", 0.0), ("_matched_max", 5.0)):
        mean = frame["mean_diff"] + shift
        frame[f"mean_diff{suffix}"] = mean
        frame[f"ci_low{suffix}"], frame[f"ci_high{suffix}"] = mean - 0.3, mean + 0.3
        frame[f"input_ci_low{suffix}"], frame[f"input_ci_high{suffix}"] = mean - 0.1, mean + 0.1
        frame[f"null_low{suffix}"], frame[f"null_high{suffix}"] = -0.05, 0.05
        frame[f"n_text_preferring{suffix}"], frame[f"n_image_preferring{suffix}"] = 30, 12
    return frame


def test_figure2_draws_the_comparison_beside_on_its_own_axis_with_shared_legend(layers_with_controls):
    compare = {"slope": 0.01, "intercept": 5.3, "r2": 0.5}
    fig = figure2(layers_with_controls, REGRESSION, SITE, "max", "matched_max", compare)
    by_name = {t.name: t for t in fig.data}
    assert by_name["layer mean Δ (max)"].xaxis in (None, "x")
    assert by_name["layer mean Δ (matched_max)"].xaxis == "x2"
    np.testing.assert_allclose(np.asarray(by_name["layer mean Δ (matched_max)"].y),
                               layers_with_controls["mean_diff_matched_max"])
    fits = [t for t in fig.data if t.name.startswith("linear fit")]
    assert [t.name.split(",")[0] for t in fits] == ["linear fit (max)", "linear fit (matched_max)"]
    assert all(t.line.color == VERMILLION and t.line.dash == "dash" for t in fits)
    # the null band and the spread are one legend entry each for both panels
    for name in ("sign-flip null, 95% (no preferred modality)", "spread over neurons, 95% (the report's CI)"):
        bands = [t for t in fig.data if t.name == name]
        assert len(bands) == 2 and [bool(t.showlegend) for t in bands] == [True, False]
        assert bands[0].legendgroup == bands[1].legendgroup
    assert fig.layout.xaxis.title.text == fig.layout.xaxis2.title.text == "decoder layer (0 = first)"
    assert [a.text for a in fig.layout.annotations][:2] == [
        "reduction: max", "reduction: matched_max (length-matched)"]


def test_figure2_hover_names_layer_intervals_and_significant_counts(layers_with_controls):
    fig = figure2(layers_with_controls, REGRESSION, SITE)
    mean = [t for t in fig.data if t.name == "layer mean Δ (max)"][0]
    for part in ("layer %{x}", "mean Δ", "95% CI over inputs", "sign-flip null", "q < 0.05", "neurons"):
        assert part in mean.hovertemplate
    data = np.asarray(mean.customdata, float)
    np.testing.assert_allclose(data[:, 6:9], [[30, 12, 100]] * len(layers_with_controls))


def _colours(fig: go.Figure) -> set[str]:
    found = set()
    for t in fig.data:
        for colour in (getattr(t, "fillcolor", None), t.marker.color if "marker" in t else None,
                       t.line.color if "line" in t else None):
            if isinstance(colour, str):
                found.add(colour)
    return found


def test_every_figure_uses_the_colour_blind_safe_palette(neurons, layers_with_controls):
    from modalscope.figures import style
    from modalscope.figures.significance import figure_significant

    okabe_ito = {style.BLUE, style.VERMILLION, style.GREEN, style.ORANGE, style.SKY, style.PURPLE,
                 style.YELLOW, style.BLACK, style.GREY, "#882255"}
    allowed = okabe_ito | {style.rgba(c, a) for c in okabe_ito for a in (0.2, 0.22, 0.25)} | {"rgba(0, 0, 0, 0.08)"}
    counts = pd.DataFrame({"site": SITE, "stat": ["max"] * 2 + ["matched_max"] * 2, "layer": [0, 1] * 2,
                           "n_text_preferring": [5, 3, 7, 1], "n_image_preferring": [2, 40, 0, 6],
                           "n_neurons": 50})
    figures = [figure1(neurons, SITE), figure2(layers_with_controls, REGRESSION, SITE),
               figure_significant(counts, SITE, ["max", "matched_max"])]
    for fig in figures:
        assert _colours(fig) <= allowed, _colours(fig) - allowed
        assert fig.layout.showlegend is not False
    sig = figures[2]
    image_bars = [t for t in sig.data if t.name.startswith("image")]
    assert all((np.asarray(t.y) <= 0).all() for t in image_bars)  # drawn down ...
    assert all(not text.startswith("-") for text in sig.layout.yaxis.ticktext)  # ... but counted up
    assert max(sig.layout.yaxis.tickvals) >= 7 and min(sig.layout.yaxis.tickvals) <= -40
    assert sig.layout.xaxis.title.text == "decoder layer (0 = first)"


@pytest.mark.parametrize("largest,step", [(0, 1), (3, 1), (7, 2), (40, 10), (228, 100), (11008, 5000)])
def test_count_ticks_are_symmetric_round_and_cover_the_largest(largest, step):
    from modalscope.figures.significance import count_ticks

    ticks = count_ticks(largest)
    assert ticks == [-t for t in reversed(ticks)] and 0 in ticks
    assert ticks[1] - ticks[0] == step and ticks[-1] >= largest


def test_static_figure1_shows_every_layer_with_the_sliders_counts(neurons):
    interactive = figure1(neurons, SITE)
    static = for_static(interactive)
    assert not static.layout.sliders
    layers = sorted(neurons.loc[neurons["site"] == SITE, "layer"].unique().tolist())
    assert len(static.data) == 2 * len(layers)  # a row per layer and column, each on the layer's own bins
    for column in (0, 1):
        rows, bars = static.data[column * len(layers):(column + 1) * len(layers)], interactive.data[column::2]
        assert [row.y[0] for row in rows] == layers and {row.type for row in rows} == {"heatmap"}
        per_layer = neurons[neurons["site"] == SITE].groupby("layer")["mean_diff" if column == 0 else "t_value"]
        for row, bar, finite in zip(rows, bars, per_layer.apply(lambda v: np.isfinite(v).sum())):
            z = np.asarray(row.z[0], dtype=float)
            y = np.asarray(bar.y)  # the bins, then underflow and overflow: in the row, at its two ends
            np.testing.assert_array_equal(z[~np.isnan(z)], np.r_[y[-2], y[:-2], y[-1]])
            assert np.isnan(z[[1, -2]]).all() and np.nansum(z) == finite
            np.testing.assert_allclose(np.asarray(row.x)[2:-2], _edges_of(bar))
    figure2_like = figure1(neurons, SITE)
    figure2_like.layout.sliders = ()
    assert for_static(figure2_like) is figure2_like  # only slider figures change


# ---------------------------------------------------------------- labels name the contrast
def _labels(fig: go.Figure) -> list[str]:
    """Every text a reader sees: title, axis titles, subplot titles, legend names, hovers, slider titles."""
    layout = fig.layout
    found = [layout.title.text or ""]
    found += [layout[a].title.text or "" for a in layout if a.startswith(("xaxis", "yaxis"))]
    found += [a.text for a in layout.annotations or ()]
    found += [t.name or "" for t in fig.data] + [t.hovertemplate or "" for t in fig.data if "hovertemplate" in t]
    for slider in layout.sliders or ():
        found += [step.args[1]["title.text"] for step in slider.steps]
    return found


def _counts() -> pd.DataFrame:
    return pd.DataFrame({"site": SITE, "stat": ["max"] * 2 + ["matched_max"] * 2, "layer": [0, 1] * 2,
                         "n_text_preferring": [5, 3, 7, 1], "n_image_preferring": [2, 40, 0, 6], "n_neurons": 50})


def test_figures_under_another_contrast_name_both_streams_not_text_or_image(neurons, layers_with_controls):
    from modalscope.figures.significance import figure_significant

    contrast = "image_text_caption − text"
    figures = {
        "figure1": figure1(neurons, SITE, contrast=contrast),
        "figure2": figure2(layers_with_controls, REGRESSION, SITE, "max", "matched_max",
                           {"slope": 0.01, "intercept": 5.3, "r2": 0.5}, contrast),
        "significant": figure_significant(_counts(), SITE, ["max", "matched_max"], contrast),
    }
    for name, fig in figures.items():
        labels = " | ".join(_labels(fig))
        assert "preferring" not in labels and "modality" not in labels, name  # no text-/image-preferring
        assert "image_text_caption" in labels, name
    sig = figures["significant"]
    assert [t.name for t in sig.data] == ["image_text_caption > text (max)", "text > image_text_caption (max)",
                                          "image_text_caption > text (matched_max)",
                                          "text > image_text_caption (matched_max)"]
    assert np.asarray(sig.data[1].y).tolist() == [-2, -40]  # Δ < 0 drawn down, as before
    assert sig.layout.title.text.endswith("(up: image_text_caption > text, down: text > image_text_caption)")
    assert "↑ image_text_caption > text, ↓ text > image_text_caption" in sig.layout.yaxis.title.text
    mean = [t for t in figures["figure2"].data if t.name == "layer mean Δ (max)"][0]
    assert "%{customdata[6]:.0f} image_text_caption > text, %{customdata[7]:.0f} text > image_text_caption" \
        in mean.hovertemplate
    assert any(t.name == "sign-flip null, 95% (no preference between image_text_caption and text)"
               for t in figures["figure2"].data)
    assert figures["figure2"].layout.title.text.startswith(f"{SITE}: layer mean Δ (image_text_caption − text)")
    steps = figures["figure1"].layout.sliders[0].steps
    assert all("mean difference (image_text_caption − text)" in s.args[1]["title.text"] for s in steps)


def test_figures_of_the_default_contrast_keep_text_preferring(neurons, layers_with_controls):
    from modalscope.figures.significance import figure_significant

    sig = figure_significant(_counts(), SITE, ["max"])
    assert [t.name for t in sig.data] == ["text-preferring (max)", "image-preferring (max)"]
    assert sig.layout.title.text.endswith("(up: text-preferring, down: image-preferring)")
    mean = [t for t in figure2(layers_with_controls, REGRESSION, SITE).data if t.name == "layer mean Δ (max)"][0]
    assert "text-preferring" in mean.hovertemplate and "image-preferring" in mean.hovertemplate
    assert "mean difference (text − image)" in figure1(neurons, SITE).layout.title.text
