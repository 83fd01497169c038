"""The manifest: seeded shuffle, prefix property, save/load, and reuse by prepare_manifest."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modalscope.config import StudyConfig
from modalscope.data.manifest import (
    COLUMNS, MANIFEST, load_manifest, manifest_hash, save_manifest, manifest_frame, shuffled,
)
from modalscope.data.pairs import DataError, Pair, load_coco, load_jsonl
from modalscope.study import prepare_manifest


@pytest.fixture(scope="module")
def pairs(coco_files) -> list[Pair]:
    return load_coco(*coco_files)


def test_shuffle_same_seed_same_order_different_seed_different_order(pairs):
    a = manifest_frame(shuffled(pairs, 3))
    b = manifest_frame(shuffled(pairs, 3))
    c = manifest_frame(shuffled(pairs, 4))
    pd.testing.assert_frame_equal(a, b)
    assert a["pair_id"].tolist() != c["pair_id"].tolist()
    assert sorted(a["pair_id"]) == sorted(c["pair_id"])


def test_shuffle_is_a_permutation_of_the_pairs_with_rows_intact(pairs):
    frame = manifest_frame(shuffled(pairs, 0))
    assert list(frame.columns) == COLUMNS
    assert len(frame) == len(pairs) == 40
    by_id = {p.pair_id: p for p in pairs}
    assert set(frame["pair_id"]) == set(by_id)
    for row in frame.itertuples(index=False):
        pair = by_id[row.pair_id]
        assert (row.image_path, row.caption, row.caption_id) == (
            pair.image_path, pair.caption, pair.caption_id
        )
    # a real shuffle: the synthetic ids are 1..40, so image-id order would be 1, 2, 3, ...
    assert frame["pair_id"].tolist() != [str(i) for i in range(1, 41)]


def test_shuffle_does_not_depend_on_input_list_order(pairs):
    scrambled = list(pairs)
    random.Random(123).shuffle(scrambled)
    assert [p.pair_id for p in scrambled] != [p.pair_id for p in pairs]
    pd.testing.assert_frame_equal(
        manifest_frame(shuffled(scrambled, 7)), manifest_frame(shuffled(pairs, 7))
    )


def test_shuffle_num_pairs_is_prefix_of_full_order(pairs):
    """A larger --num-pairs with the same seed extends the list: the first rows are the same."""
    full = manifest_frame(shuffled(pairs, 11))
    for k in (2, 10, 40):
        part = manifest_frame(shuffled(pairs[:], 11)[:k])
        assert len(part) == k
        pd.testing.assert_frame_equal(part, full.iloc[:k].reset_index(drop=True))


def test_shuffle_input_index_is_zero_to_n_minus_one(pairs):
    frame = manifest_frame(shuffled(pairs, 5)[:17])
    assert frame["input_index"].dtype == np.int64
    assert frame["input_index"].tolist() == list(range(17))


def test_save_load_round_trip_preserves_rows_and_metadata(pairs, tmp_path):
    frame = manifest_frame(shuffled(pairs, 2)[:12])
    meta = {"seed": 2, "num_pairs": 12, "source": "/some/captions.json", "nested": {"a": [1, None]}}
    path = save_manifest(frame, tmp_path / "study", meta)
    assert path == tmp_path / "study" / MANIFEST and path.is_file()
    assert not list((tmp_path / "study").glob("*.tmp"))
    loaded, loaded_meta = load_manifest(tmp_path / "study")
    pd.testing.assert_frame_equal(loaded, frame)
    assert loaded_meta == meta


def test_save_load_round_trip_jsonl_pairs_without_caption_ids(tmp_path):
    lines = [json.dumps({"image": f"{i}.png", "caption": f"caption {i}", "id": f"p{i}"}) for i in range(5)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    frame = manifest_frame(shuffled(load_jsonl(tmp_path / "pairs.jsonl"), 0))
    assert frame["caption_id"].isna().all()
    save_manifest(frame, tmp_path, {})
    loaded, meta = load_manifest(tmp_path)
    pd.testing.assert_frame_equal(loaded, frame)
    assert meta == {}


def test_load_manifest_without_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="no manifest"):
        load_manifest(tmp_path)


def test_manifest_hash_changes_with_order_and_is_stable(pairs):
    frame = manifest_frame(shuffled(pairs, 0))
    assert manifest_hash(frame) == manifest_hash(frame.copy())
    assert len(manifest_hash(frame)) == 64
    swapped = frame.iloc[[1, 0, *range(2, len(frame))]].reset_index(drop=True)
    assert manifest_hash(swapped) != manifest_hash(frame)
    other_seed = manifest_frame(shuffled(pairs, 1))
    assert manifest_hash(other_seed) != manifest_hash(frame)


def test_manifest_hash_changes_with_caption(pairs):
    frame = manifest_frame(shuffled(pairs, 0))
    edited = frame.copy()
    edited.loc[3, "caption"] = edited.loc[3, "caption"] + " edited"
    assert manifest_hash(edited) != manifest_hash(frame)


def test_shuffle_of_empty_data_raises_data_error_not_key_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    pairs = load_jsonl(tmp_path / "empty.jsonl")
    assert pairs == []
    try:
        frame = manifest_frame(shuffled(pairs, 0))
    except DataError:
        return
    assert list(frame.columns) == COLUMNS and len(frame) == 0


# prepare_manifest ---------------------------------------------------------------------------
@pytest.fixture
def coco_copy(coco_dir, tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "coco"
    shutil.copytree(coco_dir, root)
    return root / "annotations" / "captions_demo.json", root / "images"


def _config(out_dir: Path, captions=None, images=None, **kw) -> StudyConfig:
    return StudyConfig(out_dir=out_dir, model="unused", captions=captions, images=images, **kw)


def test_prepare_manifest_first_call_writes_manifest(coco_copy, tmp_path):
    captions, images = coco_copy
    out = tmp_path / "study"
    frame = prepare_manifest(_config(out, captions, images, seed=9, num_pairs=25))
    assert (out / MANIFEST).is_file()
    unchecked = manifest_frame(shuffled(load_coco(captions, images), 9)[:25])
    pd.testing.assert_frame_equal(frame.drop(columns="image_sha256"), unchecked.drop(columns="image_sha256"))
    assert frame["image_sha256"].str.fullmatch("[0-9a-f]{64}").all()  # taken when each pair was checked
    saved, meta = load_manifest(out)
    pd.testing.assert_frame_equal(saved, frame)
    assert meta == {"seed": 9, "num_pairs": 25, "source": str(captions.resolve())}


def test_prepare_manifest_rerun_reuses_saved_manifest_after_data_changed(coco_copy, tmp_path):
    captions, images = coco_copy
    out = tmp_path / "study"
    config = _config(out, captions, images, seed=1)
    first = prepare_manifest(config)
    saved_bytes = (out / MANIFEST).read_bytes()
    data = json.loads(captions.read_text())
    for ann in data["annotations"]:
        ann["caption"] = "rewritten " + ann["caption"]
    data["images"] = data["images"][:5]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] <= 5]
    captions.write_text(json.dumps(data))
    assert len(load_coco(captions, images)) == 5  # the data on disk really changed
    second = prepare_manifest(_config(out, captions, images, seed=1))
    pd.testing.assert_frame_equal(second, first)
    assert len(second) == 40
    assert not second["caption"].str.startswith("rewritten").any()
    assert (out / MANIFEST).read_bytes() == saved_bytes


def test_prepare_manifest_different_seed_for_same_dir_raises_naming_seed(coco_copy, tmp_path):
    captions, images = coco_copy
    out = tmp_path / "study"
    prepare_manifest(_config(out, captions, images, seed=0))
    with pytest.raises(DataError, match="seed") as err:
        prepare_manifest(_config(out, captions, images, seed=1))
    assert "\n" not in str(err.value)


def test_prepare_manifest_different_num_pairs_raises_naming_num_pairs(coco_copy, tmp_path):
    captions, images = coco_copy
    out = tmp_path / "study"
    prepare_manifest(_config(out, captions, images, num_pairs=10))
    with pytest.raises(DataError, match="num_pairs"):
        prepare_manifest(_config(out, captions, images, num_pairs=20))


def test_prepare_manifest_without_data_arguments_reuses_existing_manifest(coco_copy, tmp_path):
    captions, images = coco_copy
    out = tmp_path / "study"
    first = prepare_manifest(_config(out, captions, images, seed=4, num_pairs=30))
    again = prepare_manifest(_config(out, seed=123))  # no data: seed is not checked
    pd.testing.assert_frame_equal(again, first)


def test_prepare_manifest_without_data_or_manifest_raises(tmp_path):
    with pytest.raises(DataError, match="no manifest"):
        prepare_manifest(_config(tmp_path / "empty"))
    assert not (tmp_path / "empty" / MANIFEST).exists()


def test_a_store_without_its_manifest_is_refused_and_left_alone(tmp_path, coco_files):
    captions, images = coco_files
    (tmp_path / "activations.zarr").mkdir()
    (tmp_path / "activations.zarr" / "zarr.json").write_text("{}")
    config = StudyConfig(out_dir=tmp_path, captions=captions, images=images, num_pairs=4)
    with pytest.raises(DataError) as err:
        prepare_manifest(config)
    assert str(err.value) == (f"{tmp_path}: holds activations.zarr but no manifest.parquet, so its rows cannot "
                              "be matched to pairs; use a new --out (nothing was written)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["activations.zarr"]
