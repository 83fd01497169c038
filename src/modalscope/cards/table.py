"""DIR/tables/top_pairs.parquet: per neuron, the top-k inputs of each contrasted stream.

Why a table: a neuron card (and the report's cards) must not read the whole store to find a
neuron's strongest pairs, so the analysis finds them for every neuron once, streaming
(stats/top_pairs.py: a [k, neuron] state per layer, whatever the number of inputs), for the
study's headline reduction (`--stat`, max by default) and the two streams of its contrast.

Layout: long, one row per site x layer x neuron x modality x rank, sorted in that order, with
the input's index and pair id and its response. At LLaVA-1.5-7B widths (32 layers x (4,096 +
11,008) neurons x 2 streams x k = 8) that is 7.7 M rows; dictionary-encoded strings and narrow
integers keep it at about 10 bytes a row on disk (~80 MB with 5,000 pairs, measured on synthetic
values; Table 3 is larger), so the long layout stays: it reads with one filter per neuron and
joins Table 3 on its keys. (Most of those bytes are the values and the two input columns, which
no layout can drop: a wide one, a row per neuron with lists, would save little.) A neuron has fewer
than k rows of a stream only when fewer than k inputs have a response there (NaN is never
ranked). Memory: a [k, neuron] state per layer and one read of at most READ_BYTES; the file is
written one (site, layer) row group at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from modalscope.files import atomic
from modalscope.stats.top_pairs import DEFAULT_K, TopK
from modalscope.store import ActivationStore

TOP_PAIRS = "top_pairs.parquet"
READ_BYTES = 64 * 2**20  # one store read: a block of inputs for as many layers as fit
SCHEMA = pa.schema([
    ("site", pa.dictionary(pa.int8(), pa.string())),
    ("layer", pa.int16()),
    ("neuron", pa.int32()),
    ("modality", pa.dictionary(pa.int8(), pa.string())),
    ("rank", pa.int8()),  # 0: the input with the highest response
    ("input_index", pa.int32()),
    ("pair_id", pa.dictionary(pa.int32(), pa.string())),
    ("value", pa.float32()),  # the stream's response (reduction `stat`), exactly as stored
    ("stat", pa.dictionary(pa.int8(), pa.string())),  # which reduction over tokens ranked them
])


def layer_top(store: ActivationStore, site: str, layer: int, condition: str, stat: str, k: int = DEFAULT_K,
              neurons: Sequence[int] | None = None) -> TopK:
    """The top-k state of one (site, layer, stream) over every finished input, block by block
    (`neurons`: only these columns, for one card)."""
    cols = None if neurons is None else np.asarray(neurons)
    state = TopK.empty(k, store.width(site) if cols is None else len(cols))
    for start, stop in store.input_blocks():
        block = store.read_layer(site, condition, stat, layer, start, stop)
        state = state.add(block if cols is None else block[:, cols], start)
    return state


def site_tops(store: ActivationStore, site: str, condition: str, stat: str, k: int = DEFAULT_K,
              read_bytes: int = READ_BYTES) -> list[TopK]:
    """The top-k state of every layer of one (site, stream): each block of inputs is read for as
    many layers at once as fit in `read_bytes` (one read per block in a small study; zarr's
    per-read overhead dominated a read per layer), and merged into each layer's [k, neuron] state."""
    array = store.array(site, condition, stat)
    n_layers, width = int(array.shape[1]), int(array.shape[2])
    states = [TopK.empty(k, width) for _ in range(n_layers)]
    for start, stop in store.input_blocks():
        step = max(1, read_bytes // ((stop - start) * width * array.dtype.itemsize))
        if store.holes(f"{site}/{condition}/{stat}", start, stop).any():
            # rows the store did not keep twice (e.g. text/matched_max, which is text/max where the
            # caption is the shortest stream): read_layer fills them, a layer at a time
            for layer in range(n_layers):
                states[layer] = states[layer].add(store.read_layer(site, condition, stat, layer, start, stop), start)
            continue
        for first in range(0, n_layers, step):
            block = array[start:stop, first:first + step, :]  # [input, layer, neuron]
            for i in range(block.shape[1]):
                states[first + i] = states[first + i].add(block[:, i, :], start)
    return states


def layer_rows(site: str, layer: int, tops: dict[str, TopK], neurons: np.ndarray, pair_ids: pa.Array,
               stat: str) -> pa.Table:
    """One (site, layer) of the table: neuron-major, then stream, then rank; unfilled slots dropped."""
    modalities = list(tops)
    index = np.stack([tops[m].index() for m in modalities])  # [modality, rank, neuron]
    values = np.stack([tops[m].values() for m in modalities])
    n_mod, k, n = index.shape
    order = (2, 0, 1)  # -> [neuron, modality, rank]
    index, values = index.transpose(order).ravel(), values.transpose(order).ravel()
    neuron = np.repeat(neurons, n_mod * k)
    modality = np.tile(np.repeat(np.arange(n_mod), k), n)
    rank = np.tile(np.arange(k), n * n_mod)
    keep = index >= 0
    m = int(keep.sum())
    rows = index[keep].astype(np.int32)
    return pa.table({
        "site": _constant(site, m),
        "layer": pa.array(np.full(m, layer, dtype=np.int16)),
        "neuron": pa.array(neuron[keep].astype(np.int32)),
        "modality": pa.DictionaryArray.from_arrays(pa.array(modality[keep].astype(np.int8)), pa.array(modalities)),
        "rank": pa.array(rank[keep].astype(np.int8)),
        "input_index": pa.array(rows),
        "pair_id": pa.DictionaryArray.from_arrays(pa.array(rows), pair_ids),
        "value": pa.array(values[keep].astype(np.float32)),
        "stat": _constant(stat, m),
    }, schema=SCHEMA)


def _constant(value: str, n: int) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)), pa.array([value]))


