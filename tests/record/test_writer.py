"""The background store writer keeps the order of windows, writes what was queued even when
the caller fails, and hands a write error back to the caller."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from modalscope.record.writer import StoreWriter


class SlowStore:
    def __init__(self, fail_at: int | None = None):
        self.written: list[int] = []
        self.threads: set[str] = set()
        self.fail_at = fail_at

    def append(self, records, n_tokens, pair_ids=None, flags=None) -> None:
        time.sleep(0.02)
        self.threads.add(threading.current_thread().name)
        if records == self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device", "chunk")
        self.written.append(records)


def test_windows_are_written_in_order_off_the_calling_thread():
    store = SlowStore()
    with StoreWriter(store) as writer:
        for window in range(6):
            writer.put(window, {})
    assert store.written == list(range(6))
    assert store.threads == {"modalscope-store-writer"}


def test_a_write_error_reaches_the_caller_and_stops_writing():
    store = SlowStore(fail_at=2)
    with pytest.raises(OSError, match="No space left"):
        with StoreWriter(store) as writer:
            for window in range(8):
                writer.put(window, {})
                time.sleep(0.03)  # the writer gets to window 2 before the loop ends
    assert store.written == [0, 1]


def test_queued_windows_are_kept_when_the_caller_fails():
    store = SlowStore()
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(store) as writer:
            writer.put(0, {})
            writer.put(1, {})
            raise KeyboardInterrupt
    assert store.written == [0, 1]
