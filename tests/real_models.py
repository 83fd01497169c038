"""Where the tests find real hub repositories' small files (../shared/real-models)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REAL_MODELS = Path(os.environ.get("MODALSCOPE_REAL_MODELS")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "real-models")


def real_files(name: str) -> Path:
    """The folder of a hub repository's real files (config, tokenizer, processor, template; no
    weights). In CI they must be there: a missing folder fails instead of skipping."""
    folder = REAL_MODELS / name
    if not (folder / "config.json").is_file():
        message = (f"real model files expected in {folder} (../shared/real-models beside the "
                   "repository, or set MODALSCOPE_REAL_MODELS)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


def qwen2_vl_files(folder: Path) -> Path:
    """Qwen2-VL-7B-Instruct's files, as far as ../shared holds them: Qwen2.5-VL-7B's tokenizer,
    template and image processor (the same in both repositories) with Qwen2-VL's config.json
    (the decoder and token ids of Qwen2.5-VL-7B, the Qwen2-VL vision tower: full attention,
    `embed_dim` the ViT width, `hidden_size` its output)."""
    real = real_files("qwen2.5-vl")
    shutil.copytree(real, folder)
    config = json.loads((real / "config.json").read_text())
    config = dict(config, model_type="qwen2_vl", architectures=["Qwen2VLForConditionalGeneration"])
    config["vision_config"] = {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                               "hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                               "spatial_patch_size": 14, "temporal_patch_size": 2}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    processor = json.loads((real / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps(dict(processor, processor_class="Qwen2VLProcessor")))
    return folder


SMOLLM2_VOCAB = 49152  # SmolLM2's vocabulary; SmolVLM adds 128 tokens after it (ids 49152-49279)


def smollm2_tokenizer(vlm: Path, edit=None):
    """SmolLM2-135M-Instruct's tokenizer as far as SmolVLM-256M's files say: SmolVLM's tokenizer
    (SmolLM2's, with 128 tokens added) without the tokens it added. `edit(spec)` changes the
    tokenizer.json spec first (a tokenizer that reads something differently)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads((vlm / "tokenizer.json").read_text())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < SMOLLM2_VOCAB]
    if edit is not None:
        edit(spec)
    specials = {t["content"] for t in spec["added_tokens"]}
    names = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
             "unk_token": "<|endoftext|>"}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                   **{k: v for k, v in names.items() if v in specials})


def smollm2_base(vlm: Path, folder: Path, edit=None) -> Path:
    """A SmolLM2 base of a shrunk SmolVLM checkpoint `vlm`: its tokenizer (`smollm2_tokenizer`)
    and a LLaMA holding the VLM's own decoder weights, embedding and head cut to SmolLM2's
    vocabulary (so the base and the VLM agree on every text input)."""
    import torch
    from transformers import AutoModelForImageTextToText, LlamaForCausalLM

    smollm2_tokenizer(vlm, edit).save_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(vlm)
    config = model.config.text_config
    config.vocab_size = SMOLLM2_VOCAB
    base = LlamaForCausalLM(config)
    state = model.model.text_model.state_dict()
    state["embed_tokens.weight"] = state["embed_tokens.weight"][:SMOLLM2_VOCAB]
    base.model.load_state_dict(state)
    with torch.no_grad():
        base.lm_head.weight.copy_(model.lm_head.weight[:SMOLLM2_VOCAB])
    base.save_pretrained(folder)
    return folder
