"""Fingerprints of a study's outputs, one hash per column, array and summary value.

Refactors must leave every output bit-identical; new columns and keys are allowed (outputs are a
contract: add, don't rename). So a fingerprint is a flat {name: sha256} and the check is that every
committed name is still there with the same hash. Paths, timings and versions (study.json, the
store's attributes) are not outputs of the method and are not hashed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

HASHES = Path(__file__).with_name("hashes.json")
TABLES = ("manifest.parquet", "skipped.parquet", "truncated.parquet")


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:20]


def _column(values: pd.Series) -> str:
    if "path" in str(values.name):  # where the test's temporary folder was is not an output
        values = values.map(lambda v: Path(v).name if isinstance(v, str) else v)
    array = values.to_numpy()
    if array.dtype.kind in "biuf":
        return _digest(str(array.dtype).encode(), np.ascontiguousarray(array).tobytes())
    return _digest(b"\x00".join(repr(v).encode() for v in array.tolist()))


def _flatten(prefix: str, value: object, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, out)
    else:
        out[prefix] = _digest(json.dumps(value).encode())


def fingerprint(study: Path) -> dict[str, str]:
    import zarr

    out: dict[str, str] = {}
    parquets = [study / name for name in TABLES] + sorted((study / "tables").glob("*.parquet"))
    for path in parquets:
        if path.exists():
            frame = pd.read_parquet(path)
            rel = path.relative_to(study).as_posix()
            out[f"{rel}#rows"] = _digest(str(len(frame)).encode())
            for name in frame.columns:
                out[f"{rel}:{name}"] = _column(frame[name])
    _flatten("summary", json.loads((study / "tables/summary.json").read_text()), out)
    from modalscope.store import ActivationStore

    store = ActivationStore.read(study / "activations.zarr")
    group, n_done = store.group, store.n_done
    for name, member in sorted(group.members(max_depth=None), key=lambda item: item[0]):
        if isinstance(member, zarr.Array):
            parts = name.split("/")
            if len(parts) == 3 and parts[0] in store.sites:  # values as every reader sees them (holes filled)
                data = np.stack([store.read_layer(*parts, layer) for layer in range(store.n_layers)], axis=1)
            else:
                data = np.asarray(member[:n_done])
            out[f"store:{name}"] = _digest(str(data.dtype).encode(), str(data.shape).encode(), data.tobytes())
    return out


def mismatches(study: Path, which: str) -> list[str]:
    """Names whose hash changed or that went missing, against the committed hashes."""
    want = json.loads(HASHES.read_text())[which]
    have = fingerprint(study)
    return [f"{name}: {'missing' if name not in have else 'changed'}"
            for name, digest in want.items() if have.get(name) != digest]


def record(study: Path, which: str, only_existing: bool = False) -> list[str]:
    """Write (or replace) one study's hashes: only when an output change is intended.
    `only_existing`: re-record the committed names only (an intended change of some values),
    adding none. Returns the names whose hash changed."""
    table = json.loads(HASHES.read_text()) if HASHES.exists() else {}
    have = fingerprint(study)
    old = table.get(which, {})
    if only_existing:
        table[which] = {name: have.get(name, digest) for name, digest in old.items()}
    else:
        table[which] = have
    HASHES.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return [name for name, digest in old.items() if table[which].get(name) != digest]
