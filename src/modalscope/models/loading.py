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
        """Where inputs go: the token embedding's device (the first layer's, under a device map)."""
        return self.model.get_input_embeddings().weight.device


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


def quantization_config(quantization: str | None):
    """bitsandbytes 8-bit / 4-bit loading, or a one-line error saying what to install."""
    if quantization is None:
        return None
    if quantization not in ("8bit", "4bit"):
        raise ValueError(f"--quantization {quantization!r}: choose 8bit or 4bit")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError(
            f"--quantization {quantization} needs bitsandbytes: pip install 'modalscope[quant]'"
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=quantization == "8bit", load_in_4bit=quantization == "4bit")


def load_model(
    model_id: str,
    revision: str | None = None,
    dtype: str = "float32",
    device: str = "auto",
    device_map: str | None = None,
    quantization: str | None = None,
) -> LoadedModel:
    """Load weights and processor; the image processor uses the PIL backend everywhere
    so pixels are identical whether or not torchvision is installed.

    With `device_map="auto"` accelerate spreads the layers over the visible devices (for
    models bigger than one GPU); the recording hooks then reduce on each layer's device.
    """
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    placed = device_map is not None or quantization is not None
    model = AutoModelForImageTextToText.from_pretrained(
        model_id,
        revision=revision,
        dtype=DTYPES[dtype],
        device_map=device_map or ("auto" if quantization else None),
        quantization_config=quantization_config(quantization),
    )
    if not placed:
        model.to(resolve_device(device))
    model.eval()
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
        "device_map": device_map,
        "quantization": quantization,
        "chat_template": processor.chat_template,
        "config": json.loads(model.config.to_json_string()),
    }
    return LoadedModel(model=model, processor=processor, adapter=adapter, provenance=provenance)
