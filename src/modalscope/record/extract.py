"""The extraction loop: each pair twice, unimodally, reduced on the device, stored per batch.

Why this shape: the text-only forward gets only token ids (the vision modules never run, and
a guard raises if one would); the image-only forward gets the minimal prompt and the pixels.
We call the family's forward entry (for LLaVA the inner `LlavaModel`, `model.model`), not the
generation head: the lm_head's vocabulary projection is not needed for recording. Progress is committed per window of batches (see
record/plan.py), so a rerun of the same command continues after the last finished window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from modalscope import derived
from modalscope.streams import BASE_STREAM
from modalscope.data.images import file_sha256, load_rgb
from modalscope.data.pairs import DataError
from modalscope.models.adapter import first_line
from modalscope.models.loading import LoadedModel
from modalscope.record.hooks import Recorder, vision_guard
from modalscope.record.inputs import ModelBatch, PromptBuilder, TokenScope
from modalscope.record.plan import plan_windows
from modalscope.record.reductions import ReductionSpec
from modalscope.record.writer import StoreWriter
from modalscope.store import ActivationStore
from modalscope.store_dtypes import NARROW, largest
from modalscope.tables import write_frame


def reduce_forward(
    loaded: LoadedModel,
    recorder: Recorder,
    batch: ModelBatch,
    streams: dict[str, torch.Tensor],
    k: torch.Tensor | None = None,
) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """One forward of the decoder stack, reduced once per stream mask;
    returns {stream: {site: {stat: [batch, layer, neuron]}}}.

    k [batch]: tokens per pair for matched_max (`matched_k`), at most every stream's own count.
    """
    if k is not None:
        for name, mask in streams.items():
            short = (k > mask.sum(1)).nonzero().flatten().tolist()
            if short:  # the expected max over k of T < k tokens is undefined: a bug, not data
                raise AssertionError(f"bug: matched_max k={int(k[short[0]])} exceeds the "
                                     f"{int(mask[short[0]].sum())} tokens of stream {name} (row {short[0]})")
    batch = batch.to(loaded.device)
    recorder.select(streams, k)
    forward = loaded.adapter.forward_module(loaded.model)
    text_only = not any(key in batch.inputs for key in loaded.adapter.vision_inputs)
    with torch.inference_mode(), vision_guard(loaded.model, loaded.adapter) if text_only else nullcontext():
        forward(**batch.inputs, use_cache=False)
    return recorder.collect()


def matched_k(n_tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    """One k per pair for matched_max: the fewest content tokens of any stream recorded for
    the pair ({stream: [batch]}), so every stream's expected max is over at most its own
    tokens. The caption can tokenize to fewer pieces after `<image>\n` than after `USER: `
    (SentencePiece merges depend on the preceding text), so the text stream alone is not it."""
    return torch.stack([n.to(torch.long) for n in n_tokens.values()]).amin(dim=0)


def reduce_content(
    loaded: LoadedModel, recorder: Recorder, batch: ModelBatch, k: torch.Tensor | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """One forward reduced over the batch's content tokens: {site: {stat: [batch, layer, neuron]}}."""
    return reduce_forward(loaded, recorder, batch, {"content": batch.content}, k)["content"]


