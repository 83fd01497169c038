"""The activation store: a zarr v3 group `DIR/activations.zarr`.

Layout: arrays `{site}/{stream}/{reduction}` of shape [input, layer, neuron] (float32, float16 or bfloat16,
dimension names set), `tokens/{stream}` [input] with the number of tokens each
reduction saw, and `input` [input], the pair ids: a dimension coordinate, so that xarray
(`xr.open_datatree(DIR/activations.zarr, engine="zarr")`) selects by pair id. Chunks are one
window of inputs (batch size x sort window: what extraction appends at once) by one layer by
all neurons, in a shard of every layer, so extraction appends whole shards; the analysis reads
ANALYSIS_BLOCK inputs of one layer at a time, whatever the chunking, so its results do not
depend on the batch size the store was recorded with. Metadata is consolidated after every
append (xarray opens it without a warning, in one read).

Why a ledger: arrays are appended per window, then the group attribute `n_done` is
updated, in the same write of the root zarr.json as the consolidated metadata. A crash
between the two leaves arrays longer than `n_done` (and the consolidated copy, which readers
like xarray use, still at the last finished window); opening the store trims them back, so
the rows that exist always belong to finished windows. Provenance
(model, weights, dtype, template, token scope, seed, manifest hash, versions) lives in
the group attributes, and a rerun into the same store must match it.

Every chunk carries a checksum, and every read is checked (store_integrity.py: a damaged or missing
shard is named in one line); what a resumed run must share with the store is store_match.py's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dataclasses
import warnings

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.group import ConsolidatedMetadata, GroupMetadata
from zarr.core.sync import sync

from modalscope import derived, store_dtypes
from modalscope.store_integrity import CheckedArray, StoreDamaged
from modalscope.store_match import MUST_MATCH, StoreMismatch, check_matches
from modalscope.store_writes import WRITE_CONFIG, all_nan, write_all
from modalscope.streams import ALWAYS_REDUCTIONS, UNIMODAL

# CheckedArray, StoreDamaged (store_integrity.py), MUST_MATCH, StoreMismatch (store_match.py): imported
# from here by callers, so kept importable from here.
__all__ = ["ANALYSIS_BLOCK", "STORE", "ActivationStore", "CheckedArray", "MUST_MATCH", "StoreDamaged",
           "StoreMismatch", "unchecked_note"]

STORE = "activations.zarr"
# By measurement (benchmarks/store_codecs.py, one core): on activation-like float32 blosc lz4
# with bit shuffle stores as little as zarr's default zstd (0.938 vs 0.940 of raw) at 0.80x its
# CPU time; fewer, bigger files (a shard per window holding every layer) halve the write cost.
COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle)
# Last in every chunk's codec pipeline: a checksum of the compressed bytes, verified on each read
# (4 bytes a chunk; measured on the tiny study in tests/test_integrity.py's module docstring).
CHECKSUM = Crc32cCodec()
VALUE_CODECS = (COMPRESSOR, CHECKSUM)
SMALL_CODECS = (ZstdCodec(level=0, checksum=False), CHECKSUM)  # [input] arrays: zarr's default, then the checksum
ANALYSIS_BLOCK = 256  # inputs per analysis read: a fixed size, so results do not depend on chunking


class ActivationStore:
    """One study's activation store: created or opened by the classmethods, appended to a
    window at a time, read a layer at a time (`read_layer`, holes filled)."""

    def __init__(self, group: zarr.Group, path: Path):
        self.group = group
        self.path = path
        self._counts: dict[str, np.ndarray] | None = None  # tokens/*, read once per ledger
        self._flags: dict[str, np.ndarray] = {}  # derived/*, read with them
        self._derived: dict[str, dict[str, str]] | None = None  # the attribute `derived`, read once
        self._arrays: dict[str, zarr.Array] = {}  # opened once per store object: writes go through these
        self._members: dict[str, Any] | None = None  # every node's metadata, for the consolidated copy
        self._present: dict[str, set[Path]] = {}  # files of recorded windows seen on disk, per array

    @classmethod
    def create(
        cls,
        path: Path,
        n_layers: int,
        widths: Mapping[str, int],
        batch_size: int,
        attrs: Mapping[str, Any],
        stats: Sequence[str] = ALWAYS_REDUCTIONS,
        conditions: Sequence[str] = UNIMODAL,
        window: int | None = None,
        dtype: str = "float32",
    ) -> "ActivationStore":
        """`window`: inputs appended at once (batch size x sort window). Each array is sharded by
        window and all layers: one file per window instead of one per batch and layer, and each
        append writes whole shards; the analysis still reads one layer (an inner chunk) at a time.
        `dtype`: of the stored values (store_dtypes.STORE_DTYPES: float32, float16, bfloat16, and why); reductions are computed in float32 either way."""
        store_dtypes.choose(dtype)
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        shards = window if window and window % batch_size == 0 else batch_size
        made = {}  # the arrays, kept for the appends (see _node): opened under WRITE_CONFIG
        with zarr.config.set(WRITE_CONFIG):
            for site, width in widths.items():
                for stream in conditions:
                    for reduction in stats:
                        name = f"{site}/{stream}/{reduction}"
                        made[name] = _value_array(group, name, (0, n_layers, width), shards, shards, dtype)
            made["input"] = group.create_array("input", shape=(0,), chunks=(max(batch_size, 1024),), dtype=str,
                                               compressors=SMALL_CODECS, dimension_names=("input",))
            for stream in conditions:
                made[f"tokens/{stream}"] = group.create_array(
                    f"tokens/{stream}",
                    shape=(0,),
                    chunks=(max(batch_size, 1024),),
                    dtype="int32",
                    fill_value=0,
                    compressors=SMALL_CODECS,
                    dimension_names=("input",),
                )
            for stream in derived.STREAM_RULES:
                if stream in conditions:
                    made[f"{derived.FLAGS}/{stream}"] = group.create_array(
                        f"{derived.FLAGS}/{stream}", shape=(0,), chunks=(max(batch_size, 1024),),
                        dtype="bool", fill_value=False, compressors=SMALL_CODECS, dimension_names=("input",))
        group.attrs.update(
            {**attrs, "sites": list(widths), "stats": list(stats), "conditions": list(conditions),
             "n_layers": n_layers, "n_done": 0, "store_dtype": dtype, "derived": derived.rules()}
        )
        store = cls(group, Path(path))
        store._arrays = {name: CheckedArray(array, name, store) for name, array in made.items()}
        # what zarr.consolidate_metadata would read back: the arrays, and their parents as the empty
        # implicit groups create_array made (tests/test_store.py compares the two)
        parents = {"/".join(name.split("/")[:i]) for name in made for i in range(1, name.count("/") + 1)}
        empty = GroupMetadata(consolidated_metadata=ConsolidatedMetadata(metadata={}))
        store._members = {**{p: empty for p in parents}, **{n: a.metadata for n, a in made.items()}}
        return store

    def widen(self, name: str) -> None:
        """Make the empty array `name` ({site}/{stream}/{reduction}) float32: decided on the first window,
        before anything is written, when its values would overflow the store dtype."""
        array = self._node(name)
        if array.shape[0] != 0:
            raise AssertionError(f"bug: widening {name}, which holds {array.shape[0]} inputs")
        chunks, shards = array.chunks[0], (array.shards or array.chunks)[0]
        shape = array.shape
        del self.group[name]
        with zarr.config.set(WRITE_CONFIG):  # kept for the appends (see _node); the next commit lists its metadata
            self._arrays[name] = CheckedArray(_value_array(self.group, name, shape, chunks, shards, "float32"),
                                              name, self)
        self.group.attrs["widened"] = sorted({*self.group.attrs.get("widened", []), name})

    @classmethod
    def open(cls, path: Path) -> "ActivationStore":
        """For appending (extraction, merging shards): rows past the ledger, left by a crash
        between an append and its ledger update, are trimmed first."""
        store = cls(zarr.open_group(str(cls._existing(path)), mode="r+", use_consolidated=False), Path(path))
        store._trim_to_ledger()
        return store

    @classmethod
    def read(cls, path: Path) -> "ActivationStore":
        """For reading (analysis, export, report): nothing is written, not even the trim;
        every read stops at the ledger (`n_done`), so rows past it are never seen."""
        return cls(zarr.open_group(str(cls._existing(path)), mode="r", use_consolidated=False), Path(path))

    @staticmethod
    def _existing(path: Path) -> Path:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no activation store; run `modalscope extract` first")
        return Path(path)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def n_done(self) -> int:
        return int(self.group.attrs["n_done"])

    @property
    def sites(self) -> list[str]:
        return list(self.group.attrs["sites"])

    @property
    def conditions(self) -> list[str]:
        """The streams recorded (the attribute keeps its first name, `conditions`: a file-format
        contract); `streams` says what they are."""
        return list(self.group.attrs.get("conditions", UNIMODAL))

    @property
    def streams(self) -> list[str]:
        """The streams recorded (streams.py): the same list as `conditions`."""
        return self.conditions

    @property
    def stats(self) -> list[str]:
        """The reductions recorded (the attribute `stats`, a file-format contract)."""
        return list(self.group.attrs.get("stats", ALWAYS_REDUCTIONS))

    @property
    def n_layers(self) -> int:
        return int(self.group.attrs["n_layers"])

    def array(self, site: str, stream: str, reduction: str) -> zarr.Array:
        """The [input, layer, neuron] array of one site, stream and reduction, as stored (holes
        included: `read_layer` fills them)."""
        return self._node(f"{site}/{stream}/{reduction}")

    def _node(self, name: str) -> zarr.Array:
        """The array `name`, opened once per store object (an open reads and validates its
        zarr.json: ~1 ms), appends and resizes through it keep its shape current; opened under
        WRITE_CONFIG, which an array takes when it is opened, not when it is written."""
        if name not in self._arrays:
            with zarr.config.set(WRITE_CONFIG):
                self._arrays[name] = CheckedArray(self.group[name], name, self)
        return self._arrays[name]

    def width(self, site: str) -> int:
        return int(self.array(site, UNIMODAL[0], ALWAYS_REDUCTIONS[0]).shape[2])

    def check_matches(self, attrs: Mapping[str, Any]) -> None:
        """One-line refusal naming the first difference between this store and a new run (store_match.py)."""
        check_matches(self.path, self.attrs, attrs)

    def append(
        self,
        records: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
        n_tokens: Mapping[str, Sequence[int]],
        pair_ids: Sequence[str] | None = None,
        flags: Mapping[str, Sequence[bool]] | None = None,
    ) -> None:
        """Append one batch: records[stream][site][reduction] is [batch, layer, neuron], with the
        holes of derived.punch; `flags` its derived/{stream} rows; `pair_ids` label its inputs
        (default: their input index)."""
        batch = len(next(iter(n_tokens.values())))
        writes = []  # (array, rows to append; None: all holes, only resized), written together
        for stream, rows in (flags or {}).items():
            writes.append((self._node(f"{derived.FLAGS}/{stream}"), np.asarray(rows, dtype=bool)))
        for stream, by_site in records.items():
            for site, by_reduction in by_site.items():
                for reduction, values in by_reduction.items():
                    array = self.array(site, stream, reduction)
                    writes.append((array, None if all_nan(values) else values.astype(array.dtype, copy=False)))
            writes.append((self._node(f"tokens/{stream}"), np.asarray(n_tokens[stream], dtype=np.int32)))
        if "input" in self._arrays or "input" in self.group:
            ids = [str(i) for i in range(self.n_done, self.n_done + batch)] if pair_ids is None else pair_ids
            writes.append((self._node("input"), np.asarray([str(i) for i in ids], dtype=str)))
        try:
            with zarr.config.set(WRITE_CONFIG):
                sync(write_all(writes, batch))
            self._commit({"n_done": self.n_done + batch})  # the ledger: written last
        except BaseException:
            self._arrays.clear()  # a half-written append: the next open trims; nothing cached is trusted
            self._members = None
            raise

    def consolidate(self) -> None:
        """Consolidated metadata in the root zarr.json, for readers that use it (xarray); our own
        opens never do (`use_consolidated=False`), so a stale copy cannot mislead an append."""
        with warnings.catch_warnings():  # "not part of the Zarr format 3 specification" (yet)
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(self.group.store)

    def _commit(self, attrs: Mapping[str, Any]) -> None:
        """Update the group attributes and the consolidated metadata in one write of the root
        zarr.json: what zarr.consolidate_metadata writes, without re-listing and re-reading every
        node's zarr.json each append (~20 ms). The nodes' metadata is read once per store object;
        the arrays opened through it (`_node`) carry their current shapes."""
        if self._members is None:
            members = {}
            for name, node in self.group.members(max_depth=None):
                meta = node.metadata
                if isinstance(node, zarr.Group):  # as zarr.consolidate_metadata marks an empty child group
                    meta = dataclasses.replace(meta, consolidated_metadata=ConsolidatedMetadata(metadata={}))
                members[name] = meta
            self._members = members
        for name, array in self._arrays.items():
            self._members[name] = array.metadata
        group = self.group.metadata
        root = dataclasses.replace(group, attributes={**group.attributes, **attrs},
                                   consolidated_metadata=ConsolidatedMetadata(metadata=dict(self._members)))
        sync((self.group.store_path / "zarr.json").set(root.to_buffer_dict(default_buffer_prototype())["zarr.json"]))
        group.attributes.update(attrs)  # then in memory, as zarr's update_attributes does

    def read_layer(
        self, site: str, stream: str, reduction: str, layer: int, start: int = 0, stop: int | None = None
    ) -> np.ndarray:
        """[input, neuron] float32 for one layer (inputs start:stop of the finished ones), the rows
        the store did not keep twice filled from their source (derived.py). float32 whatever the
        store dtype: a difference of two float16 arrays would otherwise be rounded to float16."""
        stop = self.n_done if stop is None else min(stop, self.n_done)
        values = self.array(site, stream, reduction)[start:stop, layer, :].astype(np.float32, copy=False)
        rules = self._rules()
        source = rules.get("stream", {}).get(stream)
        if source is not None and source in self.conditions:
            self.token_counts()  # reads the flags with the counts
            rows = self._flags[stream][start:stop]
            if rows.any():
                values[rows] = self.read_layer(site, source, reduction, layer, start, stop)[rows]
        fill = rules.get("stat", {}).get(reduction)  # the attribute's key names a reduction
        if fill is not None and fill in self.stats:
            counts = self.token_counts()
            rows = derived.shortest({c: n[start:stop] for c, n in counts.items()}, stream)
            if rows.any():
                values[rows] = self.read_layer(site, stream, fill, layer, start, stop)[rows]
        return values

    def holes(self, name: str, start: int, stop: int) -> np.ndarray:
        """[stop - start] bool: the rows of array `name` that derived.py left as holes (read_layer
        fills them from their source); none for the [input] arrays and stores made before it."""
        parts = name.split("/")
        rows = np.zeros(max(stop - start, 0), dtype=bool)
        if len(parts) != 3 or parts[0] not in self.sites:
            return rows
        _, stream, reduction = parts
        rules = self._rules()
        source = rules.get("stream", {}).get(stream)
        if source is not None and source in self.conditions:
            self.token_counts()
            rows |= self._flags.get(stream, np.zeros(self.n_done, dtype=bool))[start:stop]
        fill = rules.get("stat", {}).get(reduction)
        if fill is not None and fill in self.stats:
            counts = self.token_counts()
            rows |= derived.shortest({c: n[start:stop] for c, n in counts.items()}, stream)
        return rows

    @property
    def checksummed(self) -> bool:
        """Whether the store's value arrays carry chunk checksums (stores made before them do not:
        a changed byte there reads back unnoticed; a missing shard is still caught)."""
        array = self.array(self.sites[0], self.conditions[0], self.stats[0])
        codecs = getattr(array.metadata.codecs[0], "codecs", array.metadata.codecs)  # inside the shards
        return any(isinstance(c, Crc32cCodec) for c in codecs)

    def token_counts(self) -> dict[str, np.ndarray]:
        """{stream: [input]} content tokens of the finished inputs: read once per store object and
        ledger, not once per layer read."""
        if self._counts is None or len(next(iter(self._counts.values()))) != self.n_done:
            counts = {c: self._node(f"tokens/{c}")[: self.n_done] for c in self.conditions}
            self._flags = {s: self._node(f"{derived.FLAGS}/{s}")[: self.n_done] for s in derived.STREAM_RULES
                           if f"{derived.FLAGS}/{s}" in self.group}
            self._counts = counts
        return self._counts

    def _rules(self) -> dict[str, dict[str, str]]:
        """The group attribute `derived` (derived.rules(); empty for stores made before it), read once."""
        if self._derived is None:
            self._derived = dict(self.group.attrs.get("derived", {}))
        return self._derived

    def input_blocks(self, size: int | None = ANALYSIS_BLOCK) -> list[tuple[int, int]]:
        """[start, stop) ranges of `size` finished inputs (None: one chunk each), for streaming
        reads. A fixed size (not the chunk) makes every sum over inputs run in the same order
        whatever batch size recorded the store."""
        step = size or int(self.array(self.sites[0], UNIMODAL[0], ALWAYS_REDUCTIONS[0]).chunks[0])
        return [(s, min(s + step, self.n_done)) for s in range(0, self.n_done, step)]

    def pair_ids(self) -> list[str]:
        """The finished inputs' pair ids (a store without them: their input index)."""
        if "input" not in self.group:
            return [str(i) for i in range(self.n_done)]
        return [str(v) for v in self._node("input")[: self.n_done]]

    def _trim_to_ledger(self) -> None:
        done = self.n_done
        for site in self.sites:
            for stream in self.conditions:
                for reduction in self.stats:
                    array = self.array(site, stream, reduction)
                    if array.shape[0] != done:
                        array.resize((done, *array.shape[1:]))
        flags = [f"{derived.FLAGS}/{s}" for s in derived.STREAM_RULES if f"{derived.FLAGS}/{s}" in self.group]
        for name in [f"tokens/{c}" for c in self.conditions] + flags + (["input"] if "input" in self.group else []):
            array = self._node(name)
            if array.shape[0] != done:
                array.resize((done,))


def unchecked_note(path: "Path | ActivationStore") -> str | None:
    """One line when the store at `path` (or the store itself, as folder.study_store read it)
    predates chunk checksums (it still reads), else None."""
    if isinstance(path, ActivationStore):
        store, path = path, path.path
    elif not (Path(path) / "zarr.json").is_file():
        return None
    else:
        store = ActivationStore.read(path)
    if store.checksummed:
        return None
    return (f"{path}: made before chunk checksums: a damaged chunk would read unnoticed (a missing one is "
            "still caught); extract again into a new --out to have them")


def _value_array(group: zarr.Group, name: str, shape: tuple[int, ...], chunk: int, shard: int, dtype: str) -> zarr.Array:
    """A [input, layer, neuron] array of reduced values: NaN-filled (missing), sharded by window."""
    return group.create_array(
        name,
        shape=shape,
        chunks=(chunk, 1, shape[2]),
        shards=(shard, shape[1], shape[2]),
        dtype=store_dtypes.STORE_DTYPES[dtype],
        fill_value=float("nan"),
        compressors=VALUE_CODECS,
        dimension_names=("input", "layer", "neuron"),
    )
