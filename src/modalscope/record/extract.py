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
) -> int:
    """Record every unfinished input of `manifest` into `store`; returns how many were added."""
    builder = PromptBuilder(loaded.processor, loaded.model.config.image_token_id, tokens)
    start = store.n_done
    todo = range(start, len(manifest), batch_size)
    bar = tqdm(
        total=len(manifest), initial=start, unit="pair", desc="extract", disable=not progress
    )
    with Recorder(loaded.model, loaded.adapter, sites, stats, quantile) as recorder:
        for lo in todo:
            rows = manifest.iloc[lo : lo + batch_size]
            captions = rows["caption"].tolist()
            images = [_open(row) for row in rows.itertuples()]
            text = builder.text_batch(captions)
            image = builder.image_batch(images)
            _check_content(text, rows, "text")
            k = torch.minimum(text.n_content, image.n_content)  # [batch]
            records = {"text": record_batch(loaded, recorder, text, k)}
            records["image"] = record_batch(loaded, recorder, image, k)
            n_tokens = {"text": text.n_content.tolist(), "image": image.n_content.tolist()}
            if image_text:
                joint, streams = builder.image_text_batch(images, captions)
                records.update(record_streams(loaded, recorder, joint, streams, k))
                n_tokens.update({name: m.sum(1).tolist() for name, m in streams.items()})
            store.append(
                {c: {s: {k: v.numpy() for k, v in st.items()} for s, st in r.items()}
                 for c, r in records.items()},
                n_tokens,
            )
            bar.update(len(rows))
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
