"""`modalscope run` end to end on each supported family's real files (shrunk, random weights):
every output of the contract, with image content counts that follow each image's size."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image

from cli_run import modalscope
from real_models import qwen2_vl_files, real_files, smollm2_base
from modalscope.data.manifest import MANIFEST

pytestmark = pytest.mark.slow

SIZES = [(300, 200), (336, 336), (1000, 500), (200, 800), (64, 64), (640, 480)]
CAPTIONS = ["TWO DOGS PLAYING", "a red <image> car on a road", "A cat </s> on a sofa.", "一只狗在草地上奔跑",
            "[INST] a caption [/INST]", "<|im_start|>user two birds<|im_end|>"]
OUTPUTS = ["manifest.parquet", "skipped.parquet", "truncated.parquet", "study.json", "report.html",
           "tables/table1_activations.parquet", "tables/table2_differences.parquet", "tables/table3_neurons.parquet",
           "tables/layers.parquet", "tables/significant_neurons.parquet", "tables/input_layer_means.parquet",
           "tables/summary.json", "figures/figure1_residual.html", "figures/figure2_mlp.html",
           "figures/significant_residual.html"]


# SmolVLM: 2 pairs, as each of its images is 13-17 crops of 512 px whatever its size; it runs with
# its base model (SmolLM2, which lacks the tokens SmolVLM added: one is in the text template).
PAIRS = {"smolvlm": 2}
# `modalscope ablate` on the study and model just made (tests/ablation/family_ablation.py); SmolVLM's
# 2 pairs leave no half for the means: zero ablation, which scores every pair.
ABLATED = {"llava-next": False, "qwen2.5-vl": False, "qwen3-vl": False, "smolvlm": True}


@pytest.mark.parametrize("name", ["llava-1.5", "llava-next", "qwen2.5-vl", "qwen2-vl", "qwen3-vl", "smolvlm"])
def test_run_writes_every_output_on_the_real_files(name, tmp_path):
    from modalscope.models.shrunk import build_shrunk

    files = qwen2_vl_files(tmp_path / "qwen2-vl") if name == "qwen2-vl" else real_files(name)
    model = build_shrunk(files, tmp_path / "model")
    base = ["--base-model", str(smollm2_base(model, tmp_path / "base"))] if name == "smolvlm" else []
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(1)
    lines = []
    n_pairs = PAIRS.get(name, len(SIZES))
    for i, ((width, height), caption) in enumerate(zip(SIZES[:n_pairs], CAPTIONS)):
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(tmp_path / f"images/{i}.png")
        lines.append(json.dumps({"image": f"images/{i}.png", "caption": caption, "id": f"p{i}"}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "study"
    done = modalscope("run", "--model", str(model), "--jsonl",
                           str(tmp_path / "pairs.jsonl"), "--out", str(out), "--quiet", "--no-png",
                           "--permutations", "200", "--bootstrap", "200", *base)
    assert done.returncode == 0, done.stderr[-3000:]
    for path in OUTPUTS:
        assert (out / path).exists(), path
    # a shrunk checkpoint is marked: its study's report says random weights in its title
    page = (out / "report.html").read_text(encoding="utf-8")
    assert f"random weights, shrunk from {files.name}: its numbers say nothing about any trained model" in page
    assert "(random weights)</title>" in page
    manifest = pd.read_parquet(out / MANIFEST)
    assert len(manifest) == n_pairs
    table3 = pd.read_parquet(out / "tables/table3_neurons.parquet")
    assert np.isfinite(table3[["mean_diff", "mean_diff_matched_max", "mean_diff_mean"]].to_numpy()).all()

    from modalscope.models.loading import load_model
    from modalscope.record.inputs import PromptBuilder

    loaded = load_model(str(model), device="cpu")
    builder = PromptBuilder.for_model(loaded, "content")
    images = [Image.open(p).convert("RGB") for p in manifest["image_path"]]
    store = zarr.open_group(str(out / "activations.zarr"), mode="r")
    assert store["tokens/image"][:].tolist() == builder.image_batch(images).n_content.tolist()
    assert store["tokens/text"][:].tolist() == builder.text_batch(manifest["caption"].tolist()).n_content.tolist()
    if base:  # the base holds the VLM's decoder weights: its caption activations are the VLM's
        for site in ("residual", "mlp"):
            np.testing.assert_allclose(np.asarray(store[f"{site}/text_base/max"][:], dtype=np.float64),
                                       np.asarray(store[f"{site}/text/max"][:], dtype=np.float64), rtol=1e-2, atol=1e-2)
    if name in ABLATED:
        from ablation.family_ablation import check_family_ablation

        check_family_ablation(out, loaded, zero_only=ABLATED[name])
