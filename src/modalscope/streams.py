"""The names of what a study records per pair: the one home of conditions, streams and the
reductions every store holds.

A *condition* is a forward the user asks for (`--conditions`): the caption alone, the image
alone, and both in one turn. A *stream* is what the store records: one per unimodal forward,
three for the joint one (all its content tokens, its caption tokens, its image tokens), and,
with `--base-model`, the base language model's reading of the text input.
"""

from __future__ import annotations

CONDITIONS = ("text", "image", "image_text")  # the forwards --conditions chooses from
UNIMODAL = ("text", "image")  # the report's two: always recorded, Δ = text - image by default
# The default forwards: the report's two. image_text is opt-in: its forward costs as much as the
# image one (the image tokens dominate), so it would take extraction to ~2x the unimodal cost.
DEFAULT_CONDITIONS = UNIMODAL
JOINT_STREAMS = ("image_text", "image_text_caption", "image_text_image")
BASE_STREAM = "text_base"  # the text input through --base-model, the LLM the VLM was trained from
# Always recorded: the report's own reduction (raw max) and the mean. Here, not in
# record/reductions, because the store (below record/ in the data flow) reads it too.
ALWAYS_REDUCTIONS = ("max", "mean")


def streams(conditions: tuple[str, ...], base_model: bool) -> tuple[str, ...]:
    """The streams recorded for these conditions (with or without a base model), in store order."""
    joint = JOINT_STREAMS if "image_text" in conditions else ()
    return (*UNIMODAL, *joint, *((BASE_STREAM,) if base_model else ()))
