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
