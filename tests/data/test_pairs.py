"""Loading image-caption pairs from COCO captions JSON and from JSONL (modalscope.data.pairs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modalscope.data.pairs import DataError, Pair, load_coco, load_jsonl


def _write_coco(path: Path, images: list[dict], annotations: list[dict]) -> Path:
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return path


@pytest.fixture
def hand_coco(tmp_path: Path) -> tuple[Path, Path]:
    """3 images (ids 30, 7, 12), annotations in shuffled order; image 99 has no caption."""
    images = [
        {"id": 30, "file_name": "thirty.jpg"},
        {"id": 7, "file_name": "seven.jpg"},
        {"id": 99, "file_name": "uncaptioned.jpg"},
        {"id": 12, "file_name": "sub/twelve.jpg"},
    ]
    annotations = [
        {"id": 505, "image_id": 7, "caption": "seven, not lowest"},
        {"id": 40, "image_id": 30, "caption": "thirty, not lowest"},
        {"id": 8, "image_id": 12, "caption": "  twelve, lowest  "},
        {"id": 501, "image_id": 7, "caption": "seven, lowest"},
        {"id": 9, "image_id": 30, "caption": "thirty, lowest"},
        {"id": 900, "image_id": 7, "caption": "seven, highest"},
        {"id": 10, "image_id": 30, "caption": "thirty, second"},
    ]
    (tmp_path / "imgs").mkdir()
    return _write_coco(tmp_path / "captions.json", images, annotations), tmp_path / "imgs"


def test_coco_keeps_lowest_annotation_id_per_image_in_image_id_order(hand_coco):
    captions, images = hand_coco
    pairs = load_coco(captions, images)
    assert [p.pair_id for p in pairs] == ["7", "12", "30"]  # image-id order; 99 has no caption
    assert [p.caption_id for p in pairs] == [501, 8, 9]
    assert [p.caption for p in pairs] == ["seven, lowest", "twelve, lowest", "thirty, lowest"]


def test_coco_choice_does_not_depend_on_annotation_order(hand_coco, tmp_path):
    captions, images = hand_coco
    data = json.loads(captions.read_text())
    reversed_path = _write_coco(
        tmp_path / "reversed.json", data["images"][::-1], data["annotations"][::-1]
    )
    assert load_coco(reversed_path, images) == load_coco(captions, images)


def test_coco_image_paths_are_absolute_and_resolved_against_image_folder(hand_coco, tmp_path, monkeypatch):
    captions, _ = hand_coco
    monkeypatch.chdir(tmp_path)
    pairs = {p.pair_id: p for p in load_coco(Path("captions.json"), Path("imgs"))}
    real = os.path.realpath(tmp_path / "imgs")
    assert pairs["7"].image_path == os.path.join(real, "seven.jpg")
    assert pairs["12"].image_path == os.path.join(real, "sub", "twelve.jpg")
    assert all(os.path.isabs(p.image_path) for p in pairs.values())


def test_coco_synthetic_set_one_pair_per_image_with_its_first_caption(coco_files):
    captions, images = coco_files
    data = json.loads(captions.read_text())
    pairs = load_coco(captions, images)
    assert len(pairs) == len(data["images"]) == 40
    first = {}
    for ann in data["annotations"]:
        if ann["image_id"] not in first or ann["id"] < first[ann["image_id"]]["id"]:
            first[ann["image_id"]] = ann
    names = {img["id"]: img["file_name"] for img in data["images"]}
    for pair in pairs:
        ann = first[int(pair.pair_id)]
        assert (pair.caption_id, pair.caption) == (ann["id"], ann["caption"].strip())
        assert pair.image_path == os.path.realpath(images / names[int(pair.pair_id)])
        assert Path(pair.image_path).is_file()


def test_coco_malformed_json_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken_captions.json"
    path.write_text('{\n"images": [1,,2]\n}')  # line 2, column 14: the second comma
    with pytest.raises(DataError) as err:
        load_coco(path, tmp_path)
    message = str(err.value)
    assert "broken_captions.json" in message
    assert "line 2" in message and "column 14" in message
    assert "\n" not in message


@pytest.mark.parametrize("missing", ["images", "annotations"])
def test_coco_missing_top_level_key_error_names_the_key(tmp_path, missing):
    data = {"images": [{"id": 1, "file_name": "a.jpg"}],
            "annotations": [{"id": 1, "image_id": 1, "caption": "x"}]}
    del data[missing]
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=f"'{missing}'") as err:
        load_coco(path, tmp_path)
    assert "captions.json" in str(err.value)


def test_coco_annotation_with_unknown_image_is_a_pair_marked_unusable(tmp_path):
    path = _write_coco(
        tmp_path / "captions.json",
        [{"id": 1, "file_name": "a.jpg"}],
        [{"id": 11, "image_id": 1, "caption": "ok"}, {"id": 4242, "image_id": 77, "caption": "orphan"}],
    )
    good, orphan = load_coco(path, tmp_path)
    assert good.problem is None
    assert orphan == Pair("77", "", "orphan", 4242,
                          "annotation 4242 points to image id 77, which 'images' does not list")


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_image_paths_relative_to_file_and_ids_kept(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    path = _write_jsonl(folder / "pairs.jsonl", [
        json.dumps({"image": "img/a.png", "caption": " a cat ", "id": "cat-1"}),
        "",
        json.dumps({"image": "../b.png", "caption": "a dog", "id": 17}),
    ])
    monkeypatch.chdir(tmp_path)  # relative to the file, not the working directory
    pairs = load_jsonl(Path("data/pairs.jsonl"))
    real = os.path.realpath(folder)
    assert pairs == [
        Pair("cat-1", os.path.join(real, "img", "a.png"), "a cat", None),
        Pair("17", os.path.join(os.path.dirname(real), "b.png"), "a dog", None),
    ]
    assert load_jsonl(path) == pairs


def test_jsonl_without_id_uses_line_number(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [
        json.dumps({"image": "a.png", "caption": "first"}),
        "",
        json.dumps({"image": "b.png", "caption": "third line"}),
    ])
    assert [p.pair_id for p in load_jsonl(path)] == ["1", "3"]


@pytest.mark.parametrize(
    "bad",
    ['{"image": "b.png", "caption": ', '{"image": "b.png"}', '["b.png", "caption"]'],
    ids=["invalid-json", "missing-caption", "not-an-object"],
)
def test_jsonl_bad_line_error_names_file_and_line_number(tmp_path, bad):
    path = _write_jsonl(tmp_path / "pairs.jsonl", [
        json.dumps({"image": "a.png", "caption": "ok", "id": 1}),
        "",
        bad,
        json.dumps({"image": "c.png", "caption": "ok", "id": 3}),
    ])
    with pytest.raises(DataError) as err:
        load_jsonl(path)
    message = str(err.value)
    assert str(path) in message
    assert "line 3" in message
    assert "\n" not in message


def test_jsonl_duplicate_ids_for_different_pairs_mark_every_one_unusable(tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", [
        json.dumps({"image": "a.png", "caption": "one", "id": "x"}),
        json.dumps({"image": "b.png", "caption": "two", "id": "y"}),
        json.dumps({"image": "c.png", "caption": "three", "id": "x"}),
        json.dumps({"image": "b.png", "caption": "two", "id": "y"}),  # an exact repeat: kept once
    ])
    pairs = load_jsonl(path)
    assert [(p.pair_id, p.caption, p.problem) for p in pairs] == [
        ("x", "one", "pair id 'x' is used for different pairs (lines 1, 3)"),
        ("y", "two", None),
        ("x", "three", "pair id 'x' is used for different pairs (lines 1, 3)"),
    ]
