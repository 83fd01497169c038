"""Store writes on a background thread, so the next window's forwards run while the last
one is compressed and written.

Why: at LLaVA-7B widths a pair's reductions are 8-50 MB; appending them to zarr (zstd) runs
at a few hundred MB/s on one core, which would otherwise stall the GPU between windows.
One writer thread keeps the order of windows and the ledger rule of `ActivationStore.append`
(arrays first, then `n_done`), so a kill still leaves only whole windows. The queue holds
one window, which bounds host memory to two windows. A write error (disk full, read-only)
is raised in the caller at the next `put` or when the block ends, never lost.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from modalscope.store import ActivationStore

_DONE = object()


class StoreWriter(AbstractContextManager["StoreWriter"]):
    def __init__(self, store: ActivationStore):
        self.store = store
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="modalscope-store-writer", daemon=True)

    def __enter__(self) -> "StoreWriter":
        self._thread.start()
        return self

    def put(self, records: Mapping[str, Any], n_tokens: Mapping[str, Any],
            pair_ids: Sequence[str] | None = None, flags: Mapping[str, Any] | None = None) -> None:
        """Queue one window (blocks while the previous one is still being written)."""
        self._raise_if_failed()
        while True:
            try:
                self._queue.put((records, n_tokens, pair_ids, flags), timeout=0.5)
                return
            except queue.Full:
                self._raise_if_failed()

    def __exit__(self, exc_type, exc, tb) -> None:
        """Wait for queued windows (also when the caller failed: finished work is kept)."""
        if self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()
        if exc is None:
            self._raise_if_failed()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is None:  # after a failure, drain without writing
                try:
                    self.store.append(*item)
                except BaseException as err:  # noqa: BLE001 - handed to the caller
                    self._error = err

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
