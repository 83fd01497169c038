"""Writing output files so that a crash never leaves a truncated one that looks complete.

Every output (Parquet, JSON, HTML, PNG, SVG) is written to a temporary sibling and renamed
onto its name only when the writing finished; a killed process leaves at most a dotted
`.NAME.PID.tmp`, never a half `NAME`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write; renamed onto `path` only if the block ends
    normally, removed otherwise. Unique per process, so ranks never share one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
