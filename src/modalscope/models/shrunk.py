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

from modalscope.demo import mark_random_weights
from modalscope.models.checkpoint_folders import COMPLETE_MARKER, write_checkpoint

# Files of a hub repository that are not the model's inputs side: not copied.
NOT_COPIED = {"config.json", "README.md", "SOURCE.txt", "LICENSE", "LICENSE.txt", ".gitattributes"}


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


def build_shrunk(real_dir: Path, out_dir: Path, seed: int = 0, sizes: ShrunkSizes = ShrunkSizes(),
                 source: str | None = None) -> Path:
    """Write the checkpoint once to `out_dir` (built aside, then renamed): random weights from
    `seed`, every tokenizer, processor and template file of `real_dir` copied unchanged, and the
    note that its weights are random (demo.RANDOM_WEIGHTS), so that a study of it says so in its
    report title and printed summary. `source`: the hub id or folder named in that note."""
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
        mark_random_weights(folder, built_by="modalscope shrink",
                            note=f"random weights, shrunk from {source or real_dir.name}: "
                                 "its numbers say nothing about any trained model")

    return write_checkpoint(out_dir, write)


# `modalscope shrink SOURCE OUT`: the dry run of a real study ---------------------------------
# What is read of a hub repository: its config, tokenizer, processor and chat template, never
# its weights (a few MB, not GB).
SMALL_FILES = ["*.json", "*.jinja", "*.model", "*.txt", "*.py", "*.tiktoken"]


def real_model_files(source: str, revision: str | None = None) -> Path:
    """The folder holding `source`'s real small files: `source` itself when it is a local folder,
    else the hub repository's files (config, tokenizer, processor, template; no weights) through
    huggingface_hub, from its cache when offline. One-line errors."""
    local = Path(source).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{local}: no config.json (a model folder holds its config, tokenizer "
                                    "and processor files)")
        return local
    if local.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise FileNotFoundError(f"{source}: not a model folder nor a hub id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, revision=revision, allow_patterns=SMALL_FILES))
    except Exception as error:  # offline and not cached, unknown repository, gated: one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(f"{source}: its config, tokenizer and processor files could not be read from "
                                f"the hub or its cache ({first})") from None


def shrink(source: str, out_dir: Path, revision: str | None = None, seed: int = 0,
           sizes: ShrunkSizes = ShrunkSizes()) -> Path:
    """A random-weight checkpoint of `source`'s family, with its real tokenizer, processor and
    template, shrunk to `sizes`, written to `out_dir` (a new or empty folder): a study of it runs
    every stage of a real one on a laptop, before renting a GPU."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / COMPLETE_MARKER).exists():
        raise ValueError(f"{out_dir}: not empty; give a new folder")
    real = real_model_files(source, revision)
    return build_shrunk(real, out_dir, seed=seed, sizes=sizes, source=source)
