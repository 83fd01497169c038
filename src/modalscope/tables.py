"""The report's tables as Parquet files (and CSV on request) in `DIR/tables/`.

Why: names and columns here are a contract with users' scripts (see the README). Tables 1
and 2 are long, one row per input x layer x neuron (x modality), and for a real study hold
billions of rows, so they stream from the store in row groups, one (site, layer, input
chunk) at a time, and `modalscope export` writes them with layer/neuron filters.
Every file is written to a temporary name and renamed, so a crash never leaves a
truncated file that looks complete.

Table 2's `delta` is the study's contrast (`--contrast A-B`: Δ = A - B; text - image by
default), and its `contrast` column says which, so the file names what it holds on its own.
Table 1 holds text and image plus any other stream the contrast reads, so Table 2 can be
checked against it. JSON is written strictly (NaN and ±inf as null: other readers than
Python's reject the bare `NaN` token); `read_summary` turns null back into NaN.

Provenance travels with each file: every Parquet table carries the study's key settings and
library versions as JSON under the schema metadata key `modalscope` (`read_provenance(path)`),
so a table copied out of its folder still says which model, contrast and statistics made it.
Nothing time- or place-dependent goes there, so a repeated study writes identical bytes.
A CSV copy is only ever of its Parquet file: writing a table without `csv` removes an old copy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modalscope.files import atomic
from modalscope.store import ActivationStore
from modalscope.streams import UNIMODAL as CONDITIONS

TABLE1 = "table1_activations.parquet"
TABLE2 = "table2_differences.parquet"
TABLE3 = "table3_neurons.parquet"
LAYERS = "layers.parquet"
SIGNIFICANT = "significant_neurons.parquet"
INPUT_LAYERS = "input_layer_means.parquet"
SUMMARY = "summary.json"
# Δ_base = text - text_base (the base LLM contrast), written when the store recorded text_base.
LAYERS_VS_BASE = "layers_vs_base.parquet"
ALIGNMENT = "alignment.parquet"  # layer alignment of the two modalities (layer_alignment.py)
INPUT_LAYERS_VS_BASE = "input_layer_means_vs_base.parquet"
LONG_TABLE_AUTO_LIMIT = 50_000_000  # rows of Table 1 written by default

TABLE1_SCHEMA = pa.schema(
    [
        ("input_index", pa.int32()),
        ("pair_id", pa.dictionary(pa.int32(), pa.string())),
        ("site", pa.dictionary(pa.int8(), pa.string())),
        ("modality", pa.dictionary(pa.int8(), pa.string())),
        ("layer", pa.int16()),
        ("neuron", pa.int32()),
        ("max_activation", pa.float32()),
        ("mean_activation", pa.float32()),
    ]
)
TABLE2_SCHEMA = pa.schema(
    [
        ("input_index", pa.int32()),
        ("pair_id", pa.dictionary(pa.int32(), pa.string())),
        ("site", pa.dictionary(pa.int8(), pa.string())),
        ("layer", pa.int16()),
        ("neuron", pa.int32()),
        ("delta", pa.float32()),  # max_A - max_B of the contrast (the report's Δ: text - image)
        ("delta_mean", pa.float32()),  # mean_A - mean_B
        ("contrast", pa.dictionary(pa.int8(), pa.string())),  # "A - B", e.g. "text - image"
    ]
)
DEFAULT_CONTRAST = ("text", "image")


def modalities(contrast: Sequence[str] = DEFAULT_CONTRAST) -> tuple[str, ...]:
    """Table 1's modalities: text and image, then any other stream the contrast reads."""
    return tuple(dict.fromkeys((*CONDITIONS, *contrast)))


def table1_rows(store: ActivationStore, contrast: Sequence[str] = DEFAULT_CONTRAST) -> int:
    return store.n_done * len(modalities(contrast)) * store.n_layers * sum(store.width(s) for s in store.sites)


