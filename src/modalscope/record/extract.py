"""The extraction loop: every stream of each pair, reduced on the device, stored per window.

A pair is recorded as two streams (the caption alone, `text`, and the image alone, `image`),
plus the joint ones with `--conditions image_text` and `text_base` with `--base-model`
(streams.py); record/forwards.py runs one batch's forwards. Why this shape: the text-only
forward gets only token ids (the vision modules never run, and a guard raises if one would);
the image-only forward gets the minimal prompt and the pixels. We call the family's forward
entry (for LLaVA the inner `LlavaModel`, `model.model`), not the generation head: the
lm_head's vocabulary projection is not needed for recording. Batches are prepared by
DataLoader workers (record/batches.py). Progress is committed per window of batches (see
record/plan.py), so a rerun of the same command continues after the last finished window.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modalscope import derived
from modalscope.data.pairs import DataError
from modalscope.derived import Records
from modalscope.models.loading import LoadedModel
from modalscope.record.batches import PairBatches
from modalscope.record.forwards import forward_all
from modalscope.record.hooks import Recorder
from modalscope.record.inputs import PromptBuilder, TokenScope
from modalscope.record.plan import plan_windows
from modalscope.record.reductions import ReductionSpec
from modalscope.record.writer import StoreWriter
from modalscope.store import ActivationStore
from modalscope.store_dtypes import NARROW, largest
from modalscope.tables import write_frame

# Re-exported for one release: their home is record/forwards.py since issue 22 (callers import them from here).
from modalscope.record.forwards import for_base, matched_k, reduce_content, reduce_forward  # noqa: F401
from modalscope.outputs import NONFINITE  # the table's name; its one home: outputs.py


class ExtractionError(ValueError):
    """Extraction stopped for a reason the user can act on (one line); finished windows are kept."""




@dataclass(frozen=True)
class Extraction:
    """How a store is recorded: which sites and reductions, over which tokens, in what batches.

    `sort_window`: batches per length-sorted window (record/plan.py); `workers`: DataLoader
    processes preparing batches (0: in this process); `auto_batch`: halve the batch size on
    out-of-memory instead of stopping."""

    sites: tuple[str, ...]
    tokens: TokenScope = "content"
    batch_size: int = 16
    reductions: ReductionSpec = ReductionSpec()
    image_text: bool = False
    workers: int = 0
    sort_window: int = 1
    auto_batch: bool = False
    progress: bool = True


def extract(loaded: LoadedModel, manifest: pd.DataFrame, store: ActivationStore, how: Extraction,
            builder: PromptBuilder | None = None, base: LoadedModel | None = None) -> int:
    """Record every unfinished input of `manifest` into `store`; returns how many were added.
    With `base` (the base language model), its text stream too, from the same token ids.

    Pairs are batched by caption length inside windows of `how.sort_window` batches (see
    record/plan.py); each window is appended in manifest order once all its batches are
    done, then the ledger advances. Batches are prepared by `how.workers` DataLoader
    processes, pinned when the model is on a GPU so the copies to it do not block; results
    come back to the host once per batch.

    Out of device memory: with `auto_batch` the batch size is halved and the unfinished
    window replanned (the store records the size in use, so a resume cuts the same
    windows); otherwise a one-line ExtractionError names the batch size to try. Non-finite
    reductions (fp16 overflow, NaN) stop the run: averaging them would poison every
    statistic, so the pairs are listed in DIR/nonfinite.parquet and the message says which
    dtype to use instead.
    """
    start = store.n_done
    builder = builder or PromptBuilder.for_model(loaded, how.tokens)  # one for every retry: it remembers cuts
    bar = tqdm(total=len(manifest), initial=start, unit="pair", desc="extract", disable=not how.progress)
    while True:
        try:
            _extract_windows(loaded, manifest, store, how, builder, bar, base)
            break
        except torch.OutOfMemoryError:
            _release_memory(loaded)
            first = manifest["pair_id"].iloc[store.n_done]
            size = how.batch_size
            if not how.auto_batch or size == 1:
                smaller = f"--batch-size {max(1, size // 2)} or --batch-size auto" if size > 1 else (
                    "a smaller --dtype (float16/bfloat16), --quantization or --device-map auto")
                raise ExtractionError(
                    f"out of memory on {loaded.device} at --batch-size {size} (window from pair {first}); "
                    f"rerun the same command with {smaller}: the {store.n_done} finished pairs are kept"
                ) from None
            how = replace(how, batch_size=size // 2)
            store.group.attrs["batch_size"] = how.batch_size
            bar.n = store.n_done
            bar.write(f"out of memory at pair {first}: batch size halved to {how.batch_size}")
    bar.close()
    return len(manifest) - start


def _extract_windows(loaded: LoadedModel, manifest: pd.DataFrame, store: ActivationStore, how: Extraction,
                     builder: PromptBuilder, bar: tqdm, base: LoadedModel | None = None) -> None:
    start = store.n_done
    if start >= len(manifest):
        return
    captions = builder.fit_captions(manifest["caption"].iloc[start:])  # as the batches will cut them
    lengths = builder.caption_tokens(captions)
    windows = plan_windows(lengths, start, how.batch_size, how.sort_window)
    batches = DataLoader(
        PairBatches(manifest, builder, [b for w in windows for b in w.batches], how.image_text),
        batch_size=None,
        num_workers=how.workers,
        pin_memory=loaded.device.type == "cuda",
        collate_fn=None,
    )
    items = iter(batches)
    recorder = Recorder(loaded.model, loaded.adapter, how.sites, how.reductions)
    base_recorder = Recorder(base.model, base.adapter, how.sites, how.reductions) if base else nullcontext()
    narrow = narrow_arrays(store)
    holes = bool(store.attrs.get("derived"))  # a store made before derived.py keeps every row
    clock = time.perf_counter()
    with recorder, base_recorder, StoreWriter(store) as writer:
        for number, window in enumerate(windows):
            done = []
            for rows in window.batches:
                item = next(items)
                if "error" in item:
                    raise DataError(item["error"])
                records, n_tokens = forward_all(loaded, recorder, item, how.image_text,
                                                 (base, base_recorder) if base else None)
                _check_finite(records, rows, manifest, store, loaded)
                _check_range(records, rows, manifest, store, number == 0 and store.n_done == 0, narrow)
                done.append((as_stored(records, narrow), n_tokens))
                bar.update(item["n"])
            rows = np.concatenate(window.batches)
            records, n_tokens = _in_manifest_order(done, np.argsort(rows, kind="stable"))
            pair_ids = manifest["pair_id"].iloc[np.sort(rows)].astype(str).tolist()
            records, flags = derived.punch(records, n_tokens) if holes else (records, {})
            writer.put(records, n_tokens, pair_ids, flags)  # written while the next window runs
            if number == 0 and len(windows) > 1 and how.progress:
                bar.write(_pace(len(rows), time.perf_counter() - clock, len(manifest) - start - len(rows)),
                          file=sys.stderr)


def _pace(done: int, seconds: float, left: int) -> str:
    """After the first window: the measured rate and the time the rest will take at it."""
    rate = done / max(seconds, 1e-9)
    minutes = left / rate / 60
    when = f"{minutes:.0f} min" if minutes >= 1 else f"{minutes * 60:.0f} s"
    return f"measured {rate:.2f} pairs/s over the first {done} pairs: about {when} for the other {left:,}"


def _release_memory(loaded: LoadedModel) -> None:
    if loaded.device.type == "cuda":
        torch.cuda.empty_cache()


def _check_finite(records: Records, rows: np.ndarray, manifest: pd.DataFrame, store: ActivationStore,
                  loaded: LoadedModel) -> None:
    """Stop at the first batch with a NaN or inf reduction, listing every offending pair
    (`rows`: the batch's manifest rows)."""
    found = []
    for stream, by_site in records.items():
        for site, by_reduction in by_site.items():
            for reduction, values in by_reduction.items():
                bad = ~np.isfinite(values)  # [batch, layer, neuron]
                for i in np.flatnonzero(bad.any(axis=(1, 2))):
                    layers = np.flatnonzero(bad[i].any(axis=1))
                    found.append({"input": int(rows[i]), "pair_id": manifest["pair_id"].iloc[rows[i]],
                                  "stream": stream, "site": site,
                                  "stat": reduction, "first_layer": int(layers[0]), "n_values": int(bad[i].sum())})
    if not found:
        return
    frame = pd.DataFrame(found).sort_values("input", kind="stable")
    path = store.path.parent / NONFINITE
    write_frame(frame, path)
    first = frame.iloc[0]
    dtype = str(loaded.model.dtype).removeprefix("torch.")
    advice = ("fp16 overflows above 65504: rerun with --dtype bfloat16 or float32 into a new --out"
              if dtype == "float16" else "the model's own forward gave NaN/inf on this input: check the weights")
    raise ExtractionError(
        f"non-finite activations (NaN/inf) for {frame['pair_id'].nunique()} pair(s) of this batch "
        f"(first: pair {first['pair_id']}, {first['stream']} input, {first['site']} layer {first['first_layer']}) "
        f"with --dtype {dtype}; {advice}; listed in {path}; not averaged; the finished windows are kept"
    )


def narrow_arrays(store: ActivationStore) -> dict[str, np.dtype]:
    """The value arrays ({site}/{stream}/{reduction}) stored as float16 or bfloat16, with their dtype:
    read once per extraction."""
    if store.attrs.get("store_dtype", "float32") not in NARROW:
        return {}
    dtypes = {f"{site}/{stream}/{reduction}": store.array(site, stream, reduction).dtype
              for site in store.sites for stream in store.streams for reduction in store.stats}
    return {name: dtype for name, dtype in dtypes.items() if dtype.itemsize == 2}


def as_stored(records: Records, narrow: Mapping[str, np.dtype]) -> Records:
    """The 16-bit arrays (`narrow`) cast once, after the range check, so the writer thread does
    only compression and I/O and the window holds half the bytes. float16 through torch: a third
    of numpy's CPU time (0.024 vs 0.065 s per 96 pairs x 2 layers at 7B widths); bfloat16 through
    ml_dtypes, bit for bit torch's rounding (to nearest even) and as fast."""
    if not narrow:
        return records
    return {stream: {site: {reduction: _narrowed(values, narrow.get(f"{site}/{stream}/{reduction}"))
                            for reduction, values in by_reduction.items()} for site, by_reduction in by_site.items()}
            for stream, by_site in records.items()}


def _narrowed(values: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    if dtype is None:
        return values
    if dtype == np.float16:
        return torch.from_numpy(values).to(torch.float16).numpy()
    return values.astype(dtype)


def _check_range(records: Records, rows: np.ndarray, manifest: pd.DataFrame, store: ActivationStore,
                 first: bool, narrow: dict[str, np.dtype] | None = None) -> None:
    """Values beyond a 16-bit array's range (|x| > 65504 for float16, > 3.39e38 for bfloat16)
    would be stored as inf. In the first window, before anything is written, such an array
    becomes float32 (`store.widen`, and it leaves `narrow`, the 16-bit arrays); later, the run
    stops in one line with the finished windows kept."""
    narrow = narrow_arrays(store) if narrow is None else narrow
    if not narrow:
        return
    for stream, by_site in records.items():
        for site, by_reduction in by_site.items():
            for reduction, values in by_reduction.items():
                name = f"{site}/{stream}/{reduction}"
                if name not in narrow:
                    continue
                peak = np.abs(values).max(axis=(1, 2))  # [batch]; the values are finite here
                limit = largest(narrow[name])
                if peak.max() <= limit:
                    continue
                if first:
                    store.widen(name)
                    dtype = narrow.pop(name).name
                    print(f"  note    {name} reaches {peak.max():.4g}, beyond {dtype}'s range: stored as float32 "
                          "(the report's 'What was run' lists it)", file=sys.stderr)
                    continue
                row = int(rows[int(peak.argmax())])
                dtype = narrow[name].name
                wider = "bfloat16 or float32" if dtype == "float16" else "float32"
                raise ExtractionError(
                    f"pair {manifest['pair_id'].iloc[row]}: {name} reaches {peak.max():.4g}, beyond {dtype}'s "
                    f"range ({limit:.5g}), after the first window chose {dtype} for it; rerun into a new --out with "
                    f"--store-dtype {wider}: the finished windows are kept")


def _in_manifest_order(done: list[tuple[Records, dict[str, list[int]]]], order: np.ndarray
                       ) -> tuple[Records, dict[str, np.ndarray]]:
    """A window's batches, concatenated and put back in manifest order."""
    first = done[0][0]
    records = {
        c: {s: {r: np.concatenate([d[0][c][s][r] for d in done])[order] for r in by_reduction}
            for s, by_reduction in by_site.items()}
        for c, by_site in first.items()
    }
    n_tokens = {c: np.concatenate([np.asarray(d[1][c]) for d in done])[order] for c in done[0][1]}
    return records, n_tokens
