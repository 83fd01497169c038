"""A random-weight checkpoint built from a real model's own files, shrunk to run on a laptop.

Why: the tiny demo model has a home-built tokenizer and template, which hide what real ones
do (SentencePiece merges that change with the preceding text, special-token strings inside
captions, BOS conventions). This keeps everything a study reads from a real hub repository
(vocabulary, special-token ids, tokenizer, processor settings, image and patch sizes, chat
template, context length) and shrinks only depths and widths, so the weights fit in memory
and a forward takes milliseconds. The result loads through `from_pretrained` like the real
repository would; only the numbers in its weights are random.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText
from transformers.utils import logging as hf_logging

from modalscope.models.tiny import write_checkpoint

# Files of a hub repository that are not the model's inputs side: not copied.
NOT_COPIED = {"config.json", "README.md", "SOURCE.txt", "LICENSE", "LICENSE.txt", ".gitattributes"}
COMPLETE_MARKER = "model.safetensors"


@dataclass(frozen=True)
class ShrunkSizes:
    """Depths and widths of the shrunk decoder and vision tower (everything else is kept)."""

    layers: int = 2
    hidden_size: int = 64
    intermediate_size: int = 176
    heads: int = 4
    vision_layers: int = 2
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_heads: int = 2


def shrink_llava_like(config, sizes: ShrunkSizes) -> None:
    """A LLaMA/Mistral-style `text_config` and a CLIP-style `vision_config`, made small in place."""
    text = config.text_config
    text.num_hidden_layers = sizes.layers
    text.hidden_size = sizes.hidden_size
    text.intermediate_size = sizes.intermediate_size
    text.num_attention_heads = text.num_key_value_heads = sizes.heads
    text.head_dim = sizes.hidden_size // sizes.heads
    vision = config.vision_config
    vision.num_hidden_layers = sizes.vision_layers
    vision.hidden_size = sizes.vision_hidden_size
    vision.intermediate_size = sizes.vision_intermediate_size
    vision.num_attention_heads = sizes.vision_heads
    if hasattr(vision, "projection_dim"):
        vision.projection_dim = sizes.vision_hidden_size


def shrunk_config(real_dir: Path, sizes: ShrunkSizes = ShrunkSizes()):
    """The real config with only its depths and widths replaced (by its family's `shrink`)."""
    from modalscope.models import adapter_for

    config = AutoConfig.from_pretrained(real_dir)
    (adapter_for(config.model_type).shrink or shrink_llava_like)(config, sizes)
    return config


def build_shrunk(real_dir: Path, out_dir: Path, seed: int = 0, sizes: ShrunkSizes = ShrunkSizes()) -> Path:
    """Write the checkpoint once to `out_dir` (built aside, then renamed): random weights from
    `seed`, and every tokenizer, processor and template file of `real_dir` copied unchanged."""
    real_dir, out_dir = Path(real_dir), Path(out_dir)
    if (out_dir / COMPLETE_MARKER).exists():
        return out_dir
    hf_logging.disable_progress_bar()
    config = shrunk_config(real_dir, sizes)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        for path in sorted(real_dir.iterdir()):
            if path.is_file() and path.name not in NOT_COPIED and path.suffix != ".safetensors":
                shutil.copy2(path, folder / path.name)

    return write_checkpoint(out_dir, write)
