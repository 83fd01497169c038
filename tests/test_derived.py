"""The store keeps nothing twice (derived.py): holes where another array holds the row, filled on read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modalscope import derived
from modalscope.record.inputs import PromptBuilder
from modalscope.store import ActivationStore
from reducing import joint_image_and_image

STREAMS = ("text", "image", "image_text", "image_text_caption", "image_text_image")
STATS = ("max", "mean", "matched_max")


def _records(rng: np.random.Generator, batch: int = 4) -> dict:
    records = {s: {"mlp": {st: rng.normal(size=(batch, 2, 5)).astype(np.float32) for st in STATS}} for s in STREAMS}
    for stat in STATS:  # the joint image tokens: the image forward's, up to float rounding
        image = records["image"]["mlp"][stat]
        records["image_text_image"]["mlp"][stat] = image * np.float32(1 + 1e-6)
    records["image_text_image"]["mlp"]["mean"][2, 1, 3] += 0.5  # row 2: a different prefix, say
    return records


def test_derivable_rows_are_holes_on_disk_and_their_source_on_read(tmp_path: Path):
    rng = np.random.default_rng(0)
    records = _records(rng)
    n_tokens = {"text": np.array([3, 9, 4, 2]), "image": np.array([5, 5, 5, 5]), "image_text": np.array([9, 14, 10, 8]),
                "image_text_caption": np.array([3, 9, 3, 2]), "image_text_image": np.array([5, 5, 5, 5])}
    store = ActivationStore.create(tmp_path / "s.zarr", 2, {"mlp": 5}, 4, {}, stats=STATS, conditions=STREAMS)
    punched, flags = derived.punch(records, n_tokens)
    assert flags["image_text_image"].tolist() == [True, True, False, True]
    store.append(punched, n_tokens, flags=flags)
    store = ActivationStore.read(tmp_path / "s.zarr")
    raw = store.array("mlp", "text", "matched_max")[:]
    shortest = np.array([True, False, False, True])  # text's count is the pair's fewest in rows 0 and 3
    assert np.isnan(raw[shortest]).all() and np.isfinite(raw[~shortest]).all()
    for layer in range(2):
        got = store.read_layer("mlp", "text", "matched_max", layer)
        want = np.where(shortest[:, None], records["text"]["mlp"]["max"][:, layer], records["text"]["mlp"]["matched_max"][:, layer])
        np.testing.assert_array_equal(got, want)
        for stat in STATS:
            got = store.read_layer("mlp", "image_text_image", stat, layer)
            image = store.read_layer("mlp", "image", stat, layer)
            np.testing.assert_array_equal(got[[0, 1, 3]], image[[0, 1, 3]])  # derived: the image forward's
            recorded = records["image_text_image"]["mlp"][stat][2, layer]
            np.testing.assert_array_equal(got[2], recorded)  # stored as recorded: the check failed
    assert store.group[f"{derived.FLAGS}/image_text_image"][:].tolist() == [True, True, False, True]


def test_the_joint_check_names_a_row_that_differs_beyond_the_tolerance():
    rng = np.random.default_rng(1)
    records = _records(rng, 3)
    assert derived.joint_matches(records).tolist() == [True, True, False]
    scale = np.abs(records["image"]["mlp"]["max"][:, 0]).max()
    records["image_text_image"]["mlp"]["max"][0, 0, 0] = records["image"]["mlp"]["max"][0, 0, 0] + 2 * derived.RTOL * scale
    assert derived.joint_matches(records).tolist() == [False, True, False]


def test_the_small_study_stores_neither_duplicate(small_study: Path):
    """The tiny LLaVA's joint prompt shares the image-only prompt's prefix: every joint image row
    is derived, so those arrays hold no chunk on disk; text/matched_max is text/max where text is
    the shortest stream, bit for bit (the golden hashes of the values read back did not move)."""
    store = ActivationStore.read(small_study / "activations.zarr")
    assert store.group[f"{derived.FLAGS}/image_text_image"][: store.n_done].all()
    for site in store.sites:
        for stat in store.stats:
            path = small_study / "activations.zarr" / site / "image_text_image" / stat / "c"
            assert not path.exists() or not any(p.is_file() for p in path.rglob("*")), (site, stat)
            np.testing.assert_array_equal(store.read_layer(site, "image_text_image", stat, 1),
                                          store.read_layer(site, "image", stat, 1))
    shortest = derived.shortest(store.token_counts(), "text")
    assert shortest.any()
    raw = store.array("mlp", "text", "matched_max")[: store.n_done]
    assert np.isnan(raw[shortest]).all() and not np.isnan(raw[~shortest]).any()


def test_on_the_real_llava_template_the_joint_image_tokens_are_the_image_forwards(real_loaded):
    """The check's claim on llava-1.5's own template and processor: the rows agree to float32
    rounding (far inside RTOL), so the derivation holds for the real model, not only the tiny one."""
    builder = PromptBuilder.for_model(real_loaded, "content")
    images = [Image.new("RGB", (40 + 9 * i, 30), (30 * i, 90, 200 - 20 * i)) for i in range(3)]
    captions = ["a red bus", "two dogs playing in the snow near a fence", "tea"]
    records = joint_image_and_image(real_loaded, builder, images, captions, ("residual", "mlp"), torch.tensor([2, 2, 2]))
    assert derived.joint_matches(records).all()
    for site in ("residual", "mlp"):
        a, b = records["image_text_image"][site]["max"], records["image"][site]["max"]
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
def test_the_joint_check_sees_stored_values_at_the_stored_resolution(dtype):
    """Forwards that agree to float32 rounding still round apart in a 16-bit dtype now and then:
    not a different computation. A difference of twice the dtype's step still is one."""
    from modalscope.store_dtypes import STORE_DTYPES

    dtype = STORE_DTYPES[dtype] if isinstance(dtype, str) else np.dtype(dtype)
    rng = np.random.default_rng(2)
    image = (rng.uniform(0.5, 1.0, size=(3, 2, 4000)) * rng.choice([-1, 1], size=(3, 2, 4000))).astype(np.float32)
    joint = image * np.float32(1 + 1e-6)  # a few float32 steps apart; near the top, where a step of the dtype counts
    records = {s: {"mlp": {"max": v.astype(dtype)}} for s, v in (("image", image), ("image_text_image", joint))}
    flips = (records["image"]["mlp"]["max"] != records["image_text_image"]["mlp"]["max"]).sum()
    assert flips > 0  # some values do round apart
    assert derived.joint_matches(records).tolist() == [True, True, True]
    eps = float(np.finfo(np.float16).eps) if dtype == np.float16 else 2.0 ** -7
    assert derived.tolerance(derived.RTOL, dtype) == max(derived.RTOL, eps)
    top = np.abs(image[1]).max()
    records["image_text_image"]["mlp"]["max"][1, 0, 0] = np.float32(image[1, 0, 0] + 2.5 * max(derived.RTOL, eps) * top)
    assert derived.joint_matches(records).tolist() == [True, False, True]
