"""Which pairs share a forward: batches sorted by caption length inside windows of the manifest.

Why windows: sorting by length cuts padding (a text batch is as long as its longest
caption; so is an image_text batch, 576 image tokens plus the caption), but records must
keep manifest order and be committed in contiguous, chunk-aligned appends, so that the
ledger stays a single count and a SIGKILL loses at most one unit of work. A window is
`sort_window` consecutive batches of the manifest: its pairs are sorted by caption length,
longest first (stable: ties in manifest order; a short last batch gets the shortest pairs,
and the longest batch runs first, so a too-large batch size fails at once), cut into batches, recorded, put back in manifest order in
host memory, and appended at once. The plan depends only on the manifest, the tokenizer,
the batch size and the window, so a resumed run and every torchrun rank form exactly the
batches a single uninterrupted run forms, and results stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_SORT_WINDOW = 8  # batches per window when memory allows
WINDOW_BUFFER_BYTES = 1 << 30  # host memory for one window's reductions


@dataclass(frozen=True)
class Window:
    start: int  # first manifest row (absolute)
    stop: int
    batches: tuple[np.ndarray, ...]  # absolute manifest rows of each forward, sorted by length


def plan_windows(lengths: Sequence[int], start: int, batch_size: int, sort_window: int) -> list[Window]:
    """Windows over rows start..start+len(lengths); `lengths[i]` belongs to row start + i."""
    lengths = np.asarray(lengths)
    rows = batch_size * sort_window
    windows = []
    for lo in range(0, len(lengths), rows):
        hi = min(lo + rows, len(lengths))
        order = lo + np.argsort(-lengths[lo:hi], kind="stable")  # longest first
        batches = tuple(start + order[i : i + batch_size] for i in range(0, len(order), batch_size))
        windows.append(Window(start + lo, start + hi, batches))
    return windows


def default_sort_window(batch_size: int, row_bytes: int) -> int:
    """Up to MAX_SORT_WINDOW batches, as many as fit WINDOW_BUFFER_BYTES of host buffer
    (a LLaVA-7B row with every reduction and stream is ~50 MB, so big studies get 1-2)."""
    fits = WINDOW_BUFFER_BYTES // max(1, batch_size * row_bytes)
    return int(min(MAX_SORT_WINDOW, max(1, fits)))
