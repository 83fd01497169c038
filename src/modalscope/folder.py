"""The study folder's two inputs of every stage, the store and the manifest, read once per command.

Why: `analyze`, `plot`, `report` and `export` each check the manifest against the store, look for
mixed tables, name-check the tables against the store's sites and gather the report's facts, and
each of those opened DIR/activations.zarr and read DIR/manifest.parquet again (13 opens of the
store in one `run`). Here they are read once and handed out again while their files are unchanged:
the cache is keyed by the file's size and modification time (the store's `zarr.json`, which every
append rewrites), so a stage that writes them never reads a stale copy. Extraction, which appends to the store,
opens it itself (`ActivationStore.open`); the stages after it read through here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from modalscope.data.manifest import MANIFEST, load_manifest
from modalscope.store import STORE, ActivationStore

_STORES: dict[Path, tuple[tuple[int, ...], ActivationStore]] = {}
_MANIFESTS: dict[Path, tuple[tuple[int, ...], tuple[pd.DataFrame, dict]]] = {}


def _stamp(path: Path) -> tuple[int, ...]:
    found = os.stat(path)
    return found.st_ino, found.st_mtime_ns, found.st_ctime_ns, found.st_size


def read_store(path: Path | str) -> ActivationStore:
    """`ActivationStore.read(path)` (DIR/activations.zarr, or a twin's), reused while its
    zarr.json is unchanged."""
    path = Path(path)
    meta = path / "zarr.json"
    if not meta.is_file():
        return ActivationStore.read(path)  # its own one-line error, or an older layout
    key, stamp = path.resolve(), _stamp(meta)
    held = _STORES.get(key)
    if held is None or held[0] != stamp:
        held = (stamp, ActivationStore.read(path))
        _STORES[key] = held
    return held[1]


def study_store(out_dir: Path | str) -> ActivationStore:
    """DIR's store (`read_store(DIR/activations.zarr)`)."""
    return read_store(Path(out_dir) / STORE)


def study_manifest(out_dir: Path | str) -> tuple[pd.DataFrame, dict]:
    """`load_manifest(DIR)`: (a copy of the frame, its metadata), read again only when the file changed."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return load_manifest(Path(out_dir))  # its one-line error
    key, stamp = path.resolve(), _stamp(path)
    held = _MANIFESTS.get(key)
    if held is None or held[0] != stamp:
        held = (stamp, load_manifest(Path(out_dir)))
        _MANIFESTS[key] = held
    frame, meta = held[1]
    return frame.copy(), dict(meta)
