"""One batch's forwards, reduced on the device: a stream per content mask.

Why these functions: a pair is recorded as several streams (streams.py): the caption alone
(`text`), the image alone (`image`), with `--conditions image_text` the image and caption in
one turn read three ways (all its content, its caption tokens, its image tokens), and with
`--base-model` the base language model's reading of the text input (`text_base`). Each
forward runs once and is reduced once per stream mask inside the hooks (record/hooks.py), so
only [batch, layer, neuron] leaves the device. matched_max's k is one number per pair over
every stream, so all streams compare expected maxima over the same number of tokens.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from modalscope.derived import Records
from modalscope.models.loading import LoadedModel
from modalscope.record.hooks import Recorder, vision_guard
from modalscope.record.inputs import ModelBatch
from modalscope.streams import BASE_STREAM


def reduce_forward(
    loaded: LoadedModel,
    recorder: Recorder,
    batch: ModelBatch,
    streams: dict[str, torch.Tensor],
    k: torch.Tensor | None = None,
) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """One forward of the decoder stack, reduced once per stream mask;
    returns {stream: {site: {reduction: [batch, layer, neuron]}}}.

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
    """One forward reduced over the batch's content tokens: {site: {reduction: [batch, layer, neuron]}}."""
    return reduce_forward(loaded, recorder, batch, {"content": batch.content}, k)["content"]


def forward_all(loaded: LoadedModel, recorder: Recorder, item: dict, image_text: bool,
                base: tuple[LoadedModel, Recorder] | None = None) -> tuple[Records, dict[str, list[int]]]:
    """All forwards of one batch: {stream: {site: {reduction: [batch, layer, neuron]}}} and the
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
    arrays = {stream: {site: {name: v.numpy() for name, v in by_reduction.items()}
                       for site, by_reduction in by_site.items()} for stream, by_site in records.items()}
    return arrays, n_tokens


def for_base(text: ModelBatch, base: LoadedModel) -> ModelBatch:
    """The VLM's text input for its base model: the same ids and masks, padding given the
    base's own pad id (the VLM's may lie beyond the base vocabulary, as LLaVA's `<pad>` does).
    A row is read up to the first token the base's tokenizer lacks (only ever after the caption,
    see plain_text.BaseTokens: SmolVLM's `<end_of_utterance>`); the rest is padding to the base."""
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
