"""Unimodal inputs: the caption alone, or the image alone, in the model's own chat format.

Why: the report's claim needs inputs with one modality each. Text-only is the chat template
with a user turn holding only the caption (no `pixel_values`, so the vision tower and
projector never run); image-only is a user turn holding only the image, the minimal prompt
(`USER: <image>\n ASSISTANT:` for LLaVA-1.5). Both conditions share one template.

Captions are text, never control: the prompt is cut around the caption and the caption's run is
tokenized plainly (record/plain_text.py), and the builder checks on probe captions, when it is
made, that the pieces tokenize like the whole prompt.

Content tokens are what the reduction sees by default: for text, the tokens whose character
offsets overlap the caption; for image, the positions holding the image token. BOS is never
content, wherever the template emits it: it is the same token in every input of both
conditions and carries the "massive activations" of LLaMA-family models, so it says nothing
about modality. With `tokens="all"` every real (non-padding) token except BOS is seen,
template tokens included. Batches are right-padded so content positions do not move with the
batch's longest input.

A caption too long for the model's context (`max_length`, its `max_position_embeddings`) is
cut at the end, by `fit_captions`, to what fits in the longest prompt (image and caption in one
turn), and that same cut caption is used in every condition; `truncations` lists the cut ones
(the study writes them to DIR/truncated.parquet).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import pandas as pd
import torch
from PIL import Image
from transformers import ProcessorMixin

from modalscope.models.adapter import GENERIC, ModelAdapter, first_line
from modalscope.record.plain_text import CAPTION_SLOT, PlainText, PromptPieces

# Re-exported for one release: its home is record/plain_text.py since issue 22 (study.py imports it from here).
from modalscope.record.plain_text import BaseTokens  # noqa: F401

TokenScope = Literal["content", "all"]
NO_LIMIT = 10**7  # a tokenizer `model_max_length` at or above this means "not set"
# Captions whose pieces must tokenize like the whole prompt (checked when a builder is made).
PROBES = ("A dog runs on the beach.", "TWO DOGS PLAYING", "APPLE logo on a laptop")


@dataclass
class ModelBatch:
    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask[, pixel_values, ...]
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

    def __init__(self, processor: ProcessorMixin, image_token_id: int | None, tokens: TokenScope,
                 max_length: int | None = None, adapter: ModelAdapter = GENERIC):
        """`max_length`: the model's context in tokens; None takes the tokenizer's
        `model_max_length` when it is a real limit (the study sets it from the model config).
        `adapter`: the family's facts (chat turns, processor outputs, never-content tokens)."""
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = image_token_id
        self.tokens = tokens
        self.adapter = adapter
        limit = getattr(self.tokenizer, "model_max_length", None)
        self.max_length = max_length or (limit if limit and limit < NO_LIMIT else None)
        never = [self.tokenizer.bos_token_id, *self.tokenizer.convert_tokens_to_ids(list(adapter.never_content))]
        self.never_content = torch.tensor(sorted({i for i in never if i is not None}), dtype=torch.long)
        self.plain = PlainText(self.tokenizer)
        self.text_pieces = PromptPieces.cut(self.render(CAPTION_SLOT, image=False), self.plain.controls)
        # The text input's template ids before and after the caption (public: the base model's
        # tokenizer check, record/plain_text.py, compares them with its own reading)
        self.text_head = self.tokenizer(self.text_pieces.head)["input_ids"]
        self.text_tail = self.tokenizer(self.text_pieces.tail, add_special_tokens=False)["input_ids"]
        self.vision = adapter.has_vision  # False: a language model, the text input only
        if self.vision:
            self.joint_pieces = PromptPieces.cut(self.render(CAPTION_SLOT, image=True), self.plain.controls)
            self.image_prompt = self.render(None, image=True)
            self._joint_tail = self.tokenizer(self.joint_pieces.tail, add_special_tokens=False)["input_ids"]
        self._fitted: dict[str, str] = {}  # caption -> as fit_captions cuts it
        self._check_pieces()

    @classmethod
    def for_model(cls, loaded, tokens: TokenScope) -> "PromptBuilder":
        """The builder of a loaded model, cutting captions to its context."""
        adapter = loaded.adapter
        return cls(loaded.processor, adapter.image_token_id(loaded.model.config), tokens, model_context(loaded), adapter)

    @property
    def text_prefix(self) -> str:
        return self.text_pieces.head + self.text_pieces.left

    @property
    def text_suffix(self) -> str:
        return self.text_pieces.right + self.text_pieces.tail

    @property
    def joint_prefix(self) -> str:
        return self.joint_pieces.head + self.joint_pieces.left

    @property
    def joint_suffix(self) -> str:
        return self.joint_pieces.right + self.joint_pieces.tail

    def render(self, text: str | None, image: bool) -> str:
        """The chat template's rendering of one user turn (None text with an image: the
        family's minimal image-only prompt), ready for the assistant's answer."""
        return self.processor.apply_chat_template(
            self.adapter.conversation(text, image), add_generation_prompt=True, tokenize=False
        )

    def _check_pieces(self) -> None:
        """Refuse a tokenizer for which the pieces do not tokenize like the whole prompt."""
        probe = Image.new("RGB", (8, 8))
        for caption in PROBES:
            whole = self.tokenizer(self.text_pieces.whole(caption))["input_ids"]
            ours = self.text_batch([caption]).inputs["input_ids"][0].tolist()
            joint = ours_joint = None
            if self.vision:
                joint = list(self.processor(text=[self.joint_pieces.whole(caption)], images=[probe])["input_ids"][0])
                ours_joint = self.image_text_batch([probe], [caption])[0].inputs["input_ids"][0].tolist()
            if ours != list(whole) or ours_joint != joint:
                raise ValueError(
                    f"the tokenizer of this model ({type(self.tokenizer).__name__}) tokenizes a caption "
                    f"differently alone than inside its prompt ({caption!r}); modalscope cannot keep "
                    "captions as plain text for it"
                )

    # Caption text -------------------------------------------------------------------------
    def _caption_runs(self, pieces: PromptPieces, captions: Sequence[str]
                      ) -> tuple[list[list[int]], list[list[bool]]]:
        """Token ids of each caption's plain-text run and which of them overlap the caption."""
        runs = self.plain.encode([pieces.text(c) for c in captions])
        start = len(pieces.left)
        ids, spans = [], []
        for caption, run in zip(captions, runs):
            end = start + len(caption)
            ids.append(run.ids)
            spans.append([a < end and b > start for a, b in run.offsets])
        return ids, spans

    @cached_property
    def _joint_head_length(self) -> int:
        """Tokens of the image-and-caption prompt's head, image expanded (LLaVA-1.5: one
        image of 576 positions), measured once on a probe image."""
        enc = self.processor(text=[self.joint_pieces.head], images=[Image.new("RGB", (8, 8))])
        return len(enc["input_ids"][0])

    def _joint_lengths(self, captions: Sequence[str]) -> list[int]:
        """Tokens of the longest prompt of each caption: image and caption, image expanded
        (the text prompt for a model without vision)."""
        if not self.vision:
            ids, _ = self._caption_runs(self.text_pieces, captions)
            return [len(self.text_head) + len(run) + len(self.text_tail) for run in ids]
        ids, _ = self._caption_runs(self.joint_pieces, captions)
        return [self._joint_head_length + len(run) + len(self._joint_tail) for run in ids]

    def caption_tokens(self, captions: Sequence[str]) -> list[int]:
        """Content tokens of each caption in the text prompt (the length batches sort by)."""
        return [sum(span) for span in self._caption_runs(self.text_pieces, captions)[1]]

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

    # Batches -------------------------------------------------------------------------------
    def add_processor_inputs(self, inputs: dict[str, torch.Tensor], enc, heads: Sequence[Sequence[int]]) -> None:
        """The processor's vision inputs, untouched, and its per-token arrays (e.g. Qwen's
        `mm_token_type_ids`) laid over `inputs`: each row's head from the processor, then zeros."""
        inputs.update({k: enc[k] for k in self.adapter.vision_inputs if k in enc})
        for key in self.adapter.token_inputs:
            if key in enc:
                values = torch.zeros_like(inputs["input_ids"], dtype=enc[key].dtype)
                for row, (head, mask) in enumerate(zip(heads, enc["attention_mask"])):
                    values[row, : len(head)] = enc[key][row][mask.bool()]
                inputs[key] = values

    def _assemble(self, heads: Sequence[Sequence[int]], runs: list[list[int]], spans: list[list[bool]],
                  tail: Sequence[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Right-padded input_ids and attention_mask of head + caption run + tail per row, and
        the caption mask [batch, tokens]."""
        rows = [list(h) + r + list(tail) for h, r in zip(heads, runs)]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        caption = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (row, head, span) in enumerate(zip(rows, heads, spans)):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
            caption[i, len(head) : len(head) + len(span)] = torch.tensor(span, dtype=torch.bool)
        return {"input_ids": ids, "attention_mask": mask}, caption

    def _text(self, captions: Sequence[str]) -> tuple[ModelBatch, torch.Tensor]:
        runs, spans = self._caption_runs(self.text_pieces, self.fit_captions(captions))
        inputs, caption = self._assemble([self.text_head] * len(runs), runs, spans, self.text_tail)
        real = self._real_tokens(inputs["input_ids"], inputs["attention_mask"])
        return ModelBatch(inputs=inputs, content=caption if self.tokens == "content" else real), caption

    def text_batch(self, captions: list[str]) -> ModelBatch:
        return self._text(captions)[0]

    def image_batch(self, images: list[Image.Image]) -> ModelBatch:
        enc = self.processor(
            text=[self.image_prompt] * len(images),
            images=images,
            padding=True,
            return_tensors="pt",
        )
        inputs = {k: enc[k] for k in ("input_ids", "attention_mask", *self._model_keys) if k in enc}
        is_image, real = self._image_and_real(enc, inputs)
        content = is_image if self.tokens == "content" else real
        return ModelBatch(inputs=inputs, content=content)

    def _image_and_real(self, enc: dict, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Image content positions and real tokens [batch, tokens], both read from each input's
        own ids: image placeholders (minus any the family says are not content, such as
        LLaVA-NeXT's row newlines), and every non-padding token but the never-content ones."""
        placeholders = inputs["input_ids"] == self.image_token_id
        image = placeholders
        if self.adapter.image_content is not None:
            image = self.adapter.image_content(self.processor, enc, placeholders)
        real = self._real_tokens(inputs["input_ids"], inputs["attention_mask"]) & ~(placeholders & ~image)
        return image, real

    @property
    def _model_keys(self) -> tuple[str, ...]:
        return (*self.adapter.vision_inputs, *self.adapter.token_inputs)

    def image_text_batch(
        self, images: list[Image.Image], captions: list[str]
    ) -> tuple[ModelBatch, dict[str, torch.Tensor]]:
        """The image and its caption in one turn, and the masks of its three streams:
        `image_text` (caption and image tokens; every real token but BOS with tokens="all"),
        `image_text_caption` (its caption tokens) and `image_text_image` (its image tokens)."""
        enc = self.processor(text=[self.joint_pieces.head] * len(images), images=images,
                             padding=True, return_tensors="pt")
        heads = [ids[mask.bool()].tolist() for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
        runs, spans = self._caption_runs(self.joint_pieces, self.fit_captions(captions))
        inputs, caption = self._assemble(heads, runs, spans, self._joint_tail)
        self.add_processor_inputs(inputs, enc, heads)
        is_image, real = self._image_and_real(enc, inputs)
        content = (caption | is_image) if self.tokens == "content" else real
        streams = {"image_text": content, "image_text_caption": caption, "image_text_image": is_image}
        return ModelBatch(inputs=inputs, content=content), streams

    def _real_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Non-padding tokens that are not BOS (wherever the template put one) nor one of the
        family's never-content tokens."""
        return attention_mask.bool() & ~torch.isin(input_ids, self.never_content)

    # Checks --------------------------------------------------------------------------------
    def pair_problem(self, caption: str, image: Image.Image, image_text: bool = True) -> str | None:
        """Why this pair's model inputs cannot be prepared, or None. Run on every pair before
        the manifest is written, so a pair that would fail mid-extraction is skipped instead:
        every stream has content tokens, and the caption tokens decode back to the caption."""
        try:
            text, caption_mask = self._text([caption])
            masks = {"text": text.content, "text caption": caption_mask}
            decoded = [("text", text.inputs["input_ids"][0], caption_mask[0])]  # (input, ids, caption)
            if image_text:
                joint, streams = self.image_text_batch([image], [caption])
                masks.update(streams)
                decoded.append(("image_text", joint.inputs["input_ids"][0], streams["image_text_caption"][0]))
            else:
                masks["image"] = self.image_batch([image]).content
        except Exception as err:  # noqa: BLE001 - any tokenizer/processor failure skips the pair
            return f"cannot prepare the model inputs ({type(err).__name__}: {first_line(err)[:200]})"
        empty = [name for name, mask in masks.items() if not mask.any()]
        if empty:
            return f"caption gives no content tokens in the {empty[0]} input"
        want = _plain(self.fit_captions([caption])[0])
        for name, ids, mask in decoded:
            got = self.tokenizer.decode(ids[mask].tolist(), skip_special_tokens=False)
            if _plain(got) != want:
                return f"caption tokens of the {name} input decode to {got!r}, not to the caption"
        return None


def _plain(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def model_context(loaded) -> int | None:
    """The model's context in tokens: `max_position_embeddings` of its text config."""
    text_config = getattr(loaded.model.config, loaded.adapter.text_config, loaded.model.config)
    context = getattr(text_config, "max_position_embeddings", None)
    return int(context) if context else None
