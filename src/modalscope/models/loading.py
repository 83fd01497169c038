"""Load a model and its processor through `from_pretrained`, the one code path for all.

Why: the embedded tiny checkpoint and a real `llava-hf/llava-1.5-7b-hf` go through the same
calls, so the tests exercise what a real study runs. We also compute the provenance that
the store records: which weights (hub revision / commit, or a fingerprint of local files),
which dtype, which template.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin
from transformers.utils import logging as hf_logging

from modalscope.models import ModelAdapter, adapter_for

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: ProcessorMixin
    adapter: ModelAdapter
    provenance: dict[str, Any]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def weights_fingerprint(model_dir: Path) -> str:
    """sha256 over config.json and the names and sizes of the weight files.

    Hashing every byte of a 14 GB checkpoint would take minutes; names, sizes and the
    config catch any re-save or swap of a local checkpoint in practice.
    """
    digest = hashlib.sha256()
    for path in sorted(model_dir.iterdir()):
        if path.name == "config.json":
            digest.update(path.read_bytes())
        elif path.suffix in {".safetensors", ".bin"}:
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()


def load_model(
    model_id: str, revision: str | None = None, dtype: str = "float32", device: str = "auto"
) -> LoadedModel:
    """Load weights and processor; the image processor uses the PIL backend everywhere
    so pixels are identical whether or not torchvision is installed."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    target = resolve_device(device)
    model = AutoModelForImageTextToText.from_pretrained(
        model_id, revision=revision, dtype=DTYPES[dtype]
    )
    model.to(target).eval()
    processor = AutoProcessor.from_pretrained(model_id, revision=revision, backend="pil")
    processor.tokenizer.padding_side = "right"
    adapter = adapter_for(model.config.model_type)
    local = Path(model_id)
    provenance = {
        "model": str(local.resolve()) if local.is_dir() else model_id,
        "revision": revision or "main",
        "commit_hash": getattr(model.config, "_commit_hash", None),
        "weights_fingerprint": weights_fingerprint(local) if local.is_dir() else None,
        "model_type": model.config.model_type,
        "dtype": dtype,
        "chat_template": processor.chat_template,
        "config": json.loads(model.config.to_json_string()),
    }
    return LoadedModel(model=model, processor=processor, adapter=adapter, provenance=provenance)
