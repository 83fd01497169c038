"""The base-LLM contrast: a tiny base Llama and a tiny LLaVA whose language model is that base
with only layers >= 2 changed. Δ = text - text_base must be exactly 0 in layers 0-1 (the same
weights see the same token ids) and not 0 after."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

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
    done = subprocess.run([sys.executable, "-m", "modalscope", "run", "--model", str(vlm), "--base-model", str(base),
                           "--captions", str(captions), "--images", str(images), "--num-pairs", "12",
                           "--contrast", "text-text_base", "--out", str(out), "--quiet", "--no-png",
                           "--permutations", "200", "--bootstrap", "200", "--conditions", "text,image"],
                          capture_output=True, text=True, timeout=600)
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
        done = subprocess.run([sys.executable, "-m", "modalscope", "run", "--model", str(vlm), "--base-model",
                               str(candidate), "--captions", str(captions), "--images", str(images),
                               "--num-pairs", "4", "--out", str(out), "--quiet"],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
        assert words in done.stderr, done.stderr
        assert not out.exists()  # refused before anything is written
