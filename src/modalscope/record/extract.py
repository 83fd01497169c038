"""The extraction loop: each pair twice, unimodally, reduced on the device, stored per batch.

Why this shape: the text-only forward gets only token ids (the vision tower and projector
never run); the image-only forward gets the minimal prompt and the pixels. We call the
inner `LlavaModel` (`model.model`), not the generation head: the lm_head's vocabulary
projection is not needed for recording. Progress is committed per batch, so a rerun of
the same command continues after the last finished batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from modalscope.data.pairs import DataError
from modalscope.models.loading import LoadedModel
from modalscope.record.hooks import Recorder
from modalscope.record.inputs import ModelBatch, PromptBuilder, TokenScope, load_image
from modalscope.store import ActivationStore


def record_streams(
    loaded: LoadedModel,
    recorder: Recorder,
    batch: ModelBatch,
    streams: dict[str, torch.Tensor],
    k: torch.Tensor | None = None,
) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """One forward of the decoder stack, reduced once per stream mask;
    returns {stream: {site: {stat: [batch, layer, neuron]}}}.

    k [batch]: tokens per pair for matched_max, min(text, image) content tokens.
    """
    batch = batch.to(loaded.device)
    recorder.streams = streams
    recorder.k = k
    with torch.inference_mode():
        loaded.model.model(**batch.inputs, use_cache=False)
    return recorder.collect()


def record_batch(
    loaded: LoadedModel, recorder: Recorder, batch: ModelBatch, k: torch.Tensor | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """One forward reduced over the batch's content tokens: {site: {stat: [batch, layer, neuron]}}."""
    return record_streams(loaded, recorder, batch, {"content": batch.content}, k)["content"]


class PairBatches(Dataset):
    """Batch i of the unfinished inputs, prepared (decoded, tokenised, pixels) for the model.

    Run by DataLoader workers so image decoding overlaps the forwards. A bad input comes back
    as {"error": message} and is raised in the main process, so the user still sees one line
    (a DataLoader would wrap a worker's exception in its traceback).
    """

    def __init__(self, manifest: pd.DataFrame, builder: PromptBuilder, start: int,
                 batch_size: int, image_text: bool):
        self.manifest, self.builder = manifest, builder
        self.starts = list(range(start, len(manifest), batch_size))
        self.batch_size, self.image_text = batch_size, image_text

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict:
        lo = self.starts[index]
        rows = self.manifest.iloc[lo : lo + self.batch_size]
        try:
            captions = rows["caption"].tolist()
            images = [_open(row) for row in rows.itertuples()]
            text = self.builder.text_batch(captions)
            _check_content(text, rows, "text")
        except DataError as err:
            return {"error": str(err)}
        item = {"text": text, "image": self.builder.image_batch(images), "n": len(rows)}
        if self.image_text:
            item["joint"] = self.builder.image_text_batch(images, captions)
        return item


def extract(
    loaded: LoadedModel,
    manifest: pd.DataFrame,
    store: ActivationStore,
    sites: Sequence[str],
    tokens: TokenScope,
    batch_size: int,
    progress: bool = True,
    stats: Sequence[str] = ("max", "mean"),
    quantile: float = 0.9,
    image_text: bool = False,
    workers: int = 0,
) -> int:
    """Record every unfinished input of `manifest` into `store`; returns how many were added.

    Batches are prepared by `workers` DataLoader processes (0: in this process), pinned
    when the model is on a GPU so the copies to it do not block; results come back to the
    host once per batch and are appended, then the ledger advances.
    """
    builder = PromptBuilder(loaded.processor, loaded.model.config.image_token_id, tokens)
    start = store.n_done
    batches = DataLoader(
        PairBatches(manifest, builder, start, batch_size, image_text),
        batch_size=None,
        num_workers=workers,
        pin_memory=loaded.device.type == "cuda",
        collate_fn=None,
    )
    bar = tqdm(
        total=len(manifest), initial=start, unit="pair", desc="extract", disable=not progress
    )
    with Recorder(loaded.model, loaded.adapter, sites, stats, quantile) as recorder:
        for item in batches:
            if "error" in item:
                raise DataError(item["error"])
            text, image = item["text"], item["image"]
            k = torch.minimum(text.n_content, image.n_content)  # [batch]
            records = {"text": record_batch(loaded, recorder, text, k)}
            records["image"] = record_batch(loaded, recorder, image, k)
            n_tokens = {"text": text.n_content.tolist(), "image": image.n_content.tolist()}
            if image_text:
                joint, streams = item["joint"]
                records.update(record_streams(loaded, recorder, joint, streams, k))
                n_tokens.update({name: m.sum(1).tolist() for name, m in streams.items()})
            store.append(
                {c: {s: {k: v.numpy() for k, v in st.items()} for s, st in r.items()}
                 for c, r in records.items()},
                n_tokens,
            )
            bar.update(item["n"])
    bar.close()
    return len(manifest) - start


def _open(row) -> Image.Image:
    try:
        return load_image(row.image_path)
    except (OSError, ValueError) as err:
        raise DataError(f"{row.image_path}: pair {row.pair_id}: cannot read image ({err})") from None


def _check_content(batch: ModelBatch, rows: pd.DataFrame, condition: str) -> None:
    empty = (batch.n_content == 0).nonzero().flatten().tolist()
    if empty:
        row = rows.iloc[empty[0]]
        raise DataError(
            f"pair {row.pair_id}: the {condition} input has no content tokens "
            f"(caption {row.caption!r}); fix or drop this pair"
        )
