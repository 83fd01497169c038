"""Writing output files so that a crash never leaves a truncated one that looks complete.

Every output (Parquet, JSON, HTML, PNG, SVG) is written to a temporary sibling and renamed
onto its name only when the writing finished; a killed process leaves at most a dotted
`.NAME.PID.tmp`, never a half `NAME`.

Why fsync: a rename is atomic for the directory, but without a sync a power loss or a
kernel crash can persist the rename before the file's data, leaving `NAME` empty or
short. So the temporary file is flushed to disk before the rename and the directory
after it (the rename itself is then durable). Every writer (tables, manifest, figures,
report) goes through `atomic`, so this is the one place that does it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path: Path, directory: bool = False) -> None:
    """Flush a closed file's data, or a directory's entries, to disk.

    Windows has no directory handles to sync; there a directory is left to the OS.
    """
    if directory and os.name == "nt":
        return
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write (and close) in the block; synced to disk and
    renamed onto `path` only if the block ends normally, removed otherwise. Unique per
    process, so ranks never share one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent, directory=True)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes, within: Path | None = None) -> Path:
    """Write `data` to `path` through `atomic` (synced to disk before the rename, the folder after
    it). With `within` (the study folder) a path that resolves outside it is refused (ValueError)
    before anything is made."""
    if within is not None:
        from modalscope.paths import check_inside

        check_inside(path, within)
    with atomic(Path(path)) as tmp, open(tmp, "xb") as fh:
        fh.write(data)
    return Path(path)
