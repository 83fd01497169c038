"""Captions as text, never control: the prompt cut around its caption, and tokenizers that
read the caption's run as plain text.

Why: a tokenizer parses special-token strings wherever they appear, so a caption holding
`<image>`, `</s>` or `<|im_start|>` would become an image placeholder, an end of sequence or a
turn marker (and the processor would count one image too many). So the prompt is never tokenized as one string: the rendered template is cut
around the caption (`PromptPieces`) into
  head  - up to the template's last control token before the caption (`USER: <image>`),
          tokenized by the processor, which expands the image placeholder and makes pixels;
  text  - the plain-text run holding the caption (`\n{caption} ASSISTANT:`), tokenized with
          every added token treated as ordinary text (`PlainText`);
  tail  - from the next control token on, tokenized normally.
Tokenizers process the text between control tokens independently, so for a caption without
control strings the concatenation is exactly what the whole string gives; the builder
(record/inputs.py) checks that on probe captions when it is made and refuses a tokenizer for
which it is not. `BaseTokens` asks the same of a base model's tokenizer: that it reads the
VLM's text inputs as the VLM does (`--base-model`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenizers import Encoding, Tokenizer

if TYPE_CHECKING:
    from modalscope.record.inputs import PromptBuilder

CAPTION_SLOT = "\u0000CAPTION\u0000"  # where the caption goes in a rendered template, before the cut


@dataclass(frozen=True)
class PromptPieces:
    """A rendered prompt cut around its caption slot (see the module docstring)."""

    head: str
    left: str  # template text before the caption, inside the caption's plain-text run
    right: str  # template text after it, up to the next control token
    tail: str

    @classmethod
    def cut(cls, rendered: str, controls: Sequence[str]) -> "PromptPieces":
        prefix, suffix = rendered.split(CAPTION_SLOT)
        start = max((prefix.rfind(c) + len(c) for c in controls if c in prefix), default=0)
        stop = min((suffix.find(c) for c in controls if c in suffix), default=len(suffix))
        return cls(prefix[:start], prefix[start:], suffix[:stop], suffix[stop:])

    def text(self, caption: str) -> str:
        return self.left + caption + self.right

    def whole(self, caption: str) -> str:
        return self.head + self.text(caption) + self.tail


class PlainText:
    """The model's tokenizer with every added token (special or not) read as ordinary text.

    `split_special_tokens=True` is not enough: it leaves non-special added tokens (Qwen's
    `<tool_call>`) as control tokens. This is a copy of the fast tokenizer's backend with
    every added token flagged special and special-token matching switched off.
    """

    def __init__(self, tokenizer) -> None:
        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        for token in spec.get("added_tokens") or []:
            token["special"] = True
        spec["padding"] = spec["truncation"] = None
        self.backend = Tokenizer.from_str(json.dumps(spec))
        self.backend.encode_special_tokens = True
        self.controls = tuple(sorted((t["content"] for t in spec.get("added_tokens") or []), key=len, reverse=True))

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        return self.backend.encode_batch(list(texts), add_special_tokens=False)


class BaseTokens:
    """Whether a base model's tokenizer reads the VLM's text inputs as the VLM does (the base
    gets the VLM's ids, which must mean the same text to it). Made once: copying a tokenizer
    into `PlainText` takes seconds for a 150k vocabulary, and the manifest walk asks per pair."""

    def __init__(self, builder: PromptBuilder, tokenizer) -> None:
        self.builder = builder
        self.plain = PlainText(tokenizer)
        head = tokenizer(builder.text_pieces.head)["input_ids"]
        ours, text = list(builder.text_tail), builder.text_pieces.tail
        # A token of the VLM's template after the caption that the base lacks (SmolVLM's
        # `<end_of_utterance>`, added to SmolLM2's vocabulary): the base reads the prompt up to it
        # (`forwards.for_base`), which changes no caption token (attention is causal), so only the
        # template before it must read the same; refused where it would be recorded (--tokens all).
        cut = next((i for i, t in enumerate(ours) if t >= len(tokenizer)), None)
        lacked = None if cut is None else builder.tokenizer.convert_ids_to_tokens(ours[cut])
        if lacked is not None:
            ours, text = ours[:cut], text.split(lacked, 1)[0] if lacked in text else None
        tail = None if text is None else tokenizer(text, add_special_tokens=False)["input_ids"]
        self.template = None
        if list(head) != list(builder.text_head) or tail is None or list(tail) != ours:
            self.template = "the template"
        elif lacked is not None and builder.tokens == "all":
            self.template = f"the template (it lacks {lacked!r}, which --tokens all records)"

    def mismatch(self, captions: Sequence[str]) -> str | None:
        """"the template", the first caption read differently (repr), or None."""
        if self.template:
            return self.template
        runs = [self.builder.text_pieces.text(c) for c in self.builder.fit_captions(captions)]
        for caption, ours, theirs in zip(captions, self.builder.plain.encode(runs), self.plain.encode(runs)):
            if ours.ids != theirs.ids:
                return repr(caption)
        return None
