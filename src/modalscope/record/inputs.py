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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image
from transformers import ProcessorMixin

TokenScope = Literal["content", "all"]
CAPTION_SLOT = "\u0000CAPTION\u0000"


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

    def __init__(self, processor: ProcessorMixin, image_token_id: int, tokens: TokenScope):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = image_token_id
        self.tokens = tokens
        self.text_prefix, self.text_suffix = self.render(CAPTION_SLOT, image=False).split(
            CAPTION_SLOT
        )
        self.image_prompt = self.render("", image=True)
        self.joint_prefix, self.joint_suffix = self.render(CAPTION_SLOT, image=True).split(
            CAPTION_SLOT
        )

    def render(self, text: str, image: bool) -> str:
        content: list[dict[str, str]] = [{"type": "image"}] if image else []
        content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )

    def text_batch(self, captions: list[str]) -> ModelBatch:
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
    """Every image becomes RGB the same way, whatever its mode on disk."""
    with Image.open(path) as image:
        return image.convert("RGB")
