"""The report's tables as Parquet files (and CSV on request) in `DIR/tables/`.

Why: names and columns here are a contract with users' scripts (see the README). Tables 1
and 2 are long, one row per input x layer x neuron (x modality), and for a real study hold
billions of rows, so they stream from the store in row groups, one (site, layer, input
chunk) at a time, and `modalscope export` writes them with layer/neuron filters.
Every file is written to a temporary name and renamed, so a crash never leaves a
truncated file that looks complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modalscope.files import atomic
from modalscope.store import CONDITIONS, ActivationStore

TABLE1 = "table1_activations.parquet"
TABLE2 = "table2_differences.parquet"
TABLE3 = "table3_neurons.parquet"
LAYERS = "layers.parquet"
SIGNIFICANT = "significant_neurons.parquet"
INPUT_LAYERS = "input_layer_means.parquet"
SUMMARY = "summary.json"
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
        ("delta", pa.float32()),  # max_text - max_image, the report's Δ
        ("delta_mean", pa.float32()),  # mean_text - mean_image
    ]
)


def table1_rows(store: ActivationStore) -> int:
    return store.n_done * len(CONDITIONS) * store.n_layers * sum(store.width(s) for s in store.sites)


def _repeat(value: str, n: int) -> pa.DictionaryArray:
    """A constant string column, dictionary-encoded (one byte per row)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)), pa.array([value]))


def _blocks(
    store: ActivationStore,
    sites: Sequence[str],
    layers: Sequence[int] | None,
    neurons: Sequence[int] | None,
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
                    for c in CONDITIONS
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
) -> list[Path]:
    """Stream Tables 1 and 2 (optionally filtered) into `out_dir`; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = pa.array([str(p) for p in pair_ids[: store.n_done]])
    paths = [out_dir / TABLE1.replace(".parquet", f"{suffix}.parquet"),
             out_dir / TABLE2.replace(".parquet", f"{suffix}.parquet")]
    with atomic(paths[0]) as tmp1, atomic(paths[1]) as tmp2, \
            pq.ParquetWriter(tmp1, TABLE1_SCHEMA) as t1, pq.ParquetWriter(tmp2, TABLE2_SCHEMA) as t2:
        for site, layer, inputs, cols, values in _blocks(store, sites or store.sites, layers, neurons):
            base = _long_columns(site, layer, inputs, cols, ids)
            n = len(base["layer"])
            for condition in CONDITIONS:
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
            text, image = values["text"], values["image"]
            t2.write_table(
                pa.table(
                    {
                        **base,
                        "delta": pa.array((text["max"] - image["max"]).ravel()),
                        "delta_mean": pa.array((text["mean"] - image["mean"]).ravel()),
                    },
                    schema=TABLE2_SCHEMA,
                )
            )
    return paths


def write_frame(frame: pd.DataFrame, path: Path, csv: bool = False) -> Path:
    """Parquet (and a CSV copy beside it when asked), each written atomically."""
    with atomic(path) as tmp:
        frame.to_parquet(tmp, index=False)
    if csv:
        with atomic(path.with_suffix(".csv")) as tmp:
            frame.to_csv(tmp, index=False)
    return path


def write_json(data: dict, path: Path) -> Path:
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    return path


def long_table_csv(paths: Sequence[Path]) -> None:
    """CSV copies of long tables, converted row group by row group."""
    for path in paths:
        reader = pq.ParquetFile(path)
        with atomic(path.with_suffix(".csv")) as tmp, open(tmp, "w", encoding="utf-8") as out:
            for group in range(reader.num_row_groups):
                frame = reader.read_row_group(group).to_pandas()
                frame.to_csv(out, index=False, header=group == 0)
