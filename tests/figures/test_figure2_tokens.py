"""Figure 2's note names the study's own token counts (the store's `tokens/<stream>`), not one
number for every family: LLaVA-1.5 has 576 image tokens, Qwen2.5-VL 216-484, LLaVA-NeXT 1,440-2,880."""

from __future__ import annotations

import html

import numpy as np

from modalscope.figures.trend import token_counts, token_lengths
from modalscope.report.page import REPORT, _figure2_note


def test_the_lengths_are_the_contrasted_streams_own():
    counts = {"text": np.array([9, 12, 14, 11, 25]), "image": np.array([216, 484, 300, 256, 400]),
              "image_text": np.array([230, 500, 310, 270, 420])}
    assert token_lengths(counts) == "median 12 (9-25) caption vs median 300 (216-484) image tokens"
    assert token_lengths(counts, "image_text − text") == (
        "median 310 (230-500) image_text vs median 12 (9-25) caption tokens")
    assert token_lengths({"text": np.array([7, 7]), "image": np.full(2, 576)}) == "7 caption vs 576 image tokens"
    assert token_lengths({"text": np.array([9])}) is None and token_lengths({}) is None
    note = _figure2_note("max", "matched_max", "text − image", {"text": np.array([10, 14]),
                                                               "image": np.array([1440, 2880])})
    assert "median 12 (10-14) caption vs median 2,160 (1,440-2,880) image tokens in this study" in note
    assert "576" not in note
    assert "fewer tokens on one side" in _figure2_note("max", "matched_max", "text − image", {})


def test_the_report_names_the_demo_study_own_lengths(small_study):
    counts = token_counts(small_study)
    assert {"text", "image"} <= set(counts) and all(len(n) == 16 for n in counts.values())
    text = html.unescape((small_study / REPORT).read_text(encoding="utf-8"))
    assert f"removes the length bias of a max over {token_lengths(counts)} in this study." in text
    assert "~10 caption vs 576" not in text
