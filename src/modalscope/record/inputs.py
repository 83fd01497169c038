"""Unimodal inputs: the caption alone, or the image alone, in the model's own chat format.

Why: the report's claim needs inputs with one modality each. Text-only is the chat template
with a user turn holding only the caption (no `pixel_values`, so the vision tower and
projector never run); image-only is a user turn holding only the image, the minimal prompt
(`USER: <image>\n ASSISTANT:` for LLaVA-1.5). Both conditions share one template.

Content tokens are what the reduction sees by default: for text, the tokens whose character
offsets overlap the caption; for image, the positions holding the image token. BOS is never
content: it is the same token in every input of both conditions and carries the "massive
activations" of LLaMA-family models, so it says nothing about modality. With
`tokens="all"` every real (non-padding) token except BOS is seen, template tokens included.
Batches are right-padded so content positions do not move with the batch's longest input.

A caption too long for the model's context (`max_length`, its `max_position_embeddings`) is
cut at the end, by `fit_caption`, to what fits in the longest prompt (image and caption in one
turn), and that same cut caption is used in every condition; `truncations` lists the cut ones
(the study writes them to DIR/truncated.parquet).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import pandas as pd
import torch
from PIL import Image
from transformers import ProcessorMixin

from modalscope.data.images import load_rgb

TokenScope = Literal["content", "all"]
CAPTION_SLOT = "\u0000CAPTION\u0000"
NO_LIMIT = 10**7  # a tokenizer `model_max_length` at or above this means "not set"


@dataclass
class ModelBatch:
    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask[, pixel_values]
    content: torch.Tensor  # [batch, tokens] bool: positions the reduction sees

    @property
    def n_content(self) -> torch.Tensor:  # [batch]
        return self.content.sum(dim=1)

    def pin_memory(self) -> "ModelBatch":
        """Page-locked copies (DataLoader calls this with pin_memory=True), so the copy to a
        GPU can run without blocking."""
        return ModelBatch({k: v.pin_memory() for k, v in self.inputs.items()}, self.content.pin_memory())

    def to(self, device: torch.device) -> "ModelBatch":
        inputs = {k: v.to(device, non_blocking=True) for k, v in self.inputs.items()}
        return ModelBatch(inputs=inputs, content=self.content.to(device, non_blocking=True))


class PromptBuilder:
    """Turns captions and images into right-padded batches with content masks."""

    def __init__(self, processor: ProcessorMixin, image_token_id: int, tokens: TokenScope,
                 max_length: int | None = None):
        """`max_length`: the model's context in tokens; None takes the tokenizer's
        `model_max_length` when it is a real limit (the study sets it from the model config)."""
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = image_token_id
        self.tokens = tokens
        limit = getattr(self.tokenizer, "model_max_length", None)
        self.max_length = max_length or (limit if limit and limit < NO_LIMIT else None)
        self.text_prefix, self.text_suffix = self.render(CAPTION_SLOT, image=False).split(
            CAPTION_SLOT
        )
        self.image_prompt = self.render("", image=True)
        self.joint_prefix, self.joint_suffix = self.render(CAPTION_SLOT, image=True).split(
            CAPTION_SLOT
        )
        self._fitted: dict[str, str] = {}  # caption -> as fit_captions cuts it

    @classmethod
    def for_model(cls, loaded, tokens: TokenScope) -> "PromptBuilder":
        """The builder of a loaded model, cutting captions to its context."""
        return cls(loaded.processor, loaded.model.config.image_token_id, tokens, model_context(loaded))

    def render(self, text: str, image: bool) -> str:
        content: list[dict[str, str]] = [{"type": "image"}] if image else []
        content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )

    @cached_property
    def image_positions(self) -> int:
        """Sequence positions one `<image>` expands to (576 for LLaVA-1.5), measured once."""
        enc = self.processor(text=[self.image_prompt], images=[Image.new("RGB", (8, 8))])
        expanded = sum(1 for t in enc["input_ids"][0] if t == self.image_token_id)
        return expanded - self.image_prompt.count(self.processor.image_token)

    def _joint_lengths(self, captions: Sequence[str]) -> list[int]:
        """Tokens of the image-and-caption prompt of each caption, images expanded."""
        prompts = [self.joint_prefix + c + self.joint_suffix for c in captions]
        extra = self.joint_prefix.count(self.processor.image_token) * self.image_positions
        return [len(ids) + extra for ids in self.tokenizer(prompts)["input_ids"]]

    def fit_captions(self, captions: Sequence[str]) -> list[str]:
        """Each caption, cut at the end where its longest prompt would exceed `max_length`.
        Remembered per caption: the study fits the whole manifest once up front, and every
        batch (text and image_text alike) then looks its captions up instead of tokenizing
        them again."""
        captions = list(captions)
        if self.max_length is None:
            return captions
        new = [c for c in dict.fromkeys(captions) if c not in self._fitted]
        for caption, n in zip(new, self._joint_lengths(new) if new else []):
            self._fitted[caption] = self._cut(caption) if n > self.max_length else caption
        return [self._fitted[c] for c in captions]

    def _cut(self, caption: str) -> str:
        """The longest prefix (in characters, trailing space dropped) whose prompt fits."""
        if self._joint_lengths([""])[0] > self.max_length:
            raise ValueError(f"the prompt template alone is longer than the model's context "
                             f"({self.max_length} tokens)")
        lo, hi = 0, len(caption)  # lo fits, hi does not
        probe = 8 * self.max_length  # a book-length caption: search a short prefix, not all of it
        if hi > probe and self._joint_lengths([caption[:probe].rstrip()])[0] > self.max_length:
            hi = probe
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._joint_lengths([caption[:mid].rstrip()])[0] <= self.max_length:
                lo = mid
            else:
                hi = mid
        return caption[:lo].rstrip()

    def truncations(self, manifest: pd.DataFrame) -> pd.DataFrame:
        """One row per manifest caption that `fit_captions` cuts: input_index, pair_id,
        caption_chars, kept_chars, caption_tokens (of its longest prompt), max_length."""
        captions = manifest["caption"].tolist()
        fitted = self.fit_captions(captions)
        cut = [i for i, (a, b) in enumerate(zip(captions, fitted)) if a != b]
        rows = manifest.iloc[cut]
        return pd.DataFrame({
            "input_index": rows["input_index"].to_numpy(dtype="int64"),
            "pair_id": rows["pair_id"].astype(str).to_numpy(),
            "caption_chars": [len(captions[i]) for i in cut],
            "kept_chars": [len(fitted[i]) for i in cut],
            "caption_tokens": self._joint_lengths([captions[i] for i in cut]) if cut else [],
            "max_length": [self.max_length] * len(cut),
        }).astype({"caption_chars": "int64", "kept_chars": "int64", "caption_tokens": "int64",
                   "max_length": "int64"})

    def text_batch(self, captions: list[str]) -> ModelBatch:
        captions = self.fit_captions(captions)
        prompts = [self.text_prefix + c + self.text_suffix for c in captions]
        enc = self.tokenizer(
            prompts, padding=True, return_offsets_mapping=True, return_tensors="pt"
        )
        offsets = enc.pop("offset_mapping")  # [batch, tokens, 2]
        start = len(self.text_prefix)
        end = torch.tensor([start + len(c) for c in captions])[:, None]
        overlaps = (offsets[..., 0] < end) & (offsets[..., 1] > start)
        real = self._real_tokens(enc["input_ids"], enc["attention_mask"])
        content = overlaps & real if self.tokens == "content" else real
        return ModelBatch(inputs=dict(enc), content=content)

    def image_batch(self, images: list[Image.Image]) -> ModelBatch:
        enc = self.processor(
            text=[self.image_prompt] * len(images),
            images=images,
            padding=True,
            return_tensors="pt",
        )
        inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "pixel_values")}
        real = self._real_tokens(inputs["input_ids"], inputs["attention_mask"])
        is_image = inputs["input_ids"] == self.image_token_id
        content = is_image if self.tokens == "content" else real
        return ModelBatch(inputs=inputs, content=content)

    def image_text_batch(
        self, images: list[Image.Image], captions: list[str]
    ) -> tuple[ModelBatch, dict[str, torch.Tensor]]:
        """The image and its caption in one turn, and the masks of its three streams:
        `image_text` (caption and image tokens; every real token but BOS with tokens="all"),
        `image_text_caption` (its caption tokens) and `image_text_image` (its image tokens)."""
        captions = self.fit_captions(captions)
        prompts = [self.joint_prefix + c + self.joint_suffix for c in captions]
        enc = self.processor(
            text=prompts, images=images, padding=True, return_offsets_mapping=True,
            return_tensors="pt",
        )
        offsets = enc["offset_mapping"]  # of the text with <image> expanded to every position
        inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "pixel_values")}
        is_image = inputs["input_ids"] == self.image_token_id
        token = self.processor.image_token
        expanded = self.joint_prefix.count(token)
        start = len(self.joint_prefix) + (is_image.sum(1, keepdim=True) - expanded) * len(token)
        end = start + torch.tensor([len(c) for c in captions])[:, None]
        real = self._real_tokens(inputs["input_ids"], inputs["attention_mask"])
        caption = (offsets[..., 0] < end) & (offsets[..., 1] > start) & real & ~is_image
        content = (caption | is_image) if self.tokens == "content" else real
        streams = {"image_text": content, "image_text_caption": caption, "image_text_image": is_image}
        return ModelBatch(inputs=inputs, content=content), streams

    def _real_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Non-padding tokens, minus the leading BOS (right padding keeps it at position 0)."""
        real = attention_mask.bool()
        bos = self.tokenizer.bos_token_id
        if bos is not None:
            real[:, 0] &= input_ids[:, 0] != bos
        return real


def load_image(path: str) -> Image.Image:
    """Every image becomes RGB the same way, whatever its mode on disk (data/images.py);
    raises `ImageProblem` (a ValueError) with the reason when it cannot."""
    return load_rgb(path)


def model_context(loaded) -> int | None:
    """The model's context in tokens: `max_position_embeddings` of its text config."""
    text_config = getattr(loaded.model.config, loaded.adapter.text_config, loaded.model.config)
    context = getattr(text_config, "max_position_embeddings", None)
    return int(context) if context else None


def use_model_context(loaded) -> None:
    """Make the tokenizer's `model_max_length` the model's context, so that PromptBuilders
    made by hand on this processor cut to fit it too (`PromptBuilder.for_model` needs not)."""
    context = model_context(loaded)
    if context:
        loaded.processor.tokenizer.model_max_length = context
