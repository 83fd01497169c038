"""Readouts: how well the model predicts a pair's caption, teacher-forced, per pair.

Why: an ablation's effect must be measured on something the model is for. Two readouts, both
the summed log-probability (nats) of the caption's tokens, each predicted from everything
before it:
  image   log p(caption | image): the image-only prompt of the study's own chat template
          (`USER: <image>\\n ASSISTANT:` for LLaVA-1.5), then the caption as the assistant's
          answer: the model captioning its own image. The prompt is rendered by the family's
          template through the adapter (a user turn with the image, an assistant turn with the
          caption), and cut around the caption as record/inputs.py cuts its prompts, so a
          caption is always plain text (never an image placeholder or an end of turn).
  text    log p(caption | template): the study's text-only input (the caption as the user's
          turn, no image), the very input whose activations Table 3 compares; the model reading
          the caption without seeing the image. The only readout of a family without vision.
Caption tokens are those whose character offsets overlap the caption (as the study's content
tokens); tokens after the caption (the end of the turn) are neither scored nor run. On request,
`image_concept` and `text_concept` are the same inputs scoring only the tokens that overlap the
pair's concept words in its caption (what the model knows of the concept, not of the phrasing).

Only the positions that predict a caption token go through the vocabulary head, so a batch
never holds [rows, tokens, vocabulary] logits (11 GB for Qwen's 152k vocabulary at 64 rows).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from PIL import Image

from modalscope.record.inputs import CAPTION_SLOT, PromptBuilder, PromptPieces

READOUTS = ("image", "text")  # the defaults; "image_concept", "text_concept" on request
CONCEPT_READOUTS = ("image_concept", "text_concept")


class ReadoutBuilder:
    """Teacher-forced inputs and their caption masks, from a study's PromptBuilder."""

    def __init__(self, builder: PromptBuilder) -> None:
        self.builder = builder
        self.adapter = builder.adapter
        self.readouts = READOUTS if builder.vision else ("text",)
        if builder.vision:
            user = self.adapter.conversation(None, image=True)
            content = user[0]["content"]
            answer = [{"type": "text", "text": CAPTION_SLOT}] if isinstance(content, list) else CAPTION_SLOT
            rendered = builder.processor.apply_chat_template(
                [*user, {"role": "assistant", "content": answer}], tokenize=False, add_generation_prompt=False)
            if rendered.count(CAPTION_SLOT) != 1:
                raise ValueError("the chat template does not write the assistant's answer as given; "
                                 "the image readout cannot be built for this model")
            self.answer_pieces = PromptPieces.cut(rendered, builder.plain.controls)
            self._check()

    def _check(self) -> None:
        """Refuse a template for which the cut answer prompt does not tokenize like the whole one."""
        probe, caption = Image.new("RGB", (8, 8)), "A dog runs on the beach."
        whole = self.builder.processor(text=[self.answer_pieces.whole(caption)], images=[probe])["input_ids"][0]
        ours = self.image_batch([probe], [caption])[0]["input_ids"][0].tolist()
        if list(whole)[: len(ours)] != ours:
            raise ValueError("the tokenizer reads the caption differently alone than as the assistant's answer; "
                             "the image readout cannot be built for this model")

    def image_batch(self, images: Sequence[Image.Image], captions: Sequence[str],
                    words: Sequence[Sequence[str]] | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Inputs of image prompt + caption as the answer (right-padded), and the caption mask (with
        `words`, per row: the mask of the caption's tokens that overlap those words)."""
        b = self.builder
        enc = b.processor(text=[self.answer_pieces.head] * len(images), images=list(images),
                          padding=True, return_tensors="pt")
        heads = [ids[mask.bool()].tolist() for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
        fitted = b.fit_captions(captions)
        runs, spans = b._caption_runs(self.answer_pieces, fitted)
        scored = spans if words is None else word_spans(b, self.answer_pieces, fitted, words)
        for i, span in enumerate(spans):  # stop at the caption's last token: what follows is not scored
            last = max((j for j, s in enumerate(span) if s), default=-1) + 1
            runs[i], scored[i] = runs[i][:last], scored[i][:last]
        inputs, caption = b._assemble(heads, runs, scored, [])
        b.add_processor_inputs(inputs, enc, heads)
        return inputs, caption

    def text_batch(self, captions: Sequence[str], words: Sequence[Sequence[str]] | None = None
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The study's text-only inputs and their caption masks (with `words`: as image_batch)."""
        b = self.builder
        batch, caption = b._text(list(captions))
        if words is not None:
            fitted = b.fit_captions(captions)
            runs, _ = b._caption_runs(b.text_pieces, fitted)
            scored = word_spans(b, b.text_pieces, fitted, words)
            caption = b._assemble([b.text_head] * len(runs), runs, scored, b.text_tail)[1]
        return batch.inputs, caption

    def batch(self, readout: str, images: Sequence[Image.Image] | None, captions: Sequence[str],
              words: Sequence[Sequence[str]] | None = None):
        """`readout`'s inputs and mask; the concept readouts (`image_concept`, `text_concept`) score
        only the tokens of each row's `words` in its caption."""
        base, concept = readout.removesuffix("_concept"), readout.endswith("_concept")
        if concept and words is None:
            raise ValueError(f"readout {readout}: needs the concept words of each pair")
        if base == "image" and "image" in self.readouts:
            return self.image_batch(images, captions, words if concept else None)
        if base == "text":
            return self.text_batch(captions, words if concept else None)
        raise ValueError(f"readout {readout!r}: choose from {', '.join(self.readouts)}")


def word_spans(builder: PromptBuilder, pieces: PromptPieces, captions: Sequence[str],
               words: Sequence[Sequence[str]]) -> list[list[bool]]:
    """Per caption, over the tokens of its plain-text run: whether a token overlaps one of its
    words, found in the caption as whole words, case-insensitive (a plural `s` counts: "dogs"
    for "dog")."""
    runs = builder.plain.encode([pieces.text(c) for c in captions])
    start, out = len(pieces.left), []
    for caption, run, row in zip(captions, runs, words):
        found = [(m.start() + start, m.end() + start) for w in row if w
                 for m in re.finditer(rf"\b{re.escape(w)}s?\b", caption, flags=re.IGNORECASE)]
        out.append([any(a < e and b > s for s, e in found) for a, b in run.offsets])
    return out


def repeat_rows(inputs: dict[str, torch.Tensor], times: int) -> dict[str, torch.Tensor]:
    """The batch `times` over, whole batch after whole batch (spec-major rows, hooks.build_plan).
    Every model input is batch-first, or (Qwen2-VL's pixel_values) concatenated per image in
    batch order beside a batch-first grid, so repeating along dim 0 keeps them matched."""
    if times == 1:
        return inputs
    return {k: v.repeat(times, *([1] * (v.dim() - 1))) for k, v in inputs.items()}


@torch.inference_mode()
def caption_loglik(model, adapter, inputs: dict[str, torch.Tensor], caption: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probability (float64, nats) of the tokens where `caption` is True,
    each predicted from the positions before it (a token at position 0 has no prediction and is
    not counted). Runs the decoder stack, then the vocabulary head at the predicting positions."""
    forward = adapter.forward_module(model)
    device = model.get_input_embeddings().weight.device
    out = forward(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    targets = caption.clone()
    targets[:, 0] = False
    rows, pos = targets.nonzero(as_tuple=True)
    head = model.get_output_embeddings()
    picked = hidden[rows.to(hidden.device), (pos - 1).to(hidden.device)]
    logits = head(picked.to(head.weight.device)).float()
    ids = inputs["input_ids"][rows, pos].to(logits.device)
    logp = torch.log_softmax(logits, dim=-1).gather(1, ids[:, None])[:, 0].double().cpu()
    return torch.zeros(caption.shape[0], dtype=torch.float64).index_add_(0, rows, logp)
