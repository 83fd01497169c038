"""DIR/report.html on a small real study: one offline page with plotly.js once, the
provenance, skipped pairs, the headline figures, significant counts, the strongest neurons
each way and links to every table."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from plotly.offline import get_plotlyjs_version

from modalscope import cli
from modalscope.figures.assemble import StudyTables
from modalscope.figures.export import PLOTLYJS, plotlyjs_bytes
from modalscope.report import facts
from modalscope.report.page import REPORT
from modalscope.data.manifest import MANIFEST

SITES = ("residual", "mlp")
# Per site, in page order: Figure 2, Figure 1 of every layer (heatmap) then its slider, the counts,
# the cross-modal r per layer and the cohen_d vs xmodal_r scatter (Figure 3, the layer alignment, follows).
FIGURES = (("figure2", ""), ("figure1", "_all_layers"), ("figure1", ""), ("significant", ""), ("xmodal_r", ""),
           ("xmodal_scatter", ""))


def _links(html: str) -> list[str]:
    """src/href of the page itself (plotly.js's own strings, e.g. its logo's link, left out)."""
    return re.findall(r'(?:src|href)="([^"]*)"', html.replace(plotlyjs_bytes().decode("utf-8"), ""))


def test_run_study_writes_one_offline_page_with_plotlyjs_embedded_once(small_study):
    html = (small_study / REPORT).read_text(encoding="utf-8")
    assert html.count(f"plotly.js v{get_plotlyjs_version()}") == 1  # the bundle, once
    assert not re.search(r"<script[^>]*\bsrc=", html) and "<link" not in html
    graphs = re.findall(r'<div id="(fig-[^"]+)" class="plotly-graph-div"', html)
    assert graphs == [name for site in SITES for name in
                      [f"fig-{kind}_{site}{part}" for kind, part in FIGURES] + [f"fig-figure3_alignment_{site}"]]
    links = [link for link in _links(html) if not link.startswith(("#", "data:image/jpeg;base64,"))]  # thumbnails
    assert links, "no links to the tables"
    for link in links:
        assert "://" not in link and not link.startswith("/"), link  # relative: the folder can move
        assert (small_study / link).is_file(), link
    assert len(html) < 6_000_000


def test_report_links_every_table_and_figure(small_study):
    html = (small_study / REPORT).read_text(encoding="utf-8")
    linked = set(_links(html))
    for path in [*(small_study / "tables").iterdir(), small_study / MANIFEST, small_study / "study.json"]:
        assert path.relative_to(small_study).as_posix() in linked, path.name
    for path in (small_study / "figures").glob("*.html"):
        assert f"figures/{path.name}" in linked, path.name


def test_plot_keeps_the_figure_file_names_and_shares_one_plotlyjs(small_study):
    names = sorted(p.name for p in (small_study / "figures").iterdir())
    stats = ("mean", "matched_max", "frac_active", "quantile")
    expected = [PLOTLYJS] + [f"{kind}_{site}{suffix}.html" for site in SITES for kind in ("figure1", "figure2")
                             for suffix in ["", *(f"_{s}" for s in stats)]]
    expected += [f"significant_{site}.html" for site in SITES]
    expected += [f"xmodal_{kind}_{site}.html" for site in SITES for kind in ("r", "scatter")]
    expected += [f"figure3_alignment_{site}.html" for site in SITES]
    assert names == sorted(expected)
    html = (small_study / "figures" / "figure2_mlp.html").read_text()
    assert re.findall(r'<script[^>]*\bsrc="([^"]+)"', html) == [PLOTLYJS] and len(html) < 100_000


def test_provenance_names_model_settings_pairs_versions_and_wall_time(small_study, tiny_model_dir):
    tables = StudyTables.read(small_study)
    prov = facts.provenance(small_study, tables)
    study = dict(prov.study)
    assert study["model"] == str(tiny_model_dir)
    assert study["dtype"] == "float32" and study["token scope"] == "content"
    assert study["sites"] == "residual, mlp" and study["seed of the shuffle"] == "0"
    assert study["pairs used"] == "16" and study["pairs skipped"] == "0"
    assert study["contrast Δ"] == "text - image"
    assert len(study["weights (commit or sha256 of local files)"]) == 64
    assert {"extract", "analyze", "plot"} <= {stage for stage, _ in prov.timings}
    versions = {lib: (rec, ana) for lib, rec, ana in prov.versions}
    assert versions["torch"][0] == versions["torch"][1] != "—"
    assert "{caption}" in prov.prompts["text"] and "<image>" in prov.prompts["image"]
    html = (small_study / REPORT).read_text(encoding="utf-8")
    for text in ("pairs used", "Wall time", "transformers", "chat template", "USER: &lt;image&gt;",
                 str(tiny_model_dir)):
        assert text in html, text


def test_top_neurons_are_the_largest_t_each_way(small_study):
    tables = StudyTables.read(small_study)
    neurons = pd.read_parquet(small_study / "tables/table3_neurons.parquet")
    for site in SITES:
        text, image = facts.top_neurons(tables, site, "max")
        mine = neurons[neurons["site"] == site].dropna(subset=["t_value"])
        assert len(text) == len(image) == facts.TOP_K
        assert list(text["t_value"]) == sorted(mine["t_value"].nlargest(facts.TOP_K), reverse=True)
        assert list(image["t_value"]) == sorted(mine["t_value"].nsmallest(facts.TOP_K))
        assert (text["mean_diff"] > 0).all() and (image["mean_diff"] < 0).all()
        assert {"layer", "neuron", "t_value", "q_value", "cohen_d"} <= set(text.columns)
    html = (small_study / REPORT).read_text(encoding="utf-8")
    assert html.count("text-preferring (Δ &gt; 0)") == html.count("image-preferring (Δ &lt; 0)") == len(SITES)


def test_significant_counts_per_layer_and_direction_match_the_table(small_study):
    tables = StudyTables.read(small_study)
    counts = pd.read_parquet(small_study / "tables/significant_neurons.parquet")
    for site in SITES:
        table = facts.significant_counts(tables, site)
        rows = counts[(counts["site"] == site) & (counts["stat"] == "max")].sort_values("layer")
        assert list(table["max: text"][:-1]) == list(rows["n_text_preferring"])
        assert list(table["max: image"][:-1]) == list(rows["n_image_preferring"])
        assert table.loc["all layers", "max: image"] == rows["n_image_preferring"].sum()
        assert table.loc["all layers", "neurons"] == rows["n_neurons"].sum()


@pytest.fixture()
def copied_study(small_study, tmp_path) -> Path:
    out = tmp_path / "study"
    shutil.copytree(small_study, out)
    return out


def test_report_command_alone_counts_skipped_pairs_and_escapes_them(copied_study, capsys):
    (copied_study / REPORT).unlink()
    pd.DataFrame({"pair_id": ["7", "9", "11"], "image_path": ["a.jpg", "b.jpg", "c.jpg"],
                  "caption": ["<script>alert(1)</script>", "a cat", "a dog"],
                  "reason": ["unreadable image", "unreadable image", "empty caption"]}
                 ).to_parquet(copied_study / facts.SKIPPED)
    assert cli.main(["report", str(copied_study)]) == 0
    assert capsys.readouterr().out.strip() == f"report  {copied_study / REPORT}"
    html = (copied_study / REPORT).read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Skipped pairs: 3" in html and "unreadable image" in html
    assert dict(facts.provenance(copied_study, StudyTables.read(copied_study)).study)["pairs skipped"] == "3"
    assert 'href="skipped.parquet"' in html


def test_report_without_tables_is_a_one_line_error(tmp_path, capsys, copied_study):
    assert cli.main(["report", str(tmp_path)]) == 2  # no study at all: make one
    assert capsys.readouterr().err == (f"modalscope: error: {tmp_path}: no study here (no tables, no "
                                       f"activations.zarr); make one with `modalscope run --out {tmp_path} ...`\n")
    (copied_study / "tables/summary.json").unlink()  # recorded, not analysed: analyze it
    assert cli.main(["report", str(copied_study)]) == 2
    assert capsys.readouterr().err == (f"modalscope: error: {copied_study / 'tables'}: no summary.json; run "
                                       f"`modalscope analyze {copied_study}` first\n")


def test_report_leads_with_the_chosen_reduction(copied_study):
    assert cli.main(["report", str(copied_study), "--stat", "matched_max"]) == 0
    html = (copied_study / REPORT).read_text(encoding="utf-8")
    assert "headline reduction over tokens: matched_max" in html
    assert "Top 20 neurons each way (reduction matched_max, by t)" in html


@pytest.mark.skipif(not os.environ.get("CI"), reason="elsewhere the browser tests may skip; in CI they must run")
def test_ci_has_what_the_browser_tests_need():
    """`make test` installs Debian's chromium when missing, so in CI the browser and PNG/SVG
    tests never skip silently."""
    from modalscope.figures.export import find_browser

    assert find_browser() is not None, "no Chromium: the Makefile's `chromium` step did not install it"
    import playwright.sync_api  # noqa: F401  (from the dev extra)
