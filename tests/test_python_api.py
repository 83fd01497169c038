"""The Python API a notebook uses: `StudyResult` hands back Table 3 and the layer table (read
lazily) and `significant(site, layer, direction)`, checked against a brute-force filter."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from modalscope import StudyResult


def test_a_finished_study_opens_with_its_tables_and_its_significant_neurons(small_study: Path):
    result = StudyResult.open(small_study)
    assert "neurons" not in vars(result)  # nothing read until asked
    t3 = pd.read_parquet(small_study / "tables/table3_neurons.parquet")
    pd.testing.assert_frame_equal(result.neurons, t3)
    assert len(result.layers) == t3.groupby(["site", "layer"]).ngroups
    assert set(result.summary) == set(t3["site"])
    text = result.significant("mlp", layer=2, direction="text")
    brute = [int(r.neuron) for r in t3.itertuples()
             if r.site == "mlp" and r.layer == 2 and r.q_value < 0.05 and r.mean_diff > 0]
    assert sorted(text["neuron"].tolist()) == sorted(brute) and text["t_value"].is_monotonic_decreasing
    image = result.significant("mlp", layer=2, direction="image")
    assert (image["mean_diff"] < 0).all() and image["t_value"].is_monotonic_increasing
    both = result.significant("mlp", layer=2)
    assert len(both) == len(text) + len(image) and both["t_value"].abs().is_monotonic_decreasing
    matched = result.significant("mlp", direction="image", stat="matched_max", q="q_hier")
    assert (matched["q_hier_matched_max"] < 0.05).all() and (matched["mean_diff_matched_max"] < 0).all()


@pytest.mark.parametrize("call, message", [
    (lambda r: r.significant("attn"), "site 'attn': the study has mlp, residual"),
    (lambda r: r.significant("mlp", direction="up"), "direction 'up': choose 'text' (Δ > 0), 'image' (Δ < 0) or None"),
])
def test_a_wrong_question_is_one_line(small_study: Path, call, message):
    with pytest.raises(ValueError) as error:
        call(StudyResult.open(small_study))
    assert str(error.value) == message

