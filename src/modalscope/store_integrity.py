"""Reads of the activation store that cannot return damaged numbers: every chunk is checked.

Why every chunk carries a checksum: a flipped byte in a blosc chunk decodes to other numbers
without an error, and a deleted shard reads as NaN (zarr's fill value), so a damaged store
would be analysed as if it were whole. Each chunk's codecs end with zarr v3's `crc32c` (4 bytes
a chunk; the shards' indexes have their own: store.py's VALUE_CODECS), every read of a recorded
row is checked against it, and a shard of a recorded window that is absent is an error unless
every row of it is a hole (derived.py: such a window is never written). Either stops the reader
in one line naming the array, the window and the file (StoreDamaged). Stores written before the
checksums still read: a missing shard is caught there too, a changed byte is not.

Every array the store opens is a `CheckedArray`; `check_present` and `damaged` are its two
checks, given the store for its ledger (`n_done`), its holes and its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

if TYPE_CHECKING:
    from modalscope.store import ActivationStore


class StoreDamaged(ValueError):
    """A chunk of a recorded window is damaged or missing; the message is one line naming the
    array, the window (its inputs) and the file."""


class CheckedArray(zarr.Array):
    """A zarr array of the store whose reads are checked: a recorded window's shard must be on
    disk (`check_present`) and decode (its checksums match); either failure is a one-line
    StoreDamaged naming the array, the window and the file. Writes are zarr's own."""

    def __init__(self, array: zarr.Array, name: str, owner: ActivationStore) -> None:
        super().__init__(array.async_array)
        self._name, self._owner = name, owner

    def __getitem__(self, selection: Any) -> Any:
        start, stop = _input_rows(selection, self.shape[0])
        check_present(self._owner, self._name, self, start, stop, selection)
        try:
            return super().__getitem__(selection)
        except Exception as err:
            # zarr's crc32c ("Stored and computed checksum do not match"), blosc, a shard index that
            # cannot be parsed: named when a window fails alone; anything else is raised as it was
            damage = damaged(self._owner, self._name, self, selection, start, stop)
            if damage is None:
                raise
            raise damage from err


def check_present(store: ActivationStore, name: str, array: zarr.Array, start: int, stop: int,
                  selection: Any = None) -> None:
    """Every shard of array `name` holding recorded rows in [start, stop) is on disk, unless
    all its recorded rows are holes (a window of holes is never written). Each shard is looked
    for once per store object (`store._present`)."""
    stop = min(stop, store.n_done)
    if stop <= start:
        return
    size = int((array.shards or array.chunks)[0])
    seen = store._present.setdefault(name, set())
    for window in range(start // size, (stop - 1) // size + 1):
        path = chunk_file(store.path, name, array, window, selection)
        if path in seen:
            continue
        if not path.exists():
            first, last = window * size, min((window + 1) * size, store.n_done)
            if not store.holes(name, first, last).all():
                raise StoreDamaged(
                    f"{store.path}: {name}, {_window(array)} {window} (inputs {first}-{last - 1}): its file "
                    f"{path} is missing, though the ledger (n_done) records {store.n_done} inputs; the store "
                    "cannot be analysed: restore DIR from a copy or extract again into a new --out")
        seen.add(path)


def damaged(store: ActivationStore, name: str, array: zarr.Array, selection: Any, start: int,
            stop: int) -> StoreDamaged | None:
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
            first, last = window * size, min((window + 1) * size, max(store.n_done, 1))
            reason = " ".join(str(error).split()).split(". Stored:")[0][:120] or "unreadable"
            return StoreDamaged(
                f"{store.path}: {name}, {_window(array)} {window} (inputs {first}-{last - 1}, file "
                f"{chunk_file(store.path, name, array, window, selection)}) is damaged ({type(error).__name__}: "
                f"{reason}); its values cannot be trusted: restore DIR from a copy or extract again into a new --out")
    return None


def chunk_file(root: Path, name: str, array: zarr.Array, window: int, selection: Any = None) -> Path:
    """The file of window `window` of array `name` under the store at `root`: its shard (every
    layer), or in an unsharded array (stores made before shards) the chunk of the layer
    `selection` reads (default: the first)."""
    coords = [window] + [0] * (len(array.shape) - 1)
    rest = selection[1:] if isinstance(selection, tuple) else ()
    if array.shards is None:
        for axis, index in enumerate(rest, start=1):
            if isinstance(index, (int, np.integer)) and axis < len(coords):
                coords[axis] = int(index) % max(array.shape[axis], 1) // int(array.chunks[axis])
    return root / name / array.metadata.encode_chunk_key(tuple(coords))


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
