"""Load a model and its processor through `from_pretrained`, the one code path for all.

Why: the embedded tiny checkpoint and a real `llava-hf/llava-1.5-7b-hf` go through the same
calls, so the tests exercise what a real study runs. We also compute the provenance that
the store records: which weights (hub revision / commit, or a fingerprint of local files),
which dtype, which template.

Fail fast, in one line: loading 14 GB of weights takes minutes, so everything that can be
refused without them is refused first, in this order: the device (`--device cuda` without
CUDA), the model's location (a missing local folder, an unreachable hub), its config (an
unsupported `model_type`, naming the supported ones), its processor (a missing optional
package). Each raises `ModelError`, which the CLI prints as one line; the study calls this
before it writes anything to its folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import transformers
from transformers import AutoConfig, AutoProcessor, PretrainedConfig, ProcessorMixin
from transformers.utils import logging as hf_logging

from modalscope.models import ADAPTERS, ModelAdapter, adapter_for
from modalscope.models.adapter import first_line

# Packages transformers' processors import on demand, as their error messages name them.
OPTIONAL_PACKAGES = ("torchvision", "sentencepiece", "protobuf", "tiktoken", "timm", "av", "decord")
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


class ModelError(ValueError):
    """The model cannot be used as asked; the message is one line saying what to do."""


def resolve_device(device: str) -> torch.device:
    """The torch device of `--device`, refused in one line when this machine has none such."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"--device {device!r}: not a device name (cpu, cuda, cuda:1, mps, auto)") from None
    if resolved.type == "cuda":
        build = f"torch {torch.__version__}" + (", a CPU-only build" if torch.version.cuda is None else "")
        if not torch.cuda.is_available():
            raise ModelError(f"--device {device}: torch sees no CUDA GPU on this machine ({build}); "
                             "use --device cpu (or auto)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ModelError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"--device {device}: the Apple MPS backend is not available here; use --device cpu")
    return resolved


def read_config(model_id: str, revision: str | None = None) -> PretrainedConfig:
    """The model's config alone (kilobytes), with the model's location and family checked."""
    local = Path(model_id).expanduser()
    if local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise ModelError(f"--model {model_id}: not a model folder (a folder holding config.json, "
                             "the weights and the processor files)")
    elif model_id.startswith((".", "/", "~")) or model_id.count("/") > 1 or "\\" in model_id:
        raise ModelError(f"--model {model_id}: no such folder")
    hub_logging = _quiet_hub()
    try:
        config = AutoConfig.from_pretrained(model_id, **hub_options(model_id, revision))
    except OSError as err:
        if local.exists():
            raise ModelError(f"--model {model_id}: cannot read its config.json ({first_line(err)})") from None
        raise ModelError(
            f"--model {model_id}: no local folder of that name, and the model hub did not provide it "
            f"({first_line(err)}); offline? download it where there is a network and pass the local "
            "folder as --model"
        ) from None
    except ValueError as err:  # a model_type transformers itself does not know
        raise ModelError(f"--model {model_id}: {first_line(err)}; modalscope supports model types "
                         f"{', '.join(ADAPTERS)}") from None
    finally:
        hub_logging()
    try:
        adapter_for(config.model_type)  # refused here, before any weight is read
    except ValueError as err:
        raise ModelError(f"--model {model_id}: {err}") from None
    return config


def hub_options(model_id: str, revision: str | None) -> dict[str, Any]:
    """`from_pretrained` options: the revision, and `local_files_only` when `model_id` is no
    local folder and the hub cannot be reached. Without a network huggingface_hub retries for
    ~25 s before failing; one quick connection attempt instead, then the local cache only (a
    model downloaded before still loads)."""
    options: dict[str, Any] = {"revision": revision}
    if not Path(model_id).expanduser().exists() and not _hub_reachable():
        options["local_files_only"] = True
    return options


@functools.lru_cache(maxsize=1)
def _hub_reachable(timeout: float = 3.0) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _quiet_hub():
    """Silence huggingface_hub's retry warnings (one per attempt) while we ask the hub; the
    caller gets one line instead. Returns the function that restores the previous level."""
    import logging

    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    return lambda: logger.setLevel(level)


def load_processor(model_id: str, revision: str | None = None, adapter: ModelAdapter | None = None
                   ) -> ProcessorMixin:
    """The model's processor (PIL image backend; the family's own loader where AutoProcessor
    would build parts a study never uses), or a one-line error naming what is missing."""
    load = adapter.load_processor if adapter is not None and adapter.load_processor else AutoProcessor.from_pretrained
    try:
        processor = load(model_id, backend="pil", **hub_options(model_id, revision))
    except ImportError as err:
        text = str(err)
        package = getattr(err, "name", None) or next(
            (p for p in OPTIONAL_PACKAGES if re.search(rf"\b{p}\b", text, re.IGNORECASE)), None)
        if package is None and "video processor" in text.lower():
            package = "torchvision"  # transformers 5.23 builds video processors only on torchvision
        what = f"pip install {package}" if package else "install the package it names"
        raise ModelError(f"--model {model_id}: its processor needs a package that is not installed "
                         f"({first_line(err)}); {what}") from None
    except (OSError, ValueError) as err:
        raise ModelError(f"--model {model_id}: cannot load its processor ({first_line(err)})") from None
    processor.tokenizer.padding_side = "right"
    return processor


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


WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weights_content(model_dir: Path, recorded: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """{"weights_files": {file: sha256}, "weights_stat": {file: [size, mtime_ns, ctime_ns, inode]}}
    for config.json and every weight file of a local model folder: what the store records, so a
    resume names the file whose content changed (weights_fingerprint sees names and sizes only).

    Cost: every byte is hashed once per study, ~1.5 GB/s with SHA-NI (one core): ~10 s for a 7B
    checkpoint in bfloat16 (14 GB) already in the page cache, bounded by the disk otherwise; run
    while the model loads (study.extract_stage), it adds little to a load that reads the same
    bytes. Kept cheap on resume: `recorded` (the store's attributes, in DIR) holds each file's
    stat when it was hashed; a file whose size, mtime, ctime and inode are unchanged keeps its
    recorded digest unread (an in-place overwrite changes mtime and ctime, even with `touch -r`).
    Nothing is written outside DIR (no cache in the model folder)."""
    model_dir = Path(model_dir)
    known = (recorded or {}).get("weights_files") or {}
    stats = (recorded or {}).get("weights_stat") or {}
    digests, seen = {}, {}
    for path in sorted(model_dir.iterdir()):
        if path.name != "config.json" and path.suffix not in WEIGHT_SUFFIXES or not path.is_file():
            continue
        info = path.stat()
        stat = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]
        if path.name in known and stats.get(path.name) == stat:
            digests[path.name] = known[path.name]
        else:
            with path.open("rb") as handle:
                digests[path.name] = hashlib.file_digest(handle, "sha256").hexdigest()
        seen[path.name] = stat
    return {"weights_files": digests, "weights_stat": seen}


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
    target = None if placed else resolve_device(device)
    quantized = quantization_config(quantization)
    config = read_config(model_id, revision)
    adapter = adapter_for(config.model_type)
    processor = load_processor(model_id, revision, adapter)
    try:
        model = getattr(transformers, adapter.model_class).from_pretrained(
            model_id,
            **hub_options(model_id, revision),
            config=config,
            dtype=DTYPES[dtype],
            device_map=device_map or ("auto" if quantization else None),
            quantization_config=quantized,
        )
    except OSError as err:  # no weight files (a repository's small files only), a broken download
        raise ModelError(f"--model {model_id}: cannot load its weights ({first_line(err)})") from None
    if target is not None:
        model.to(target)
    model.eval()
    if adapter.prepare is not None:
        adapter.prepare(model)
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