class PairBatches(Dataset):
    """The planned batches, prepared (decoded, tokenised, pixels) for the model.

    Run by DataLoader workers so image decoding overlaps the forwards. A bad input comes back
    as {"error": message} and is raised in the main process, so the user still sees one line
    (a DataLoader would wrap a worker's exception in its traceback).
    """

    def __init__(self, manifest: pd.DataFrame, builder: PromptBuilder, batches: Sequence[np.ndarray],
                 image_text: bool):
        self.manifest, self.builder = manifest, builder
        self.batches = list(batches)
        self.image_text = image_text

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:
        rows = self.manifest.iloc[self.batches[index]]
        try:
            captions = rows["caption"].tolist()
            images = [_open(row) for row in rows.itertuples()]
            item = self._prepare(images, captions)
            _check_content(item["text"], rows, "text")
        except DataError as err:
            return {"error": str(err)}
        except Exception as err:  # noqa: BLE001 - a tokenizer/processor failure: name its pair
            return {"error": self._culprit(rows, images, err)}
        return item

    def _prepare(self, images: list[Image.Image], captions: list[str]) -> dict:
        item = {"text": self.builder.text_batch(captions), "image": self.builder.image_batch(images),
                "n": len(captions)}
        if self.image_text:
            item["joint"] = self.builder.image_text_batch(images, captions)
        return item

    def _culprit(self, rows: pd.DataFrame, images: list[Image.Image], err: Exception) -> str:
        """One line naming the first pair of the batch whose inputs fail alone. The manifest's
        pairs passed the same preparation when it was made, so this is a change of model or
        processor since: the line says to start a new study folder."""
        for row, image in zip(rows.itertuples(), images):
            try:
                self._prepare([image], [row.caption])
            except Exception as alone:  # noqa: BLE001
                err = alone
                break
        else:
            row = rows.iloc[0]
        return (f"{row.image_path}: pair {row.pair_id}: cannot prepare the model inputs "
                f"({type(err).__name__}: {first_line(err)}); it passed this check when DIR/manifest.parquet was "
                "made, so the model or processor changed: start a new --out")


class ExtractionError(ValueError):
    """Extraction stopped for a reason the user can act on (one line); finished windows are kept."""