def _repeat(value: str, n: int) -> pa.DictionaryArray:
    """A constant string column, dictionary-encoded (one byte per row)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)), pa.array([value]))


def _blocks(
    store: ActivationStore,
    sites: Sequence[str],
    layers: Sequence[int] | None,
    neurons: Sequence[int] | None,
    conditions: Sequence[str] = CONDITIONS,
) -> Iterator[tuple[str, int, np.ndarray, np.ndarray, dict[str, dict[str, np.ndarray]]]]:
    """(site, layer, input indices, neuron indices, values[condition][stat] [inputs, neurons])
    per chunk of inputs."""
    for site in sites:
        cols = np.arange(store.width(site)) if neurons is None else np.asarray(neurons)
        for layer in range(store.n_layers) if layers is None else layers:
            for start, stop in store.input_blocks():
                values = {
                    c: {
                        s: store.read_layer(site, c, s, layer, start, stop)[:, cols]
                        for s in ("max", "mean")
                    }
                    for c in conditions
                }
                yield site, layer, np.arange(start, stop), cols, values


def _long_columns(
    site: str, layer: int, inputs: np.ndarray, cols: np.ndarray, pair_ids: pa.Array
) -> dict[str, pa.Array]:
    n = inputs.size * cols.size
    input_index = np.repeat(inputs, cols.size).astype(np.int32)
    return {
        "input_index": pa.array(input_index),
        "pair_id": pa.DictionaryArray.from_arrays(pa.array(input_index), pair_ids),
        "site": _repeat(site, n),
        "layer": pa.array(np.full(n, layer, dtype=np.int16)),
        "neuron": pa.array(np.tile(cols, inputs.size).astype(np.int32)),
    }


def write_long_tables(
    store: ActivationStore,
    pair_ids: Sequence[str],
    out_dir: Path,
    sites: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    neurons: Sequence[int] | None = None,
    suffix: str = "",
    contrast: Sequence[str] = DEFAULT_CONTRAST,
    provenance: dict | None = None,
) -> list[Path]:
    """Stream Tables 1 and 2 (optionally filtered) into `out_dir`; returns the paths.

    Table 2's Δ is `contrast[0] - contrast[1]`, named in its `contrast` column; `provenance`
    goes into both files' schema metadata."""
    first, second = contrast
    missing = [c for c in (first, second) if c not in store.conditions]
    if missing:
        raise ValueError(f"contrast {first} - {second}: the store did not record {', '.join(missing)}")
    shown = modalities(contrast)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = pa.array([str(p) for p in pair_ids[: store.n_done]])
    paths = [out_dir / TABLE1.replace(".parquet", f"{suffix}.parquet"),
             out_dir / TABLE2.replace(".parquet", f"{suffix}.parquet")]
    with atomic(paths[0]) as tmp1, atomic(paths[1]) as tmp2, \
            pq.ParquetWriter(tmp1, with_provenance(TABLE1_SCHEMA, provenance)) as t1, \
            pq.ParquetWriter(tmp2, with_provenance(TABLE2_SCHEMA, provenance)) as t2:
        for site, layer, inputs, cols, values in _blocks(store, sites or store.sites, layers, neurons, shown):
            base = _long_columns(site, layer, inputs, cols, ids)
            n = len(base["layer"])
            for condition in shown:
                t1.write_table(
                    pa.table(
                        {
                            **{k: base[k] for k in ("input_index", "pair_id", "site")},
                            "modality": _repeat(condition, n),
                            "layer": base["layer"],
                            "neuron": base["neuron"],
                            "max_activation": pa.array(values[condition]["max"].ravel()),
                            "mean_activation": pa.array(values[condition]["mean"].ravel()),
                        },
                        schema=TABLE1_SCHEMA,
                    )
                )
            a, b = values[first], values[second]
            t2.write_table(
                pa.table(
                    {
                        **base,
                        "delta": pa.array((a["max"] - b["max"]).ravel()),
                        "delta_mean": pa.array((a["mean"] - b["mean"]).ravel()),
                        "contrast": _repeat(f"{first} - {second}", n),
                    },
                    schema=TABLE2_SCHEMA,
                )
            )
    return paths


PROVENANCE_KEY = b"modalscope"  # schema metadata key of the study's settings and versions (JSON)


def with_provenance(schema: pa.Schema, provenance: dict | None) -> pa.Schema:
    """`schema` with `provenance` as JSON under PROVENANCE_KEY (keys sorted: same study, same bytes)."""
    if not provenance:
        return schema
    text = json.dumps(_strict(provenance), sort_keys=True, allow_nan=False).encode("utf-8")
    return schema.with_metadata({**(schema.metadata or {}), PROVENANCE_KEY: text})


def read_provenance(path: Path) -> dict:
    """The study's settings and versions a Parquet table carries ({} for a table without them)."""
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata[PROVENANCE_KEY]) if PROVENANCE_KEY in metadata else {}


def write_frame(frame: pd.DataFrame, path: Path, csv: bool = False, provenance: dict | None = None) -> Path:
    """Parquet (and a CSV copy beside it when asked), each written atomically; without `csv` an
    old CSV copy is removed, so it can never disagree with the Parquet file."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata(with_provenance(table.schema, provenance).metadata)
    with atomic(path) as tmp:
        pq.write_table(table, tmp)
    if csv:
        with atomic(path.with_suffix(".csv")) as tmp:
            frame.to_csv(tmp, index=False)
    else:
        path.with_suffix(".csv").unlink(missing_ok=True)
    return path


def remove_table(path: Path) -> None:
    """A table and its CSV copy, if there: an analysis that does not write it now must not leave
    the previous analysis's beside its own tables."""
    for stale in (path, path.with_suffix(".csv")):
        stale.unlink(missing_ok=True)


def _strict(value: object) -> object:
    """`value` with every non-finite float (NaN, ±inf) as None, for strict JSON."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_json(data: dict, path: Path) -> Path:
    """Strict JSON (non-finite numbers as null), written atomically."""
    text = json.dumps(_strict(data), indent=2, allow_nan=False) + "\n"
    with atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _nan_for_null(value: object) -> object:
    if isinstance(value, dict):
        return {k: _nan_for_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_for_null(v) for v in value]
    return math.nan if value is None else value


def read_summary(path: Path) -> dict:
    """summary.json as written by the analysis, null read back as NaN (every null there
    is a number that was not finite)."""
    return _nan_for_null(json.loads(Path(path).read_text(encoding="utf-8")))


def long_table_csv(paths: Sequence[Path]) -> None:
    """CSV copies of long tables, converted row group by row group."""
    for path in paths:
        reader = pq.ParquetFile(path)
        with atomic(path.with_suffix(".csv")) as tmp, open(tmp, "w", encoding="utf-8") as out:
            for group in range(reader.num_row_groups):
                frame = reader.read_row_group(group).to_pandas()
                frame.to_csv(out, index=False, header=group == 0)
