"""`modalscope demo` end to end: every output file, its columns, finite values, row counts,
and the stage commands alone on the finished folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from cli_run import modalscope
from modalscope.data.manifest import MANIFEST

pytestmark = pytest.mark.slow

TABLE_COLUMNS = {
    "table1_activations": ["input_index", "pair_id", "site", "modality", "layer", "neuron",
                           "max_activation", "mean_activation"],
    "table2_differences": ["input_index", "pair_id", "site", "layer", "neuron", "delta"],
    "table3_neurons": ["site", "layer", "neuron", "n", "mean_diff", "sd_diff", "t_value",
                       "p_value", "q_value", "cohen_d"],
    "layers": ["site", "layer", "mean_diff", "ci_low", "ci_high", "n_neurons"],
}
N_PAIRS = 48
LAYERS, WIDTHS = 4, {"residual": 64, "mlp": 176}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    # Without the browser's PNG/SVG copies (~20 s): tests/figures/test_figures.py writes those.
    done = modalscope("demo", "--model", "tiny", "--out", str(out), "--num-pairs", str(N_PAIRS), "--quiet", "--no-png")
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]  # --quiet: how many files, not each path (the report links them)
    assert first.startswith(f"study written to {out} in ") and first.endswith(" figures")
    assert "  figure  " not in done.stdout and f"  report  {out / 'report.html'}" in done.stdout
    return out


def test_demo_writes_every_output_with_its_columns(demo):
    tables = demo / "tables"
    for name, columns in TABLE_COLUMNS.items():
        frame = pd.read_parquet(tables / f"{name}.parquet")
        assert list(frame.columns[: len(columns)]) == columns, name
        numeric = frame.select_dtypes("number").drop(columns=["p_value", "q_value"], errors="ignore")
        assert np.isfinite(numeric.to_numpy(dtype=float)).all(), name
    summary = json.loads((tables / "summary.json").read_text())
    assert set(summary) == set(WIDTHS)
    for site in WIDTHS:
        assert {"slope", "intercept", "r2"} <= set(summary[site])
        assert 0.0 <= summary[site]["r2"] <= 1.0
        for fig in (f"figure1_{site}.html", f"figure2_{site}.html"):
            html = (demo / "figures" / fig).read_text()
            assert "<script src=" not in html  # plotly.js embedded, works offline
    assert (demo / MANIFEST).exists() and (demo / "study.json").exists()
    assert (demo / "assets/tiny-llava/model.safetensors").exists()
    assert (demo / "assets/coco/annotations/captions_demo.json").exists()
    # the drawn world's labels make the demo a concept study: its report says what they show
    assert (tables / "concepts.parquet").exists()
    page = (demo / "report.html").read_text(encoding="utf-8")
    for site in WIDTHS:
        assert summary[site]["concepts"]["n_concepts"] > 0
        assert f"<li>{site}, concepts (max): " in page


def test_row_counts_are_consistent(demo):
    tables = demo / "tables"
    neurons = sum(WIDTHS.values())
    t1 = pd.read_parquet(tables / "table1_activations.parquet")
    t2 = pd.read_parquet(tables / "table2_differences.parquet")
    t3 = pd.read_parquet(tables / "table3_neurons.parquet")
    assert len(t1) == N_PAIRS * 2 * LAYERS * neurons
    assert len(t2) == N_PAIRS * LAYERS * neurons
    assert len(t3) == LAYERS * neurons
    assert (t3["n"] == N_PAIRS).all()
    assert len(pd.read_parquet(tables / "layers.parquet")) == LAYERS * len(WIDTHS)


def test_tables_agree_with_each_other_and_the_store(demo):
    tables = demo / "tables"
    t1 = pd.read_parquet(tables / "table1_activations.parquet")
    t2 = pd.read_parquet(tables / "table2_differences.parquet")
    wide = t1.pivot_table(index=["input_index", "site", "layer", "neuron"], columns="modality",
                          values="max_activation", observed=True)
    merged = t2.set_index(["input_index", "site", "layer", "neuron"]).join(wide)
    np.testing.assert_allclose(merged["delta"], merged["text"] - merged["image"], rtol=1e-6, atol=1e-6)
    t3 = pd.read_parquet(tables / "table3_neurons.parquet")
    per_neuron = t2.groupby(["site", "layer", "neuron"], observed=True)["delta"].mean()
    t3 = t3.set_index(["site", "layer", "neuron"])
    np.testing.assert_allclose(t3.loc[per_neuron.index, "mean_diff"], per_neuron, rtol=1e-5, atol=1e-5)
    group = zarr.open_group(str(demo / "activations.zarr"), mode="r")
    stored = group["mlp/text/max"][:]
    assert stored.shape == (N_PAIRS, LAYERS, WIDTHS["mlp"])
    assert group["mlp/text/max"].metadata.dimension_names == ("input", "layer", "neuron")
    row = t1[(t1.site == "mlp") & (t1.modality == "text") & (t1.input_index == 7) & (t1.layer == 2)]
    np.testing.assert_array_equal(row.sort_values("neuron")["max_activation"], stored[7, 2])
    attrs = group.attrs
    for key in ("model", "weights", "dtype", "chat_template", "tokens", "seed", "manifest_hash", "versions"):
        assert key in attrs, key
    manifest = pd.read_parquet(demo / MANIFEST)
    assert len(manifest) == N_PAIRS and list(manifest["input_index"]) == list(range(N_PAIRS))
    ids = t2.drop_duplicates("input_index").set_index("input_index")["pair_id"].astype(str)
    assert (ids.sort_index().to_numpy() == manifest["pair_id"].to_numpy()).all()


def test_rerun_reuses_manifest_and_store(demo):
    before = (demo / MANIFEST).read_bytes()
    done = modalscope("demo", "--model", "tiny", "--out", str(demo), "--num-pairs", str(N_PAIRS), "--quiet", "--no-png")
    assert done.returncode == 0, done.stderr
    assert (demo / MANIFEST).read_bytes() == before
    assert zarr.open_group(str(demo / "activations.zarr"), mode="r").attrs["n_done"] == N_PAIRS


def test_stage_commands_run_alone_on_an_existing_study(demo):
    t3_before = pd.read_parquet(demo / "tables/table3_neurons.parquet")
    assert modalscope("analyze", str(demo)).returncode == 0
    pd.testing.assert_frame_equal(pd.read_parquet(demo / "tables/table3_neurons.parquet"), t3_before)
    (demo / "figures/figure2_mlp.html").unlink()
    assert modalscope("plot", str(demo), "--no-png").returncode == 0
    assert (demo / "figures/figure2_mlp.html").exists()
    done = modalscope("export", str(demo), "--layers", "1-2", "--neurons", "0,5", "--sites", "mlp", "--csv")
    assert done.returncode == 0, done.stderr
    part = pd.read_parquet(demo / "tables/table2_differences_export.parquet")
    assert set(part["layer"]) == {1, 2} and set(part["neuron"]) == {0, 5}
    assert len(part) == N_PAIRS * 2 * 2
    assert (demo / "tables/table1_activations_export.csv").exists()


def test_resume_with_another_dtype_is_refused_in_one_line(demo):
    done = modalscope("extract", "--out", str(demo), "--dtype", "bfloat16", "--device", "cpu")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "different dtype" in lines[0], done.stderr


def test_help_names_every_command():
    done = modalscope("--help")
    for command in ("demo", "run", "extract", "analyze", "plot", "export"):
        assert command in done.stdout


def test_python_api_runs_a_study_from_jsonl(tmp_path, tiny_model_dir, coco_files):
    from modalscope import StudyConfig, run_study

    captions, images = coco_files
    data = json.loads(captions.read_text())
    lines = [json.dumps({"image": str(images / im["file_name"]), "caption": f"caption {im['id']}",
                         "id": f"p{im['id']}"}) for im in data["images"][:9]]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    config = StudyConfig(out_dir=tmp_path / "study", model=str(tiny_model_dir), jsonl=tmp_path / "pairs.jsonl",
                         num_pairs=7, batch_size=3, device="cpu", sites=("mlp",), png=False, progress=False)
    result = run_study(config)
    t3 = pd.read_parquet(result.out_dir / "tables/table3_neurons.parquet")
    assert set(t3["site"]) == {"mlp"} and (t3["n"] == 7).all()
    manifest = pd.read_parquet(result.out_dir / MANIFEST)
    assert manifest["pair_id"].str.startswith("p").all()
    assert zarr.open_group(str(result.out_dir / "activations.zarr"), mode="r")["mlp/text/max"].shape[0] == 7


def test_controls_are_written_by_default(demo):
    tables = demo / "tables"
    layers = pd.read_parquet(tables / "layers.parquet")
    for column in ("input_ci_low", "input_ci_high", "null_low", "null_high", "mean_diff_no_outliers",
                   "n_text_preferring", "n_image_preferring", "mean_diff_matched_max"):
        assert column in layers.columns, column
    assert (layers["input_ci_low"] <= layers["mean_diff"]).all()
    assert (layers["mean_diff"] <= layers["input_ci_high"]).all()
    assert (layers["null_low"] < 0).all() and (layers["null_high"] > 0).all()
    t3 = pd.read_parquet(tables / "table3_neurons.parquet")
    assert {"outlier", "p_perm", "cohen_d_matched_max", "q_value_matched_max", "xmodal_q"} <= set(t3.columns)
    assert not any(c.endswith(("_frac_active", "_quantile")) for c in t3.columns)  # opt-in reductions
    summary = json.loads((tables / "summary.json").read_text())["mlp"]
    assert summary["slope_ci_low"] <= summary["slope"] <= summary["slope_ci_high"]
    assert "matched_max" in summary["by_stat"]
    counts = pd.read_parquet(tables / "significant_neurons.parquet")
    assert set(counts["stat"]) >= {"max", "matched_max"}
    assert (demo / "tables/input_layer_means.parquet").exists()
    for name in ("significant_mlp.html", "figure2_mlp_matched_max.html", "figure1_residual_mean.html"):
        assert (demo / "figures" / name).exists(), name
    group = zarr.open_group(str(demo / "activations.zarr"), mode="r")
    assert group["mlp/image/matched_max"].shape == (N_PAIRS, LAYERS, WIDTHS["mlp"])
    assert group["mlp/image/max"].dtype == np.float16 and "image_text" not in group["mlp"]  # the defaults


def test_analyze_with_another_contrast(demo, tmp_path):
    done = modalscope("analyze", str(demo), "--contrast", "image-text", "--permutations", "200",
                      "--bootstrap", "200")  # the demo records text and image (image_text is opt-in)
    assert done.returncode == 0, done.stderr
    summary = json.loads((demo / "tables/summary.json").read_text())
    assert summary["mlp"]["contrast"] == "image - text"
    bad = modalscope("analyze", str(demo), "--contrast", "text-sound")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--contrast" in bad.stderr
