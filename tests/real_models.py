"""Where the tests find real hub repositories' small files (../shared/real-models)."""

from __future__ import annotations

import os
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
