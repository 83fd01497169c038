"""The manifest: the study's pairs, shuffled once with a seed, saved, and reused.

Why: the report shuffles its pair list once and reuses that order for every recording.
`DIR/manifest.parquet` is that list; row i is input i everywhere (the store's input axis,
`input_index` in every table). A rerun reads it back unchanged instead of reshuffling, so
a later change in the data folder or in the code cannot silently reorder a study.

It holds usable pairs only: the pairs met on the way that could not be used (see
data/validate.py) are in `DIR/skipped.parquet`, one row each with the reason, written before
the manifest. Captions cut to fit the model's context are listed in `DIR/truncated.parquet`
by the extraction. Every file here is written to a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modalscope.data.pairs import DataError, Pair
from modalscope.files import atomic
from modalscope.seeds import generator

MANIFEST = "manifest.parquet"
SKIPPED = "skipped.parquet"
TRUNCATED = "truncated.parquet"
COLUMNS = ["input_index", "pair_id", "image_path", "caption", "caption_id", "concepts", "image_sha256"]
# image_sha256: the image file's sha256 when the pair was checked; extraction refuses an image that no
# longer matches it (manifests made before it lack the column and are not checked)
CONCEPTS_TYPE = pa.list_(pa.string())  # the `concepts` column: the pair's concept labels, null if unlabelled
SKIPPED_SCHEMA = pa.schema([("pair_id", pa.string()), ("image_path", pa.string()),
                            ("caption", pa.string()), ("caption_id", pa.int64()),
                            ("reason", pa.string())])


def shuffled(pairs: list[Pair], seed: int) -> list[Pair]:
    """Sort by pair id (so the file's order does not matter), then permute with the seed's
    "shuffle" stream (see seeds.py: independent of the sign flips and the bootstrap)."""
    ordered = sorted(pairs, key=lambda p: (len(p.pair_id), p.pair_id))
    return [ordered[i] for i in generator(seed, "shuffle").permutation(len(ordered))]


def manifest_frame(pairs: list[Pair]) -> pd.DataFrame:
    """Pairs in study order as manifest rows; `input_index` is the row number."""
    frame = pd.DataFrame([asdict(p) for p in pairs], columns=[f.name for f in fields(Pair)])
    frame.insert(0, "input_index", np.arange(len(frame), dtype=np.int64))
    frame["caption_id"] = frame["caption_id"].astype("Int64")
    frame["concepts"] = pd.Series([None if c is None else list(c) for c in frame["concepts"]], dtype=object)
    frame["image_sha256"] = frame["image_sha256"].astype("str")  # as read back (null: not checked)
    # a JSONL line's other fields, one text column each (null where a line lacks it), after the manifest's own
    names = list(dict.fromkeys(key for pair in pairs for key, _ in pair.extra if key not in COLUMNS))
    extra = pd.DataFrame([dict(pair.extra) for pair in pairs], columns=names, dtype=object)
    return pd.concat([frame[COLUMNS], extra], axis=1) if names else frame[COLUMNS]


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
    if "concepts" in table.column_names and table.schema.field("concepts").type != CONCEPTS_TYPE:
        index = table.column_names.index("concepts")  # all null (no labels): typed, not `null`
        table = table.set_column(index, pa.field("concepts", CONCEPTS_TYPE), table["concepts"].cast(CONCEPTS_TYPE))
    if "image_sha256" in table.column_names and table.schema.field("image_sha256").type != pa.string():
        index = table.column_names.index("image_sha256")  # all null (pairs made by hand): typed, not `null`
        table = table.set_column(index, pa.field("image_sha256", pa.string()), table["image_sha256"].cast(pa.string()))
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"modalscope": json.dumps(meta).encode()}
    )
    with atomic(path) as tmp:
        pq.write_table(table, tmp)
    return path


def save_skipped(skipped: list[tuple[Pair, str]], out_dir: Path) -> Path:
    """DIR/skipped.parquet: one row per pair the walk refused (written even when empty)."""
    rows = [{"pair_id": p.pair_id, "image_path": p.image_path, "caption": _storable(p.caption),
             "caption_id": p.caption_id, "reason": reason} for p, reason in skipped]
    path = Path(out_dir) / SKIPPED
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=SKIPPED_SCHEMA), tmp)
    return path


def _storable(caption: object) -> object:
    """A skipped caption as Parquet can hold it: lone surrogates (invalid UTF-8) escaped."""
    if isinstance(caption, str):
        return caption.encode("utf-8", "backslashreplace").decode("utf-8")
    return caption


def load_skipped(out_dir: Path) -> pd.DataFrame:
    """The skip list of a study (empty for a study without one)."""
    path = Path(out_dir) / SKIPPED
    table = pq.read_table(path) if path.exists() else SKIPPED_SCHEMA.empty_table()
    return table.to_pandas()


def data_counts(out_dir: Path) -> dict[str, int]:
    """How many pairs were skipped and how many captions were cut, for the summary."""
    truncated = Path(out_dir) / TRUNCATED
    return {"n_skipped": len(load_skipped(out_dir)),
            "n_truncated": pq.read_metadata(truncated).num_rows if truncated.exists() else 0}


def data_notes(out_dir: Path) -> list[str]:
    """One line each: fewer pairs than --num-pairs asked for, skipped pairs, cut captions."""
    out_dir = Path(out_dir)
    notes = []
    if (out_dir / MANIFEST).exists():
        frame, meta = load_manifest(out_dir)
        wanted = meta.get("num_pairs")
        if wanted is not None and len(frame) < wanted:
            notes.append(f"--num-pairs {wanted}: the data holds only {len(frame)} usable pairs; "
                         f"using all {len(frame)}")
    skipped = load_skipped(out_dir)
    if len(skipped):
        first = skipped.iloc[0]
        reason = first.reason + (f": {first.image_path}" if first.reason == "image file not found" else "")
        notes.append(f"{len(skipped)} pair(s) skipped in both conditions (e.g. pair {first.pair_id}: "
                     f"{reason}); all listed in {out_dir / SKIPPED}")
    n_truncated = data_counts(out_dir)["n_truncated"]
    if n_truncated:
        notes.append(f"{n_truncated} caption(s) cut to fit the model's context; "
                     f"listed in {out_dir / TRUNCATED}")
    return notes


def load_manifest(out_dir: Path) -> tuple[pd.DataFrame, dict]:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise DataError(f"{path}: no manifest; run `modalscope run` (or `extract`) with data first")
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"modalscope", b"{}"))
    frame = table.to_pandas()
    if "concepts" in frame.columns:  # lists, as manifest_frame makes them (Arrow gives arrays)
        frame["concepts"] = pd.Series([None if c is None else [str(v) for v in c] for c in frame["concepts"]],
                                      dtype=object)
    return frame, meta
