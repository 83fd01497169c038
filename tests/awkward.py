"""Awkward captions: what real COCO-like data and real tokenizers throw at the text path.

`AWKWARD` is a fixed corpus (the edge-case study runs it end to end); `varied(n, seed)`
generates many more of the same kinds for property tests.
"""

from __future__ import annotations

import random

SPECIAL_TEXT = ["<image>", "<s>", "</s>", "<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "[INST]", "[/INST]",
                "<|vision_start|>", "<|image_pad|>", "<tool_call>", "USER:", "ASSISTANT:"]

AWKWARD = [
    "TWO DOGS PLAYING",
    "APPLE logo on a laptop",
    "A MAN RIDING A WAVE ON TOP OF A SURFBOARD.",
    "STOP sign at the corner of 5TH AVE",
    "a photo of <image> on a table",
    "<image>",
    "<image><image> two placeholders",
    "the end </s> and more text after it",
    "<s> a caption that starts with BOS text",
    "a sentence with <s> in the middle",
    "<unk> unknown and <pad> padding",
    "<|im_start|>user a turn marker inside<|im_end|>",
    "[INST] an instruction tag [/INST]",
    "<|vision_start|><|image_pad|><|vision_end|> vision tags",
    "USER: a fake turn ASSISTANT: a fake reply",
    "1234567890 987 65 4",
    "3.14159 2,718 1e-9 100% $5.00",
    "!!!???...,,,;;;:::",
    "-----=====+++++*****",
    "((([[[{{{}}}]]])))",
    "a dog 🐶 and a cat 🐱 on a sofa 🛋️",
    "👨‍👩‍👧‍👦 family emoji with joiners",
    "一只狗在草地上奔跑",
    "東京の夜景とネオンサイン",
    "한국어 캡션 입니다",
    "Кошка сидит на окне",
    "قطة تجلس على النافذة",
    "café naïve résumé façade",
    "e\u0301 combining accent",
    "   leading spaces",
    "trailing spaces   ",
    "\ttab at the start",
    "tabs\tin\tthe\tmiddle",
    "a line\nbreak in the caption",
    "\n\nnewlines around\n\n",
    "two  spaces   three    four",
    "x",
    "A",
    ".",
    "a",
    "A very long caption: " + " ".join(f"word{i % 97} and THING{i % 13}," for i in range(500))[:4980],
    "",
    "   ",
    "\u200b\u200b\u200b",
]


def varied(n: int, seed: int = 0) -> list[str]:
    """`n` captions mixing the kinds above: case, digits, punctuation runs, emoji, CJK,
    special-token text, and surrounding or inner whitespace (tabs, newlines)."""
    rng = random.Random(seed)
    words = ["dog", "DOGS", "Apple", "STOP", "a", "on", "the", "laptop", "PLAYING", "café", "狗", "猫", "🐶",
             "🛋️", "42", "3.5", "!!", "...", "?!", "--", "'s", "n't", "x", "Z", "Кошка", "名前"]
    pads = ["", " ", "  ", "\t", "\n", " \n", "\t "]
    out = []
    for _ in range(n):
        parts = [rng.choice(words + SPECIAL_TEXT if rng.random() < 0.2 else words) for _ in range(rng.randint(1, 12))]
        if rng.random() < 0.3:
            parts = [p.upper() for p in parts]
        seps = [rng.choice([" ", " ", " ", "", "\t", "  ", "\n"]) for _ in parts]
        text = "".join(p + s for p, s in zip(parts, seps)).strip(" ") or "a"
        out.append(rng.choice(pads) + text + rng.choice(pads))
    return out
