"""How the store's appends write: the measured choices that keep a window's append cheap.

Why a module of its own: at 7B widths a window appends tens of arrays of [window, layer, neuron]
values, and zarr's defaults (a check of every chunk for fill values, one codec call per chunk,
one awaited append per array) cost more than the compression. What replaced them, and by how
much, is below; `ActivationStore.append` (store.py) uses all three.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import zarr

from modalscope import derived

# How appends write (measured, benchmarks/scale_goals.py): zarr's per-chunk check for an all-fill
# chunk (NaN) costs as much as compressing it, so it is off, and an array whose new rows are all
# holes is only resized instead; chunks go through the codecs 64 at a time, not one by one.
# 0.40 -> 0.14 ms CPU per pair per 44 kB. Then, at 7B widths (write_cost, CPU-s per pair at 32 layers,
# 0.044 -> 0.023 on a loaded machine, ~0.032 -> ~0.016 idle): zarr costs ~0.3 ms per chunk and ~2 ms
# per array append besides the compression, so a chunk is a whole window of one layer (a shard: one
# chunk per layer), the arrays' appends run together (write_all), the opened arrays are kept, and the
# consolidated metadata is written from memory with the ledger, not re-read from every zarr.json.
WRITE_CONFIG = {"array.write_empty_chunks": True, "codec_pipeline.batch_size": 64}


async def write_all(writes: Sequence[tuple[zarr.Array, np.ndarray | None]], batch: int) -> None:
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


def all_nan(values: np.ndarray) -> bool:
    """Whether every value is NaN (an array of holes). Any row whose first value is a number
    settles it without the full scan (numpy's isnan on float16 is a scalar loop: 5 ms per 4 MB)."""
    if derived.is_holes(values):
        return True
    if values.size and not np.isnan(values[(slice(None),) + (0,) * (values.ndim - 1)]).all():
        return False
    return bool(np.isnan(values).all())
