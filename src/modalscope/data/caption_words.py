"""Read the colour, shape, count and size a caption of the drawn world states.

Why: the trained demo VLM is judged by its generated captions (issue 25: accuracy of colour,
shape and count words against the generator's truth) and the ablation readout scores the same
words (issue 26). One reader serves both, and the same grammar the generator uses
(`data/synthetic.py`) defines what a word means: the colour is the palette word right before
the (optionally sized) shape noun, never the background's; the count is the number word, or
one for "a"/"an"/"a single"; a caption that names no shape states nothing (every field None).
"""

from __future__ import annotations

import re

from modalscope.data.synthetic import KINDS, NUMBER_WORDS, PALETTE, SIZE_WORDS

_COUNTS = {word: n for n, word in NUMBER_WORDS.items()} | {"a": 1, "an": 1, "single": 1}
_PATTERN = re.compile(
    r"\b(?:(?P<count>one|two|three|four|a single|an|a)\s+)?(?:(?P<size>small|large)\s+)?"
    r"(?P<colour>" + "|".join(PALETTE) + r")\s+(?:(?P<size2>small|large)\s+)?"
    r"(?P<shape>" + "|".join(KINDS) + r")(?P<plural>s?)\b",
    re.IGNORECASE,
)
FIELDS = ("colour", "shape", "count", "size")


def caption_words(caption: str) -> dict[str, str | None]:
    """{'colour', 'shape', 'count', 'size'} the caption's first shape phrase states (the count
    as its number word; None for what it does not state)."""
    match = _PATTERN.search(caption)
    if match is None:
        return dict.fromkeys(FIELDS)
    count_word = (match["count"] or "").lower().split()[-1:] or [None]
    count = _COUNTS.get(count_word[0]) if count_word[0] else None
    if count is None and match["plural"]:
        count = None  # plural without a number: the count is not stated
    size = (match["size"] or match["size2"] or "").lower() or None
    return {"colour": match["colour"].lower(), "shape": match["shape"].lower(),
            "count": NUMBER_WORDS.get(count) if count else None, "size": size if size in SIZE_WORDS else None}


def truth_words(scene: dict) -> dict[str, str]:
    """The same fields, from the scene the generator drew."""
    shapes = scene["shapes"]
    return {"colour": shapes[0]["color"], "shape": shapes[0]["kind"],
            "count": NUMBER_WORDS[len(shapes)], "size": scene.get("size")}
