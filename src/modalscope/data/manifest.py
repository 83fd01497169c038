"""The manifest: the study's pairs, shuffled once with a seed, saved, and reused.

Why: the report shuffles its pair list once and reuses that order for every recording.
`DIR/manifest.parquet` is that list; row i is input i everywhere (the store's input axis,
`input_index` in every table). A rerun reads it back unchanged instead of reshuffling, so
a later change in the data folder or in the code cannot silently reorder a study.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modalscope.data.pairs import DataError, Pair

MANIFEST = "manifest.parquet"
COLUMNS = ["input_index", "pair_id", "image_path", "caption", "caption_id"]


def shuffle_pairs(pairs: list[Pair], seed: int, num_pairs: int | None) -> pd.DataFrame:
    """Sort by pair id (so the file's order does not matter), permute with `seed`, take a prefix.

    A larger `num_pairs` with the same seed extends the list: the first rows are the same.
    """
    if not pairs:
        raise DataError("the data holds no image-caption pairs")
    ordered = sorted(pairs, key=lambda p: (len(p.pair_id), p.pair_id))
    order = np.random.default_rng(seed).permutation(len(ordered))
    if num_pairs is not None:
        if num_pairs > len(ordered):
            raise DataError(f"--num-pairs {num_pairs}: the data holds only {len(ordered)} pairs")
        order = order[:num_pairs]
    frame = pd.DataFrame([asdict(ordered[i]) for i in order])
    frame.insert(0, "input_index", np.arange(len(frame), dtype=np.int64))
    frame["caption_id"] = frame["caption_id"].astype("Int64")
    return frame[COLUMNS]


def manifest_hash(frame: pd.DataFrame) -> str:
    """sha256 of the ordered (pair id, caption, image file name) rows: what defines the inputs."""
    digest = hashlib.sha256()
    for row in frame[["pair_id", "caption", "image_path"]].itertuples(index=False):
        digest.update(json.dumps([row.pair_id, row.caption, Path(row.image_path).name]).encode())
    return digest.hexdigest()


def save_manifest(frame: pd.DataFrame, out_dir: Path, meta: dict) -> Path:
    path = Path(out_dir) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"modalscope": json.dumps(meta).encode()}
    )
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def load_manifest(out_dir: Path) -> tuple[pd.DataFrame, dict]:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise DataError(f"{path}: no manifest; run `modalscope run` (or `extract`) with data first")
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"modalscope", b"{}"))
    return table.to_pandas(), meta
