"""An honest headline (issue 16, part 2): per site one plain sentence of what the raw-max and the
length-matched trends show, with their intervals, in summary.json, the report's "At a glance"
(length-matched first) and at the end of `modalscope run`; Figure 1 of every layer in the report
with the FDR threshold; one p format everywhere; the demo's random weights in the title;
"revision" only for hub models."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from cli_run import modalscope
from modalscope.demo import RANDOM_WEIGHTS, RANDOM_WEIGHTS_TITLE, build_demo_assets, mark_random_weights
from modalscope.figures.assemble import StudyTables, headline_figures
from modalscope.figures.export import plotlyjs_bytes
from modalscope.figures.histograms import figure1_static
from modalscope.figures.style import round_up
from modalscope.report import facts
from modalscope.report.headline import headline, trend_clause
from modalscope.report.page import REPORT

# The small study's numbers are pinned by tests/golden (within its tolerances, far below these 3 digits), so its sentences are too.
SENTENCES = {
    "residual": "residual, layer mean of Δ = text − image: raw max falls by 0.578 per layer (bootstrap 95% CI "
                "-0.791 to -0.363, sign-flip p ≤ 0.005; R² = 0.98); length-matched max rises by 0.915 per layer "
                "(bootstrap 95% CI 0.713 to 1.15, sign-flip p ≤ 0.005; R² = 0.97). The reductions disagree on "
                "the direction: raw max falls, length-matched max rises.",
    "mlp": "mlp, layer mean of Δ = text − image: raw max falls by 0.252 per layer (bootstrap 95% CI -0.309 to "
           "-0.203, sign-flip p ≤ 0.005; R² = 0.78); length-matched max changes by -0.0335 per layer (bootstrap 95% "
           "CI -0.0674 to 3.88e-05, sign-flip p = 0.0896). The reductions disagree on the direction: raw max falls, "
           "mean rises.",
}


def _page(study: Path) -> str:
    return (study / REPORT).read_text(encoding="utf-8").replace(plotlyjs_bytes().decode("utf-8"), "")


def _section(page: str, name: str) -> str:
    return re.search(rf'<section id="{name}">.*?</section>', page, re.S).group(0)


def test_summary_json_states_each_sites_trends_in_one_sentence_from_its_numbers(small_study):
    summary = json.loads((small_study / "tables/summary.json").read_text())
    for site, entry in summary.items():
        matched = entry["by_stat"]["matched_max"]

        def clause(e: dict) -> str:
            at_floor = e["slope_p_perm"] == 1 / (entry["n_perm"] + 1)
            shown = round_up(e["slope_p_perm"]) if at_floor else e["slope_p_perm"]  # the floor as its bound
            return (f"per layer (bootstrap 95% CI {e['slope_ci_low']:.3g} to {e['slope_ci_high']:.3g}, "
                    f"sign-flip p {'≤' if at_floor else '='} {shown:.3g}")

        assert clause(entry) in entry["headline"] and clause(matched) in entry["headline"]
        assert entry["headline"] == SENTENCES[site]
    # every number the sentence names lies where the verb says: falls = the whole CI below 0
    assert summary["residual"]["slope_ci_high"] < 0 < summary["residual"]["by_stat"]["matched_max"]["slope_ci_low"]
    mlp = summary["mlp"]["by_stat"]["matched_max"]
    assert mlp["slope_ci_low"] < 0 < mlp["slope_ci_high"]  # "changes by": the CI holds 0


def test_a_direction_is_named_only_when_the_interval_excludes_zero():
    def entry(slope, low, high, p=0.01):
        return {"slope": slope, "slope_ci_low": low, "slope_ci_high": high, "slope_p_perm": p}

    assert trend_clause("raw max", entry(-1.034, -1.2, -0.85, 0.000999)) == (
        "raw max falls by 1.03 per layer (bootstrap 95% CI -1.2 to -0.85, sign-flip p = 0.000999)")
    assert trend_clause("raw max", entry(-1.034, -1.2, -0.85, 1 / 1001), p_floor=1 / 1001) == (
        "raw max falls by 1.03 per layer (bootstrap 95% CI -1.2 to -0.85, sign-flip p ≤ 0.001)")
    assert trend_clause("x", entry(0.5, 0.1, 0.9)) == "x rises by 0.5 per layer (bootstrap 95% CI 0.1 to 0.9, " \
                                                      "sign-flip p = 0.01)"
    assert trend_clause("x", entry(-0.03, -0.1, 0.05)).startswith("x changes by -0.03 per layer")
    assert trend_clause("x", {"slope": 0.2}) == "x changes by 0.2 per layer"  # no bootstrap: no direction
    assert trend_clause("x", entry(float("nan"), float("nan"), float("nan"))) == (
        "x has no trend (it needs 3 layers with a finite mean)")
    only_max = {**entry(-2.0, -3.0, -1.0), "contrast": "image_text_caption - text", "by_stat": {"mean": {}}}
    assert headline("mlp", only_max) == (
        "mlp, layer mean of Δ = image_text_caption − text: raw max falls by 2 per layer (bootstrap 95% CI -3 to -1, "
        "sign-flip p = 0.01); length-matched max not recorded (see --stats).")


def test_at_a_glance_leads_with_the_sentences_and_the_length_matched_trend(small_study):
    glance = _section(_page(small_study), "glance")
    sentences = re.findall(r"<li>(.*?)</li>", glance)
    assert sentences == [html.escape(SENTENCES[site]) for site in ("residual", "mlp")]
    rows = re.findall(r'<tr><td class="l">(\w+)</td><td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td>',
                      glance)
    assert [(site, reduction) for site, reduction, *_ in rows] == [
        ("residual", "length-matched max (matched_max)"), ("residual", "raw max (max)"),
        ("mlp", "length-matched max (matched_max)"), ("mlp", "raw max (max)")]
    summary = json.loads((small_study / "tables/summary.json").read_text())
    _, _, slope, ci, p = rows[2]
    mm = summary["mlp"]["by_stat"]["matched_max"]
    assert (slope, ci, p) == (f"{mm['slope']:.4g}", f"{mm['slope_ci_low']:.3g} to {mm['slope_ci_high']:.3g}",
                              f"{mm['slope_p_perm']:.3g}")
    assert "biased towards the longer input" in glance and "because" not in glance


def test_p_values_read_the_same_in_tables_and_legends(small_study):
    tables = StudyTables.read(small_study)
    site = _section(_page(small_study), "site-mlp")
    p = tables.trend("mlp", "max")["slope_p_perm"]
    legend = [t.name for t in headline_figures(tables, "mlp", "max")["figure2_mlp"].data
              if t.name.startswith("linear fit (max)")][0]
    assert p == 1 / (tables.summary["mlp"]["n_perm"] + 1)  # at the floor: a bound in both
    assert "sign-flip p ≤ 0.005)" in legend and "<td>≤ 0.005</td>" in site  # 1/201 = 0.00498, rounded up, in both
    top = re.search(r"<h4>text-preferring.*?</table>", site, re.S).group(0)
    first = facts.top_neurons(tables, "mlp", "max")[0].iloc[0]
    cells = re.findall(r"<tr[^>]*>(.*?)</tr>", top)[1]  # the first neuron's row
    assert f"<td>{first['p_value']:.3g}</td><td>{first['q_value']:.3g}</td>" in cells


def test_report_figure1_shows_every_layer_above_the_slider_with_the_fdr_threshold(small_study):
    site = _section(_page(small_study), "site-mlp")
    assert site.index('id="fig-figure1_mlp_all_layers"') < site.index('id="fig-figure1_mlp"')
    neurons = pd.read_parquet(small_study / "tables/table3_neurons.parquet")
    mlp = neurons[neurons["site"] == "mlp"]
    threshold = mlp.loc[mlp["q_value"] < 0.05, "t_value"].abs().min()
    assert f"dashed: q \\u003c 0.05 beyond |t| = {threshold:.3g}" in site  # as plotly's JSON writes "<"
    slider = headline_figures(StudyTables.read(small_study), "mlp", "max")["figure1_mlp"]
    for fig in (slider, figure1_static(slider)):  # the report draws both, the heatmap first
        lines = sorted(s.x0 for s in fig.layout.shapes if s.name == "fdr-threshold")
        np.testing.assert_allclose(lines, [-threshold, threshold])
        assert all(s.xref == "x2" for s in fig.layout.shapes if s.name == "fdr-threshold")  # the t panel
    heatmaps = figure1_static(slider).data  # a row per layer and column, each on the layer's own bins
    assert [t.type for t in heatmaps] == ["heatmap"] * 8 and [t.y[0] for t in heatmaps] == [0, 1, 2, 3] * 2
    for column in (0, 1):  # row l is layer l's histogram of the slider, its overflow cells set apart
        z, y = np.asarray(heatmaps[4 * column + 2].z[0], dtype=float), np.asarray(slider.data[2 * 2 + column].y)
        np.testing.assert_array_equal(z[~np.isnan(z)], np.r_[y[-2], y[:-2], y[-1]])  # bins, then under/overflow


def test_null_band_colour_is_named_as_drawn(small_study):
    from modalscope.figures.style import PURPLE, rgba

    site = _section(_page(small_study), "site-mlp")
    assert "pink with a dotted edge: where layer means fall under the sign-flip null" in site
    assert "purple" not in site
    band = [t for t in headline_figures(StudyTables.read(small_study), "mlp", "max")["figure2_mlp"].data
            if t.name.startswith("sign-flip null")][0]
    assert band.fillcolor == rgba(PURPLE, 0.22)
    r, g, b = (0.22 * int(PURPLE[i:i + 2], 16) + 0.78 * 255 for i in (1, 3, 5))  # on the white page
    assert r > b > g and min(r, g, b) > 220  # a light pink: red first, then blue, little green


def test_revision_is_shown_only_for_hub_models(small_study, tmp_path):
    tables = StudyTables.read(small_study)
    assert "revision" not in dict(facts.provenance(small_study, tables).study)  # a local folder
    hub = tmp_path / "hub"
    shutil.copytree(small_study, hub)
    attrs = zarr.open_group(str(hub / "activations.zarr"), mode="r+").attrs
    attrs.update({"model": "llava-hf/llava-1.5-7b-hf", "revision": "a272c74", "weights_fingerprint": None,
                  "commit_hash": "a272c74b2481d8aff3aa6fc2c4bf891fe57334fb"})
    assert dict(facts.provenance(hub, tables).study)["revision"] == "a272c74"


def test_a_demo_study_says_its_model_has_random_weights(small_study, tiny_model_dir, coco_files, tmp_path,
                                                         monkeypatch):
    import modalscope.models.tiny as tiny

    copy = tmp_path / "demo-model"  # the demo's own assets, without building 240 images
    monkeypatch.setattr("modalscope.demo.build_synthetic_coco", lambda *a, **k: coco_files[0])
    monkeypatch.setattr(tiny, "build_tiny_llava", lambda *a, **k: shutil.copytree(tiny_model_dir, copy))
    model_dir, _, _ = build_demo_assets(tmp_path / "assets-of")
    assert model_dir == copy and (copy / RANDOM_WEIGHTS).is_file()
    assert json.loads((copy / RANDOM_WEIGHTS).read_text())["random_weights"] is True

    demo = tmp_path / "demo"
    shutil.copytree(small_study, demo)
    zarr.open_group(str(demo / "activations.zarr"), mode="r+").attrs["model"] = str(copy)
    assert modalscope("report", demo).returncode == 0
    page = _page(demo)
    assert f"Neuron by neuron: {copy} ({RANDOM_WEIGHTS_TITLE})</h1>" in page
    assert "<title>modalscope report: demo-model (random weights)</title>" in page
    assert RANDOM_WEIGHTS_TITLE not in _page(small_study)  # a model without the note: no claim
    from modalscope.cli import headline_block  # what `modalscope demo` prints last

    assert headline_block(demo, ["s1", "s2"]) == f"At a glance ({RANDOM_WEIGHTS_TITLE}):\n  s1\n  s2"
    assert headline_block(small_study, ["s1"]) == "At a glance:\n  s1"
    mark_random_weights(copy)  # idempotent
    assert len(list(copy.glob("modalscope-random-weights*"))) == 1


@pytest.mark.parametrize("n_layers, dtick", [(4, 1), (16, 1), (32, 2), (80, 5)])
def test_layer_axes_tick_whole_layers_only(n_layers, dtick):
    from modalscope.figures.histograms import figure1, figure1_static
    from modalscope.figures.significance import figure_significant
    from modalscope.figures.trend import figure2

    layer = np.repeat(np.arange(n_layers), 3)
    neurons = pd.DataFrame({"site": "mlp", "layer": layer, "neuron": np.tile(np.arange(3), n_layers),
                            "mean_diff": np.linspace(-1, 1, layer.size), "t_value": np.linspace(-4, 4, layer.size),
                            "q_value": 0.5})
    layers = pd.DataFrame({"site": "mlp", "layer": np.arange(n_layers), "mean_diff": 0.1, "ci_low": 0.0,
                           "ci_high": 0.2, "n_neurons": 3})
    counts = pd.DataFrame({"site": "mlp", "stat": "max", "layer": np.arange(n_layers), "n_text_preferring": 1,
                           "n_image_preferring": 2, "n_neurons": 3})
    axes = [figure2(layers, {"slope": 0.0, "intercept": 0.1, "r2": 0.0}, "mlp").layout.xaxis,
            figure_significant(counts, "mlp", ["max"]).layout.xaxis,
            figure1_static(figure1(neurons, "mlp")).layout.yaxis]
    for axis in axes:
        assert (axis.tick0, axis.dtick, axis.tickformat) == (0, dtick, "d")
