"""The `caption_words` readout: does the model, captioning its own image, still name the right
colour, shape, count and size once a set is ablated?

Why: the log-likelihood readouts (readouts.py) measure how well the model predicts a caption it
is given; what a user of a captioning model sees is the caption it writes. For pairs whose
concept labels are the drawn world's (the synthetic set's colour, shape, number word and size:
`data/synthetic.py` `scene_concepts`, read by `--instances` or a JSONL `concepts` field), the
truth of each of those words is known, so the model's own caption can be scored:

  1. the image-only prompt of the image readout (the family's template, an image in the user
     turn, the assistant turn opened), left-padded so that every row ends at the same column;
  2. greedy decoding of at most `new_tokens` tokens (24 by default: every caption of the drawn
     world fits), cut at the end of turn, with the row's ablation in place at every step;
  3. `data/caption_words.py` reads the first shape phrase of the caption (the same reader the
     trained demo VLM is evaluated with), and each field scores 1 when it equals the truth,
     0 when it is wrong or not stated (a caption that omits its colour has lost it).

Per pair and field that is a 0/1 value, so the table's effect is the change in accuracy (in
[-1, 1]) with its CI over pairs and its p against random sets, like any other readout. Pairs
without drawn-world labels, and fields the labels lack (a scene without a size), are NaN and
left out. Readouts of the table: `generated_colour_acc`, `generated_shape_acc`,
`generated_count_acc`, `generated_size_acc` (the last only when some scored pair has a size).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from modalscope.data.caption_words import caption_words
from modalscope.data.synthetic import WORLD_CONCEPT_GROUPS

READOUT = "caption_words"  # what --readouts takes
FIELDS = tuple(group for group, _ in WORLD_CONCEPT_GROUPS)  # colour, shape, count, size
NEW_TOKENS = 24  # greedy tokens per caption


def field_readout(field: str) -> str:
    """The table's readout name of a field: `generated_colour_acc`, ..."""
    return f"generated_{field}_acc"


def label_truth(labels: Sequence[str] | None) -> dict[str, str | None] | None:
    """The colour, shape, count (number word) and size a pair's concept labels state, when they
    are the drawn world's: every label a word of one of its groups, exactly one colour, shape and
    count, at most one size. None otherwise (unlabelled, COCO categories, ...)."""
    if not labels:
        return None
    truth: dict[str, str | None] = dict.fromkeys(FIELDS)
    for label in labels:
        group = next((g for g, words in WORLD_CONCEPT_GROUPS if str(label) in words), None)
        if group is None or truth[group] is not None:
            return None
        truth[group] = str(label)
    if any(truth[f] is None for f in ("colour", "shape", "count")):
        return None
    return truth


def manifest_truths(manifest) -> list[dict[str, str | None] | None]:
    """`label_truth` of each manifest row's `concepts` (None for every row without the column)."""
    if "concepts" not in manifest.columns:
        return [None] * len(manifest)
    return [label_truth(None if c is None else list(c)) for c in manifest["concepts"]]


def fields_of(truths: Sequence[dict | None]) -> tuple[str, ...]:
    """The fields some pair has a truth for (size only in a world that draws sizes)."""
    return tuple(f for f in FIELDS if any(t is not None and t[f] is not None for t in truths))


def score(captions: Sequence[str], truths: Sequence[dict | None], fields: Sequence[str]) -> dict[str, np.ndarray]:
    """Per field, per caption: 1.0 when the caption's word equals the truth, 0.0 when it is another
    word or none, NaN without a truth."""
    out = {f: np.full(len(captions), np.nan) for f in fields}
    for i, (caption, truth) in enumerate(zip(captions, truths)):
        if truth is None:
            continue
        said = caption_words(caption)
        for f in fields:
            if truth[f] is not None:
                out[f][i] = float(said[f] == truth[f])
    return out


def prompt_batch(readouts, images) -> dict[str, torch.Tensor]:
    """The image-only prompt of `readouts` (a ReadoutBuilder) for each image, left-padded for
    generation: input_ids, attention_mask, the processor's vision inputs untouched and its
    per-token arrays (Qwen's `mm_token_type_ids`) moved with their tokens."""
    b = readouts.builder
    enc = b.processor(text=[readouts.answer_pieces.head] * len(images), images=list(images), padding=True,
                      return_tensors="pt")
    real = [m.bool() for m in enc["attention_mask"]]
    heads = [ids[m] for ids, m in zip(enc["input_ids"], real)]
    width = max(len(h) for h in heads)
    pad = b.tokenizer.pad_token_id if b.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(heads), width), pad, dtype=torch.long)
    mask = torch.zeros((len(heads), width), dtype=torch.long)
    for i, head in enumerate(heads):
        ids[i, width - len(head):] = head
        mask[i, width - len(head):] = 1
    inputs = {"input_ids": ids, "attention_mask": mask}
    inputs.update({k: enc[k] for k in b.adapter.vision_inputs if k in enc})
    for key in b.adapter.token_inputs:
        if key in enc:
            values = torch.zeros_like(ids, dtype=enc[key].dtype)
            for i, (head, m) in enumerate(zip(heads, real)):
                values[i, width - len(head):] = enc[key][i][m]
            inputs[key] = values
    return inputs


def stop_ids(loaded) -> set[int]:
    """Token ids that end a caption: the tokenizer's end of sequence and the model's configured
    ones (e.g. `<|im_end|>`), and the pad id generation fills finished rows with."""
    tok = loaded.processor.tokenizer
    ids = {tok.eos_token_id, tok.pad_token_id}
    config = getattr(loaded.model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return {int(i) for i in ids if i is not None}


@torch.inference_mode()
def generate_captions(loaded, inputs: dict[str, torch.Tensor], new_tokens: int = NEW_TOKENS) -> list[str]:
    """Greedy captions of a prompt batch (`prompt_batch`, rows repeated as the ablation plan
    wants), each cut at its first end-of-turn token and decoded without special tokens."""
    from transformers import GenerationConfig

    model, tok = loaded.model, loaded.processor.tokenizer
    stops = stop_ids(loaded)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (min(stops) if stops else 0)
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                              eos_token_id=sorted(stops) or None, use_cache=True)
    device = model.get_input_embeddings().weight.device
    out = model.generate(**{k: v.to(device) for k, v in inputs.items()}, generation_config=config)
    new = out[:, inputs["input_ids"].shape[1]:].cpu().tolist()
    texts = []
    for row in new:
        end = next((j for j, t in enumerate(row) if t in stops), len(row))
        texts.append(tok.decode(row[:end], skip_special_tokens=True).strip())
    return texts