NONFINITE = "nonfinite.parquet"


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
                records, n_tokens = _forward_all(loaded, recorder, item, how.image_text,
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


def _check_finite(records: "Records", rows: np.ndarray, manifest: pd.DataFrame, store: ActivationStore,
                  loaded: LoadedModel) -> None:
    """Stop at the first batch with a NaN or inf reduction, listing every offending pair
    (`rows`: the batch's manifest rows)."""
    found = []
    for stream, by_site in records.items():
        for site, by_stat in by_site.items():
            for stat, values in by_stat.items():
                bad = ~np.isfinite(values)  # [batch, layer, neuron]
                for i in np.flatnonzero(bad.any(axis=(1, 2))):
                    layers = np.flatnonzero(bad[i].any(axis=1))
                    found.append({"input": int(rows[i]), "pair_id": manifest["pair_id"].iloc[rows[i]],
                                  "stream": stream, "site": site,
                                  "stat": stat, "first_layer": int(layers[0]), "n_values": int(bad[i].sum())})
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


Records = dict[str, dict[str, dict[str, np.ndarray]]]


def narrow_arrays(store: ActivationStore) -> dict[str, np.dtype]:
    """The value arrays ({site}/{stream}/{stat}) stored as float16 or bfloat16, with their dtype:
    read once per extraction."""
    if store.attrs.get("store_dtype", "float32") not in NARROW:
        return {}
    dtypes = {f"{site}/{stream}/{stat}": store.array(site, stream, stat).dtype
              for site in store.sites for stream in store.conditions for stat in store.stats}
    return {name: dtype for name, dtype in dtypes.items() if dtype.itemsize == 2}


def as_stored(records: Records, narrow: Mapping[str, np.dtype]) -> Records:
    """The 16-bit arrays (`narrow`) cast once, after the range check, so the writer thread does
    only compression and I/O and the window holds half the bytes. float16 through torch: a third
    of numpy's CPU time (0.024 vs 0.065 s per 96 pairs x 2 layers at 7B widths); bfloat16 through
    ml_dtypes, bit for bit torch's rounding (to nearest even) and as fast."""
    if not narrow:
        return records
    return {stream: {site: {stat: _narrowed(values, narrow.get(f"{site}/{stream}/{stat}"))
                            for stat, values in by_stat.items()} for site, by_stat in by_site.items()}
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
        for site, by_stat in by_site.items():
            for stat, values in by_stat.items():
                name = f"{site}/{stream}/{stat}"
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


def _forward_all(loaded: LoadedModel, recorder: Recorder, item: dict, image_text: bool,
                 base: tuple[LoadedModel, Recorder] | None = None) -> tuple[Records, dict[str, list[int]]]:
    """All forwards of one batch: {stream: {site: {stat: [batch, layer, neuron]}}} and the
    number of tokens each stream's reductions saw. `base`: the base language model and its
    recorder, which get the text input's very token ids (stream text_base)."""
    text, image = item["text"], item["image"]
    counts = {"text": text.n_content, "image": image.n_content}
    if base is not None:
        counts[BASE_STREAM] = text.n_content
    if image_text:
        joint, streams = item["joint"]
        counts.update({name: mask.sum(1) for name, mask in streams.items()})
    k = matched_k(counts)
    records = {"text": reduce_content(loaded, recorder, text, k)}
    records["image"] = reduce_content(loaded, recorder, image, k)
    if image_text:
        records.update(reduce_forward(loaded, recorder, joint, streams, k))
    if base is not None:
        records[BASE_STREAM] = reduce_content(base[0], base[1], for_base(text, base[0]), k)
    n_tokens = {name: n.tolist() for name, n in counts.items()}
    arrays = {c: {s: {st: v.numpy() for st, v in by_stat.items()} for s, by_stat in r.items()}
              for c, r in records.items()}
    return arrays, n_tokens


def for_base(text: ModelBatch, base: LoadedModel) -> ModelBatch:
    """The VLM's text input for its base model: the same ids and masks, padding given the
    base's own pad id (the VLM's may lie beyond the base vocabulary, as LLaVA's `<pad>` does).
    A row is read up to the first token the base's tokenizer lacks (only ever after the caption,
    see inputs.BaseTokens: SmolVLM's `<end_of_utterance>`); the rest is padding to the base."""
    tokenizer = base.processor.tokenizer
    pad = 0 if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    ids, mask = text.inputs["input_ids"], text.inputs["attention_mask"]
    lacked = (ids >= len(tokenizer)) & mask.bool()
    if lacked.any():
        mask = mask * (lacked.cumsum(dim=1) == 0).to(mask.dtype)
        if (text.content & (mask == 0)).any():
            raise RuntimeError("bug: a content token follows a token the base model lacks")
    ids = ids.masked_fill(mask == 0, pad)
    return ModelBatch(inputs={"input_ids": ids, "attention_mask": mask}, content=text.content)


def _in_manifest_order(done: list[tuple[Records, dict[str, list[int]]]], order: np.ndarray
                       ) -> tuple[Records, dict[str, np.ndarray]]:
    """A window's batches, concatenated and put back in manifest order."""
    first = done[0][0]
    records = {
        c: {s: {st: np.concatenate([d[0][c][s][st] for d in done])[order] for st in by_stat}
            for s, by_stat in by_site.items()}
        for c, by_site in first.items()
    }
    n_tokens = {c: np.concatenate([np.asarray(d[1][c]) for d in done])[order] for c in done[0][1]}
    return records, n_tokens


def _open(row) -> Image.Image:
    """The pair's image, refused when its file is not the one the manifest recorded (`image_sha256`:
    a resume or rerun must not record another picture under the pair; manifests without it are not checked)."""
    try:
        image = load_rgb(row.image_path)
        recorded = getattr(row, "image_sha256", None)
        now = file_sha256(row.image_path) if isinstance(recorded, str) else None
    except (OSError, ValueError) as err:
        raise DataError(f"{row.image_path}: pair {row.pair_id}: cannot read image ({err})") from None
    if now is not None and now != recorded:
        raise DataError(f"{row.image_path}: pair {row.pair_id}: the image changed since DIR/manifest.parquet was made "
                        f"(sha256 {recorded[:12]}... then, {now[:12]}... now); restore that file, or start a new --out: "
                        "the finished windows are kept, this pair's was not recorded")
    return image


def _check_content(batch: ModelBatch, rows: pd.DataFrame, condition: str) -> None:
    empty = (batch.n_content == 0).nonzero().flatten().tolist()
    if empty:
        row = rows.iloc[empty[0]]
        raise DataError(
            f"pair {row.pair_id}: the {condition} input has no content tokens "
            f"(caption {row.caption!r}); fix or drop this pair"
        )
