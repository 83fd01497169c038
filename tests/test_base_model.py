"""The base-LLM contrast: a tiny base Llama and a tiny LLaVA whose language model is that base
with only layers >= 2 changed. Δ = text - text_base must be exactly 0 in layers 0-1 (the same
weights see the same token ids) and not 0 after."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cli_run import modalscope

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_and_vlm(tiny_model_dir: Path, tmp_path_factory) -> tuple[Path, Path]:
    from transformers import AutoTokenizer, LlamaForCausalLM, LlavaForConditionalGeneration

    root = tmp_path_factory.mktemp("base")
    vlm = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir)
    base = LlamaForCausalLM(vlm.config.text_config).eval()
    base.model.load_state_dict(vlm.model.language_model.state_dict())
    base.lm_head.load_state_dict(vlm.lm_head.state_dict())
    base.save_pretrained(root / "base")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(root / "base")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in vlm.model.language_model.layers[2:]:  # "fine-tuned" from layer 2 on
            for weight in (layer.mlp.up_proj.weight, layer.self_attn.o_proj.weight):
                weight.add_(0.05 * torch.randn(weight.shape, generator=gen))
    shutil.copytree(tiny_model_dir, root / "vlm")
    vlm.save_pretrained(root / "vlm")
    return root / "base", root / "vlm"


def test_text_minus_text_base_is_zero_before_the_changed_layers(base_and_vlm, coco_files, tmp_path):
    base, vlm = base_and_vlm
    captions, images = coco_files
    out = tmp_path / "study"
    done = modalscope("run", "--model", str(vlm), "--base-model", str(base),
                           "--captions", str(captions), "--images", str(images), "--num-pairs", "12",
                           "--contrast", "text-text_base", "--out", str(out), "--quiet", "--no-png",
                           "--permutations", "200", "--bootstrap", "200", "--conditions", "text,image")
    assert done.returncode == 0, done.stderr[-3000:]
    t3 = pd.read_parquet(out / "tables/table3_neurons.parquet")
    assert (t3["contrast"] == "text - text_base").all()
    for stat in ("", "_mean", "_matched_max"):
        early = t3[t3["layer"] < 2][f"mean_diff{stat}"].to_numpy()
        late = t3[t3["layer"] >= 2][f"mean_diff{stat}"].to_numpy()
        assert (early == 0).all(), stat
        assert (np.abs(late) > 0).mean() > 0.9, stat
    attrs = json.loads((out / "activations.zarr/zarr.json").read_text())["attributes"]
    assert attrs["base_model"]["model"] == str(base.resolve()) and "text_base" in attrs["conditions"]
    # the study's contrast is already Δ_base: no second copy of it
    assert not [c for c in t3.columns if c.endswith("_vs_base")]
    assert not (out / "tables/layers_vs_base.parquet").exists()
    assert "vs_base" not in json.loads((out / "tables/summary.json").read_text())["mlp"]


def test_a_base_with_other_widths_or_another_tokenizer_is_refused_in_one_line(base_and_vlm, coco_files, tmp_path,
                                                                              real_llava_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    base, vlm = base_and_vlm
    captions, images = coco_files
    narrow = tmp_path / "narrow"
    config = LlamaConfig.from_pretrained(base)
    config.intermediate_size = 96
    LlamaForCausalLM(config).save_pretrained(narrow)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / name, narrow / name)
    other_tokenizer = tmp_path / "other-tokenizer"
    shutil.copytree(base, other_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
        if (real_llava_dir / name).exists():
            shutil.copy(real_llava_dir / name, other_tokenizer / name)
    for candidate, words in ((narrow, "layers of widths"), (other_tokenizer, "reads"), (vlm, "a vision-language model")):
        out = tmp_path / f"study-{candidate.name}"
        done = modalscope("run", "--model", str(vlm), "--base-model",
                               str(candidate), "--captions", str(captions), "--images", str(images),
                               "--num-pairs", "4", "--out", str(out), "--quiet")
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
        assert words in done.stderr, done.stderr
        assert not out.exists()  # refused before anything is written


# The default contrast (text - image) with a base model: Δ_base = text - text_base beside it --------
LATE = 3  # a layer after the changed ones (the tiny LLaVA has 4)


@pytest.fixture(scope="module")
def default_study(base_and_vlm, coco_files, tmp_path_factory) -> Path:
    base, vlm = base_and_vlm
    captions, images = coco_files
    out = tmp_path_factory.mktemp("default") / "study"
    done = modalscope("run", "--model", str(vlm), "--base-model", str(base),
                           "--captions", str(captions), "--images", str(images), "--num-pairs", "12",
                           "--out", str(out), "--quiet", "--no-png", "--permutations", "200", "--bootstrap", "200",
                           "--conditions", "text,image", "--stats", "max,mean,matched_max,frac_active,quantile",
                           "--store-dtype", "float32")  # every reduction, float32: the golden values pin them
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _stream(out: Path, site: str, stream: str, stat: str, layer: int) -> np.ndarray:
    """[input, neuron] of one layer, read from the zarr store directly (float64)."""
    import zarr

    group = zarr.open_group(str(out / "activations.zarr"), mode="r")
    n = int(group.attrs["n_done"])
    return np.asarray(group[f"{site}/{stream}/{stat}"][:n, layer, :], dtype=np.float64)


def test_the_main_columns_stay_text_minus_image(default_study):
    from scipy import stats

    t3 = pd.read_parquet(default_study / "tables/table3_neurons.parquet")
    assert (t3["contrast"] == "text - image").all() and (t3["contrast_vs_base"] == "text - text_base").all()
    for site in ("mlp", "residual"):
        rows = t3[(t3["site"] == site) & (t3["layer"] == LATE)].sort_values("neuron")
        delta = _stream(default_study, site, "text", "max", LATE) - _stream(default_study, site, "image", "max", LATE)
        np.testing.assert_allclose(rows["mean_diff"], delta.mean(axis=0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(rows["t_value"], stats.ttest_1samp(delta, 0.0).statistic, rtol=1e-6)
        delta = (_stream(default_study, site, "text", "mean", 1) - _stream(default_study, site, "image", "mean", 1))
        rows = t3[(t3["site"] == site) & (t3["layer"] == 1)].sort_values("neuron")
        np.testing.assert_allclose(rows["t_value_mean"], stats.ttest_1samp(delta, 0.0).statistic, rtol=1e-6)
    layers = pd.read_parquet(default_study / "tables/layers.parquet")
    assert (layers["contrast"] == "text - image").all()
    assert not [c for c in layers.columns if "vs_base" in c]


def test_delta_base_columns_are_zero_before_the_changed_layers_and_match_scipy_after(default_study):
    from scipy import stats

    t3 = pd.read_parquet(default_study / "tables/table3_neurons.parquet")
    for stat in ("", "_mean", "_matched_max", "_frac_active", "_quantile"):
        for name in ("mean_diff", "sd_diff", "t_value", "p_value", "q_value", "cohen_d", "p_perm"):
            assert f"{name}{stat}_vs_base" in t3.columns, (name, stat)
        early = t3[t3["layer"] < 2][f"mean_diff{stat}_vs_base"].to_numpy()
        late = t3[t3["layer"] >= 2][f"mean_diff{stat}_vs_base"].to_numpy()
        assert (early == 0).all(), stat
        assert (np.abs(late) > 0).mean() > 0.9, stat
    for site in ("mlp", "residual"):
        rows = t3[(t3["site"] == site) & (t3["layer"] == LATE)].sort_values("neuron")
        delta = (_stream(default_study, site, "text", "max", LATE)
                 - _stream(default_study, site, "text_base", "max", LATE))
        test = stats.ttest_1samp(delta, 0.0)
        np.testing.assert_allclose(rows["mean_diff_vs_base"], delta.mean(axis=0), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(rows["t_value_vs_base"], test.statistic, rtol=1e-6)
        np.testing.assert_allclose(rows["p_student_vs_base"], test.pvalue, rtol=1e-6, atol=1e-300)
        # FDR over all the site's neurons (layers together), as for the main contrast
        whole = t3[t3["site"] == site]
        p = whole["p_value_vs_base"].to_numpy()
        expected = np.full(p.shape, np.nan)
        expected[np.isfinite(p)] = stats.false_discovery_control(p[np.isfinite(p)], method="bh")
        np.testing.assert_allclose(whole["q_value_vs_base"], expected, rtol=1e-9, equal_nan=True)
        assert whole[whole["layer"] < 2]["t_value_vs_base"].isna().all()  # Δ_base ≡ 0: no test


def test_delta_base_layer_tables_summary_figure_and_report(default_study, base_and_vlm):
    base, _ = base_and_vlm
    tables = default_study / "tables"
    layers = pd.read_parquet(tables / "layers.parquet")
    vs_base = pd.read_parquet(tables / "layers_vs_base.parquet")
    # the same columns, less the cross-modal ones: text and text_base are one modality (issue 24)
    assert list(vs_base.columns) == [c for c in layers.columns if not c.startswith("xmodal")]
    assert any(c.startswith("xmodal") for c in layers.columns)
    assert (vs_base["contrast"] == "text - text_base").all()
    t3 = pd.read_parquet(tables / "table3_neurons.parquet")
    by_layer = t3.groupby(["site", "layer"])["mean_diff_vs_base"].mean()
    np.testing.assert_allclose(vs_base.set_index(["site", "layer"])["mean_diff"], by_layer.loc[
        vs_base.set_index(["site", "layer"]).index], rtol=1e-9, atol=1e-15)
    assert (vs_base[vs_base["layer"] < 2][["mean_diff", "input_ci_low", "input_ci_high"]] == 0).all().all()
    q, d = t3["q_value_vs_base"], t3["mean_diff_vs_base"]
    counts = vs_base.groupby("site")[["n_text_preferring", "n_image_preferring"]].sum()
    for site in ("mlp", "residual"):
        mine = t3["site"] == site
        assert counts.loc[site, "n_text_preferring"] == ((q < 0.05) & (d > 0) & mine).sum()
        assert counts.loc[site, "n_image_preferring"] == ((q < 0.05) & (d < 0) & mine).sum()

    means = pd.read_parquet(tables / "input_layer_means_vs_base.parquet")
    assert (means["contrast"] == "text - text_base").all()
    late = means[(means["site"] == "mlp") & (means["stat"] == "max") & (means["layer"] == LATE)]
    delta = _stream(default_study, "mlp", "text", "max", LATE) - _stream(default_study, "mlp", "text_base", "max", LATE)
    np.testing.assert_allclose(late.sort_values("input_index")["mean_delta"], delta.mean(axis=1), rtol=1e-9)
    main = pd.read_parquet(tables / "input_layer_means.parquet")
    assert (main["contrast"] == "text - image").all()

    summary = json.loads((tables / "summary.json").read_text())
    for site, entry in summary.items():
        assert entry["contrast"] == "text - image"
        other = entry["vs_base"]
        assert other["contrast"] == "text - text_base"
        assert set(other) == set(entry) - {"vs_base", "alignment"}  # alignment: of the two modalities only
        assert set(other["by_stat"]) == set(entry["by_stat"])
        from scipy import stats

        rows = vs_base[vs_base["site"] == site].sort_values("layer")
        fit = stats.linregress(rows["layer"], rows["mean_diff"])
        assert other["slope"] == pytest.approx(fit.slope, rel=1e-9)
        assert other["slope_ci_low"] <= other["slope"] <= other["slope_ci_high"]

    for site in ("mlp", "residual"):
        figure = (default_study / f"figures/figure2_{site}_vs_base.html").read_text()
        # plotly writes the figure's JSON with non-ASCII characters escaped
        assert "text − text_base" in figure or "text \\u2212 text_base" in figure
        assert "text-preferring" not in figure and "text \\u003e text_base" in figure  # "text > text_base"
    report = (default_study / "report.html").read_text()
    assert report.count("The same text through the VLM and its base LM (Δ_base = text − text_base)") == 2  # one per site
    assert str(base.resolve()) in report
    assert "fig-figure2_mlp_vs_base" in report
    assert "Δ_base is exactly 0 in every neuron of layers 0–1." in report

    from modalscope.figures.assemble import StudyTables
    from modalscope.report.facts import forgetting, provenance

    read = StudyTables.read(default_study)
    assert dict(provenance(default_study, read).study)["base model"] == str(base.resolve())
    for site in ("mlp", "residual"):
        facts = forgetting(default_study, read, site, "max")
        rows = vs_base[vs_base["site"] == site].sort_values("layer")
        excludes = rows[(rows["input_ci_low"] > 0) | (rows["input_ci_high"] < 0)]["layer"]
        assert facts.first_nonzero_layer == 2 and facts.first_layer_ci_excludes_0 == excludes.min()
        assert (facts.n_up, facts.n_down) == tuple(counts.loc[site, ["n_text_preferring", "n_image_preferring"]])
        assert facts.slope == pytest.approx(summary[site]["vs_base"]["slope"], rel=1e-12)
        assert f"{facts.n_up:,} of {facts.n_neurons:,} neurons have q_vs_base" in report


def test_the_base_contrast_outputs_equal_the_golden_ones(default_study):
    from test_golden_outputs import check_golden

    check_golden(default_study, "base_contrast")