def write_top_pairs(store: ActivationStore, path: Path, stat: str, conditions: Sequence[str], k: int = DEFAULT_K,
                    provenance: dict | None = None, csv: bool = False) -> Path:
    """Stream the table for every site and layer into `path` (atomically); with `csv` a CSV copy
    beside it, without it an old copy is removed."""
    from modalscope.tables import long_table_csv, with_provenance

    schema = with_provenance(SCHEMA, {**(provenance or {}), "top_pairs": {"stat": stat, "k": k,
                                                                           "modalities": list(conditions)}})
    ids = pa.array(store.pair_ids())
    with atomic(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for site in store.sites:
            neurons = np.arange(store.width(site))
            tops = {c: site_tops(store, site, c, stat, k) for c in conditions}
            for layer in range(store.n_layers):
                writer.write_table(layer_rows(site, layer, {c: tops[c][layer] for c in conditions}, neurons, ids, stat))
    if csv:
        long_table_csv([path])
    else:
        path.with_suffix(".csv").unlink(missing_ok=True)
    return path


def top_pairs_stat(stat: str, store: ActivationStore) -> str:
    """The study's headline reduction when the store recorded it, else max (always recorded)."""
    return stat if stat in store.stats else "max"


def neuron_top_pairs(path: Path, site: str, layer: int, neuron: int) -> list[dict]:
    """The rows of one neuron (dicts of the table's columns), in the file's order: the contrast's
    streams, then rank; [] when the table lacks it."""
    return sites_top_pairs(path, site, [layer], [neuron]).get((layer, neuron), [])


def sites_top_pairs(path: Path, site: str, layers: Sequence[int],
                    neurons: Sequence[int]) -> dict[tuple[int, int], list[dict]]:
    """{(layer, neuron): its rows} for some neurons of one site, in one read of the row groups
    that can hold them (each holds one site and layer: see `write_top_pairs`)."""
    import pyarrow.compute as pc

    wanted = set(map(int, layers))
    if not wanted:
        return {}
    reader = pq.ParquetFile(path)
    layer_at = reader.schema_arrow.get_field_index("layer")
    groups = [g for g in range(reader.num_row_groups)
              if _may_hold(reader.metadata.row_group(g).column(layer_at).statistics, wanted)]
    table = reader.read_row_groups(groups) if groups else SCHEMA.empty_table()
    keep = pc.and_(pc.equal(table["site"].cast(pa.string()), site),
                   pc.and_(pc.is_in(table["layer"], pa.array(sorted(wanted), pa.int16())),
                           pc.is_in(table["neuron"], pa.array(sorted(set(map(int, neurons))), pa.int32()))))
    out: dict[tuple[int, int], list[dict]] = {}
    for row in table.filter(keep).to_pylist():
        out.setdefault((row["layer"], row["neuron"]), []).append(row)
    return out


def _may_hold(stats, layers: set[int]) -> bool:
    return stats is None or not stats.has_min_max or any(stats.min <= layer <= stats.max for layer in layers)

