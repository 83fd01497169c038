"""A study analysed under another --contrast says so everywhere (Table 2, every Δ table, the
figures, the report), the default keeps the report's text/image wording, and study.json
records the random streams the seed was split into."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from modalscope.config import StudyConfig
from modalscope.data.manifest import load_manifest
from modalscope.figures.export import plotlyjs_bytes
from modalscope.report.page import REPORT
from modalscope.study import analyze_stage, plot_stage, report_stage

CONTRAST = "image_text_caption-text"


def _page_text(html: str) -> str:
    """The report without the plotly.js bundle (its own strings are not the report's labels)."""
    return html.replace(plotlyjs_bytes().decode("utf-8"), "")


@pytest.fixture(scope="module")
def contrasted(small_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("contrasted") / "study"
    shutil.copytree(small_study, out)
    config = StudyConfig(out_dir=out, contrast=CONTRAST, n_perm=200, n_boot=200, png=False, progress=False)
    manifest, _ = load_manifest(out)
    analyze_stage(config, manifest)
    plot_stage(out, png=False)
    report_stage(out)
    return out


def test_table2_and_every_delta_table_hold_the_chosen_contrast(contrasted):
    tables = contrasted / "tables"
    t2 = pd.read_parquet(tables / "table2_differences.parquet")
    assert set(t2["contrast"].astype(str)) == {"image_text_caption - text"}
    group = zarr.open_group(str(contrasted / "activations.zarr"), mode="r")
    part = t2[(t2["site"].astype(str) == "mlp") & (t2["layer"] == 1)].sort_values(["input_index", "neuron"])
    expected = group["mlp/image_text_caption/max"][:, 1, :] - group["mlp/text/max"][:, 1, :]  # float32, by hand
    np.testing.assert_array_equal(part["delta"].to_numpy().reshape(expected.shape), expected)
    t1 = pd.read_parquet(tables / "table1_activations.parquet")
    assert set(t1["modality"].astype(str)) == {"text", "image", "image_text_caption"}  # Table 2 checks against it
    for name in ("table3_neurons", "layers", "significant_neurons", "input_layer_means"):
        assert set(pd.read_parquet(tables / f"{name}.parquet")["contrast"]) == {"image_text_caption - text"}, name
    summary = json.loads((tables / "summary.json").read_text())
    assert {entry["contrast"] for entry in summary.values()} == {"image_text_caption - text"}


def test_figures_and_report_name_both_streams_under_another_contrast(contrasted):
    for path in (contrasted / "figures").glob("*.html"):
        text = path.read_text(encoding="utf-8")
        assert "image_text_caption" in text, path.name
        assert "text-preferring" not in text and "image-preferring" not in text, path.name
    significant = (contrasted / "figures" / "significant_mlp.html").read_text(encoding="utf-8")
    assert "image_text_caption \\u003e text (max)" in significant or "image_text_caption > text (max)" in significant
    html = _page_text((contrasted / REPORT).read_text(encoding="utf-8"))
    assert "text-preferring" not in html and "image-preferring" not in html and "no preferred modality" not in html
    assert html.count("image_text_caption &gt; text (Δ &gt; 0)") == html.count(
        "text &gt; image_text_caption (Δ &lt; 0)") == 2  # the top-neuron tables of both sites
    assert "Image_text_caption or text?" in html
    assert "Δ = image_text_caption − text (positive: the neuron responds more to the image_text_caption" in html
    assert "max: image_text_caption &gt; text" in html  # the significant-counts table's columns
    glance = re.search(r'<section id="glance">.*?</section>', html, re.S).group(0)
    assert "image_text_caption &gt; text" in glance and "text &gt; image_text_caption" in glance


def test_default_contrast_keeps_the_text_preferring_wording(small_study):
    html = _page_text((small_study / REPORT).read_text(encoding="utf-8"))
    assert "Text or image?" in html and "text-preferring (Δ &gt; 0)" in html
    assert "max: text" in html and "image_text_caption &gt;" not in html
    significant = (small_study / "figures" / "significant_mlp.html").read_text(encoding="utf-8")
    assert "text-preferring (max)" in significant
    t2 = pd.read_parquet(small_study / "tables" / "table2_differences.parquet")
    assert set(t2["contrast"].astype(str)) == {"text - image"}


def test_study_json_records_the_seed_streams(small_study):
    seeds = json.loads((small_study / "study.json").read_text())["seeds"]
    assert seeds["seed"] == 0
    assert {name: (s["index"], s["entropy"], s["spawn_key"]) for name, s in seeds["streams"].items()} == {
        "shuffle": (0, 0, [0]), "sign_flips": (1, 0, [1]), "bootstrap": (2, 0, [2]),
        "alignment_bootstrap": (3, 0, [3]), "alignment_null": (4, 0, [4]),
        "xmodal_null": (5, 0, [5])}
    children = np.random.SeedSequence(0).spawn(6)  # numpy's own, to compare with
    for (name, entry), child in zip(seeds["streams"].items(), children):
        assert entry["spawn_key"] == list(child.spawn_key) and entry["entropy"] == child.entropy, name
