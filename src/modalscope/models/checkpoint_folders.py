"""Checkpoint folders modalscope builds itself (the tiny LLaVA, shrunk copies, SmolLM2 dequantized,
the shapes VLM): how each is written so that a half-built one never passes for a checkpoint.

Why: a build can be killed half-way, and two demos or test workers can start the same build at
once. So a folder is written aside and renamed onto its name (`write_checkpoint`), its weights
file (`COMPLETE_MARKER`, written by save_pretrained inside it) says it is complete, and a cached
build (`cache_dir()`: `$MODALSCOPE_CACHE`, else `~/.cache/modalscope`; a cache of installed
files, never a study output) is made by one process at a time (`building`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

COMPLETE_MARKER = "model.safetensors"  # a folder holding it was renamed into place whole


def cache_dir() -> Path:
    """Where modalscope caches models it builds from installed files (not study outputs)."""
    root = os.environ.get("MODALSCOPE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "modalscope"


@contextmanager
def building(out_dir: Path) -> Iterator[bool]:
    """Hold an exclusive lock on building `out_dir` (two demos or test workers at once build a
    cached folder once; the second waits, then finds it complete). Yields whether it still
    needs building."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield not (out_dir / COMPLETE_MARKER).exists()


def write_checkpoint(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """`write(folder)` into a staging folder beside `out_dir`, then rename it onto `out_dir`:
    a build killed half-way never leaves a folder that looks like a checkpoint."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        write(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
