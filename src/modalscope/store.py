"""The activation store: a zarr v3 group `DIR/activations.zarr`.

Layout: arrays `{site}/{condition}/{stat}` of shape [input, layer, neuron] (float32, float16 or bfloat16,
dimension names set), `tokens/{condition}` [input] with the number of tokens each
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

Why every chunk carries a checksum: a flipped byte in a blosc chunk decodes to other numbers
without an error, and a deleted shard reads as NaN (zarr's fill value), so a damaged store
would be analysed as if it were whole. Each chunk's codecs end with zarr v3's `crc32c` (4 bytes
a chunk; the shards' indexes have their own), every read of a recorded row is checked against it,
and a shard of a recorded window that is absent is an error unless every row of it is a hole
(derived.py: such a window is never written). Either stops the reader in one line naming the
array, the window and the file (StoreDamaged). Stores written before the checksums still read:
a missing shard is caught there too, a changed byte is not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncio
import dataclasses
import warnings

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.group import ConsolidatedMetadata, GroupMetadata
from zarr.core.sync import sync

from modalscope import derived, store_dtypes
from modalscope.record.reductions import ALWAYS
from modalscope.streams import UNIMODAL

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
# How appends write (measured, benchmarks/scale_goals.py): zarr's per-chunk check for an all-fill
# chunk (NaN) costs as much as compressing it, so it is off, and an array whose new rows are all
# holes is only resized instead; chunks go through the codecs 64 at a time, not one by one.
# 0.40 -> 0.14 ms CPU per pair per 44 kB. Then, at 7B widths (write_cost, CPU-s per pair at 32 layers,
# 0.044 -> 0.023 on a loaded machine, ~0.032 -> ~0.016 idle): zarr costs ~0.3 ms per chunk and ~2 ms
# per array append besides the compression, so a chunk is a whole window of one layer (a shard: one
# chunk per layer), the arrays' appends run together (_write_all), the opened arrays are kept, and the
# consolidated metadata is written from memory with the ledger, not re-read from every zarr.json.
WRITE_CONFIG = {"array.write_empty_chunks": True, "codec_pipeline.batch_size": 64}
# Attributes a resumed run must share with the store, with the user-facing name of each.
MUST_MATCH = {
    "model": "model",
    "weights": "weights (revision or fingerprint)",
    "dtype": "dtype",
    "quantization": "quantization",
    "chat_template": "chat template",
    "tokens": "token scope",
    "sites": "sites",
    "stats": "statistics",
    "conditions": "conditions",
    "quantile": "quantile",
    "store_dtype": "store dtype",
    "manifest_hash": "manifest",
}


class StoreMismatch(ValueError):
    """The store in DIR was made by a different study."""


class StoreDamaged(ValueError):
    """A chunk of a recorded window is damaged or missing; the message is one line naming the
    array, the window (its inputs) and the file."""


class ActivationStore:
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
        stats: Sequence[str] = ALWAYS,
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
                for condition in conditions:
                    for stat in stats:
                        name = f"{site}/{condition}/{stat}"
                        made[name] = _value_array(group, name, (0, n_layers, width), shards, shards, dtype)
            made["input"] = group.create_array("input", shape=(0,), chunks=(max(batch_size, 1024),), dtype=str,
                                               compressors=SMALL_CODECS, dimension_names=("input",))
            for condition in conditions:
                made[f"tokens/{condition}"] = group.create_array(
                    f"tokens/{condition}",
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
        """Make the empty array `name` ({site}/{stream}/{stat}) float32: decided on the first window,
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
        return list(self.group.attrs.get("conditions", UNIMODAL))

    @property
    def stats(self) -> list[str]:
        return list(self.group.attrs.get("stats", ALWAYS))

    @property
    def n_layers(self) -> int:
        return int(self.group.attrs["n_layers"])

    def array(self, site: str, condition: str, stat: str) -> zarr.Array:
        return self._node(f"{site}/{condition}/{stat}")

    def _node(self, name: str) -> zarr.Array:
        """The array `name`, opened once per store object (an open reads and validates its
        zarr.json: ~1 ms), appends and resizes through it keep its shape current; opened under
        WRITE_CONFIG, which an array takes when it is opened, not when it is written."""
        if name not in self._arrays:
            with zarr.config.set(WRITE_CONFIG):
                self._arrays[name] = CheckedArray(self.group[name], name, self)
        return self._arrays[name]

    def width(self, site: str) -> int:
        return int(self.array(site, UNIMODAL[0], ALWAYS[0]).shape[2])

    def check_matches(self, attrs: Mapping[str, Any]) -> None:
        """One-line refusal naming the first difference between this store and a new run."""
        mine = self.attrs
        self._check_weights(mine, attrs)
        for key, label in MUST_MATCH.items():
            if key in attrs and mine.get(key) != attrs[key]:
                raise StoreMismatch(
                    f"{self.path}: holds a study with a different {label} "
                    f"({_short(mine.get(key))} vs {_short(attrs[key])}); "
                    "use a new output directory"
                )

    def _check_weights(self, mine: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        """The weight files' content (`weights_files`, {file: sha256}: models/loading.weights_content)
        against what the store recorded, naming the first file that differs, appeared or is gone.
        A store made before it has only `weights` (names and sizes): not checked here."""
        then, now = mine.get("weights_files"), attrs.get("weights_files")
        if not then or now is None:
            return
        model = attrs.get("model", mine.get("model", "--model"))
        for name in sorted({*then, *now}):
            if then.get(name) == now.get(name):
                continue
            what = (f"is gone (sha256 {then[name][:12]}... when recorded)" if name not in now else
                    "is new (recorded without it)" if name not in then else
                    f"has other content (sha256 {then[name][:12]}... when recorded, {now[name][:12]}... now)")
            raise StoreMismatch(
                f"{self.path}: the model's weights changed since this study was recorded: {Path(model) / name} "
                f"{what}; restore the weights it was recorded with, or use a new output directory")

    def append(
        self,
        records: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
        n_tokens: Mapping[str, Sequence[int]],
        pair_ids: Sequence[str] | None = None,
        flags: Mapping[str, Sequence[bool]] | None = None,
    ) -> None:
        """Append one batch: records[condition][site][stat] is [batch, layer, neuron], with the
        holes of derived.punch; `flags` its derived/{stream} rows; `pair_ids` label its inputs
        (default: their input index)."""
        batch = len(next(iter(n_tokens.values())))
        writes = []  # (array, rows to append; None: all holes, only resized), written together
        for stream, rows in (flags or {}).items():
            writes.append((self._node(f"{derived.FLAGS}/{stream}"), np.asarray(rows, dtype=bool)))
        for condition, by_site in records.items():
            for site, by_stat in by_site.items():
                for stat, values in by_stat.items():
                    array = self.array(site, condition, stat)
                    writes.append((array, None if _all_nan(values) else values.astype(array.dtype, copy=False)))
            writes.append((self._node(f"tokens/{condition}"), np.asarray(n_tokens[condition], dtype=np.int32)))
        if "input" in self._arrays or "input" in self.group:
            ids = [str(i) for i in range(self.n_done, self.n_done + batch)] if pair_ids is None else pair_ids
            writes.append((self._node("input"), np.asarray([str(i) for i in ids], dtype=str)))
        try:
            with zarr.config.set(WRITE_CONFIG):
                sync(_write_all(writes, batch))
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
        self, site: str, condition: str, stat: str, layer: int, start: int = 0, stop: int | None = None
    ) -> np.ndarray:
        """[input, neuron] float32 for one layer (inputs start:stop of the finished ones), the rows
        the store did not keep twice filled from their source (derived.py). float32 whatever the
        store dtype: a difference of two float16 arrays would otherwise be rounded to float16."""
        stop = self.n_done if stop is None else min(stop, self.n_done)
        values = self.array(site, condition, stat)[start:stop, layer, :].astype(np.float32, copy=False)
        rules = self._rules()
        source = rules.get("stream", {}).get(condition)
        if source is not None and source in self.conditions:
            self.token_counts()  # reads the flags with the counts
            rows = self._flags[condition][start:stop]
            if rows.any():
                values[rows] = self.read_layer(site, source, stat, layer, start, stop)[rows]
        fill = rules.get("stat", {}).get(stat)
        if fill is not None and fill in self.stats:
            counts = self.token_counts()
            rows = derived.shortest({c: n[start:stop] for c, n in counts.items()}, condition)
            if rows.any():
                values[rows] = self.read_layer(site, condition, fill, layer, start, stop)[rows]
        return values

    def holes(self, name: str, start: int, stop: int) -> np.ndarray:
        """[stop - start] bool: the rows of array `name` that derived.py left as holes (read_layer
        fills them from their source); none for the [input] arrays and stores made before it."""
        parts = name.split("/")
        rows = np.zeros(max(stop - start, 0), dtype=bool)
        if len(parts) != 3 or parts[0] not in self.sites:
            return rows
        _, condition, stat = parts
        rules = self._rules()
        source = rules.get("stream", {}).get(condition)
        if source is not None and source in self.conditions:
            self.token_counts()
            rows |= self._flags.get(condition, np.zeros(self.n_done, dtype=bool))[start:stop]
        fill = rules.get("stat", {}).get(stat)
        if fill is not None and fill in self.stats:
            counts = self.token_counts()
            rows |= derived.shortest({c: n[start:stop] for c, n in counts.items()}, condition)
        return rows

    @property
    def checksummed(self) -> bool:
        """Whether the store's value arrays carry chunk checksums (stores made before them do not:
        a changed byte there reads back unnoticed; a missing shard is still caught)."""
        array = self.array(self.sites[0], self.conditions[0], self.stats[0])
        codecs = getattr(array.metadata.codecs[0], "codecs", array.metadata.codecs)  # inside the shards
        return any(isinstance(c, Crc32cCodec) for c in codecs)

    def check_present(self, name: str, array: zarr.Array, start: int, stop: int, selection: Any = None) -> None:
        """Every shard of array `name` holding recorded rows in [start, stop) is on disk, unless
        all its recorded rows are holes (a window of holes is never written). Each shard is looked
        for once per store object."""
        stop = min(stop, self.n_done)
        if stop <= start:
            return
        size = int((array.shards or array.chunks)[0])
        seen = self._present.setdefault(name, set())
        for window in range(start // size, (stop - 1) // size + 1):
            path = self._chunk_file(name, array, window, selection)
            if path in seen:
                continue
            if not path.exists():
                first, last = window * size, min((window + 1) * size, self.n_done)
                if not self.holes(name, first, last).all():
                    raise StoreDamaged(
                        f"{self.path}: {name}, {_window(array)} {window} (inputs {first}-{last - 1}): its file "
                        f"{path} is missing, though the ledger (n_done) records {self.n_done} inputs; the store "
                        "cannot be analysed: restore DIR from a copy or extract again into a new --out")
            seen.add(path)

    def damaged(self, name: str, array: zarr.Array, selection: Any, start: int, stop: int) -> StoreDamaged | None:
        """After a read of `name` failed: its windows read again one by one, and the one-line error
        naming the first that fails to decode (checksum, truncation), or None when each reads alone
        (then the failure was not the store's)."""
        size = int((array.shards or array.chunks)[0])
        rest = selection[1:] if isinstance(selection, tuple) else ()
        stop = max(min(stop, array.shape[0]), start + 1)
        for window in range(start // size, (stop - 1) // size + 1):
            try:
                zarr.Array.__getitem__(array, (slice(window * size, min((window + 1) * size, array.shape[0])), *rest))
            except Exception as error:  # noqa: BLE001 - whatever the decoder raises, this window is it
                first, last = window * size, min((window + 1) * size, max(self.n_done, 1))
                reason = " ".join(str(error).split()).split(". Stored:")[0][:120] or "unreadable"
                return StoreDamaged(
                    f"{self.path}: {name}, {_window(array)} {window} (inputs {first}-{last - 1}, file "
                    f"{self._chunk_file(name, array, window, selection)}) is damaged ({type(error).__name__}: {reason}); "
                    "its values cannot be trusted: restore DIR from a copy or extract again into a new --out")
        return None

    def _chunk_file(self, name: str, array: zarr.Array, window: int, selection: Any = None) -> Path:
        """The file of window `window` of array `name`: its shard (every layer), or in an unsharded
        array (stores made before shards) the chunk of the layer `selection` reads (default: the first)."""
        coords = [window] + [0] * (len(array.shape) - 1)
        rest = selection[1:] if isinstance(selection, tuple) else ()
        if array.shards is None:
            for axis, index in enumerate(rest, start=1):
                if isinstance(index, (int, np.integer)) and axis < len(coords):
                    coords[axis] = int(index) % max(array.shape[axis], 1) // int(array.chunks[axis])
        return self.path / name / array.metadata.encode_chunk_key(tuple(coords))

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
        step = size or int(self.array(self.sites[0], UNIMODAL[0], ALWAYS[0]).chunks[0])
        return [(s, min(s + step, self.n_done)) for s in range(0, self.n_done, step)]

    def pair_ids(self) -> list[str]:
        """The finished inputs' pair ids (a store without them: their input index)."""
        if "input" not in self.group:
            return [str(i) for i in range(self.n_done)]
        return [str(v) for v in self._node("input")[: self.n_done]]

    def _trim_to_ledger(self) -> None:
        done = self.n_done
        for site in self.sites:
            for condition in self.conditions:
                for stat in self.stats:
                    array = self.array(site, condition, stat)
                    if array.shape[0] != done:
                        array.resize((done, *array.shape[1:]))
        flags = [f"{derived.FLAGS}/{s}" for s in derived.STREAM_RULES if f"{derived.FLAGS}/{s}" in self.group]
        for name in [f"tokens/{c}" for c in self.conditions] + flags + (["input"] if "input" in self.group else []):
            array = self._node(name)
            if array.shape[0] != done:
                array.resize((done,))


def unchecked_note(path: Path) -> str | None:
    """One line when the store at `path` predates chunk checksums (it still reads), else None."""
    if not (Path(path) / "zarr.json").is_file():
        return None
    store = ActivationStore.read(path)
    if store.checksummed:
        return None
    return (f"{path}: made before chunk checksums: a damaged chunk would read unnoticed (a missing one is "
            "still caught); extract again into a new --out to have them")


async def _write_all(writes: Sequence[tuple[zarr.Array, np.ndarray | None]], batch: int) -> None:
    """Every array's append in one pass of zarr's event loop (one by one, each waits for its
    own: ~2 ms more per array); the first error is raised once all have finished."""
    async def one(array: zarr.Array, rows: np.ndarray | None) -> None:
        target = array.async_array
        if rows is None:
            await target.resize((target.shape[0] + batch, *target.shape[1:]))
        else:
            await target.append(rows, axis=0)

    done = await asyncio.gather(*(one(a, r) for a, r in writes), return_exceptions=True)
    for outcome in done:
        if isinstance(outcome, BaseException):
            raise outcome


def _all_nan(values: np.ndarray) -> bool:
    """Whether every value is NaN (an array of holes). Any row whose first value is a number
    settles it without the full scan (numpy's isnan on float16 is a scalar loop: 5 ms per 4 MB)."""
    if derived.is_holes(values):
        return True
    if values.size and not np.isnan(values[(slice(None),) + (0,) * (values.ndim - 1)]).all():
        return False
    return bool(np.isnan(values).all())


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


class CheckedArray(zarr.Array):
    """A zarr array of the store whose reads are checked: a recorded window's shard must be on
    disk (ActivationStore.check_present) and decode (its checksums match); either failure is a
    one-line StoreDamaged naming the array, the window and the file. Writes are zarr's own."""

    def __init__(self, array: zarr.Array, name: str, owner: ActivationStore) -> None:
        super().__init__(array.async_array)
        self._name, self._owner = name, owner

    def __getitem__(self, selection: Any) -> Any:
        start, stop = _input_rows(selection, self.shape[0])
        self._owner.check_present(self._name, self, start, stop, selection)
        try:
            return super().__getitem__(selection)
        except Exception as err:
            # zarr's crc32c ("Stored and computed checksum do not match"), blosc, a shard index that
            # cannot be parsed: named when a window fails alone; anything else is raised as it was
            damage = self._owner.damaged(self._name, self, selection, start, stop)
            if damage is None:
                raise
            raise damage from err


def _input_rows(selection: Any, n: int) -> tuple[int, int]:
    """The [start, stop) rows of the input axis a selection reads (all of them when not a plain
    index or slice)."""
    first = selection[0] if isinstance(selection, tuple) and selection else selection
    if isinstance(first, slice) and first.step in (None, 1):
        start, stop, _ = first.indices(n)
        return start, max(start, stop)
    if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
        index = int(first) + (n if first < 0 else 0)
        return index, index + 1
    return 0, n


def _window(array: zarr.Array) -> str:
    """What one shard of the input axis is: a window (value arrays) or a chunk ([input] arrays)."""
    return "window" if array.shards is not None else "chunk"


def _short(value: Any) -> str:
    """A one-line, bounded rendering (chat templates hold newlines)."""
    text = " ".join(str(value).split())
    return text if len(text) <= 60 else text[:57] + "..."
