"""Planted-effect validation: the study must find neurons we wired to prefer one modality.

`planted.build_planted_llava` edits the tiny checkpoint so that known MLP neurons of one
layer fire only on image tokens and others only on caption words (see its docstring). The
study is recorded and analysed on it (tests/analysed.py), and Table 3 must put exactly those neurons at the two ends of
their layer's Cohen's d ranking, significant after BH, with Δ = text - image of the right
sign.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from modalscope.config import StudyConfig
from analysed import extract_and_analyze
from planted import build_planted_llava

pytestmark = pytest.mark.slow

N_PAIRS = 40


def effect_column(stat: str) -> str:
    """Table 3's Cohen's d column for a statistic (the report's name for max)."""
    return "cohen_d" if stat == "max" else f"cohen_d_{stat}"


def precision_recall(found: list[int], planted: list[int]) -> tuple[float, float]:
    hits = len(set(found) & set(planted))
    return hits / max(len(found), 1), hits / len(planted)


@pytest.fixture(scope="module")
def planted_study(tmp_path_factory, tiny_model_dir: Path, coco_files: tuple[Path, Path]):
    root = tmp_path_factory.mktemp("planted")
    planted = build_planted_llava(tiny_model_dir, root / "model")
    captions, images = coco_files
    extract_and_analyze(
        StudyConfig(
            out_dir=root / "study",
            model=str(root / "model"),
            captions=captions,
            images=images,
            num_pairs=N_PAIRS,
            batch_size=8,
            device="cpu",
            sites=("mlp",),
            stats=("max", "matched_max"),
            conditions=("text", "image"),
            n_perm=200,
            n_boot=200,
            png=False,
            progress=False,
        )
    )
    table = pd.read_parquet(root / "study" / "tables" / "table3_neurons.parquet")
    stored = json.loads((root / "study" / "activations.zarr" / "zarr.json").read_text())["attributes"]
    assert stored["store_dtype"] == "float16"  # the default: the plant is found through a float16 store
    return planted, table


@pytest.mark.parametrize("stat", ["max", "matched_max"])
def test_planted_neurons_are_found(planted_study, stat):
    planted, table = planted_study
    image, text = planted["image_neurons"], planted["text_neurons"]
    d = effect_column(stat)
    q, diff = d.replace("cohen_d", "q_value"), d.replace("cohen_d", "mean_diff")
    layer = table[(table["site"] == "mlp") & (table["layer"] == planted["layer"])]
    assert len(layer) > len(image) + len(text)
    # A neuron whose Δ does not vary has no d (NaN); it cannot count as found.
    ranked = layer.dropna(subset=[d]).sort_values(d, kind="stable")["neuron"].tolist()

    # The n most negative d (image-preferring, Δ < 0) and the n most positive (text).
    for found, wanted, side in (
        (ranked[: len(image)], image, "image"),
        (ranked[::-1][: len(text)], text, "text"),
    ):
        precision, recall = precision_recall(found, wanted)
        assert precision >= 0.95 and recall >= 0.95, (side, found, wanted, precision, recall)

    rows = layer.set_index("neuron")
    assert (rows.loc[image + text, q] < 0.05).all(), rows.loc[image + text, [q, d]]
    assert (rows.loc[image, diff] < 0).all(), rows.loc[image, [diff, d]]
    assert (rows.loc[text, diff] > 0).all(), rows.loc[text, [diff, d]]
