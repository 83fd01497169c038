"""Tests for the synthetic MSCOCO-format dataset (modalscope.data.synthetic)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modalscope.data.synthetic import PALETTE, build_synthetic_coco

# Reference colours independent of the module's palette: the sampled pixel must
# be nearer to its own name here than to any other name.
CANONICAL = {
    "red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "orange": (255, 165, 0), "purple": (128, 0, 128), "black": (0, 0, 0), "white": (255, 255, 255),
}
KIND_WORDS = {"circle", "square", "triangle", "star"}
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
PHRASES = {
    (0, 0): "in the top left corner", (0, 1): "at the top", (0, 2): "in the top right corner",
    (1, 0): "on the left", (1, 1): "at the center", (1, 2): "on the right",
    (2, 0): "in the bottom left corner", (2, 1): "at the bottom", (2, 2): "in the bottom right corner",
}
JPEG_TOL = 40  # max per-channel error of a 3x3 mean inside a flat region


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synthetic")
    path = build_synthetic_coco(root)
    return path, json.loads(path.read_text())


def _pixels(root: Path, file_name: str) -> np.ndarray:
    with Image.open(root / "images" / file_name) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def _sample(px: np.ndarray, x: int, y: int) -> np.ndarray:
    return px[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(axis=0)


def _assert_colour(rgb: np.ndarray, name: str, where: str) -> None:
    assert np.abs(rgb - np.array(PALETTE[name])).max() <= JPEG_TOL, (where, name, rgb)
    nearest = min(CANONICAL, key=lambda n: np.linalg.norm(rgb - np.array(CANONICAL[n])))
    assert nearest == name, (where, name, nearest, rgb)


def test_returns_annotation_path_and_schema(built):
    path, data = built
    assert path.name == "captions_demo.json" and path.parent.name == "annotations"
    assert set(data) == {"info", "licenses", "images", "annotations"}
    assert isinstance(data["info"], dict) and isinstance(data["licenses"], list)
    for img in data["images"]:
        assert isinstance(img["id"], int) and isinstance(img["file_name"], str)
        assert isinstance(img["width"], int) and isinstance(img["height"], int)
        scene = img["scene"]
        assert scene["background"] in PALETTE and 1 <= len(scene["shapes"]) <= 4
        for shape in scene["shapes"]:
            assert shape["kind"] in KIND_WORDS and shape["color"] in PALETTE
            assert len(shape["bbox"]) == 4 and len(shape["center"]) == 2
    for ann in data["annotations"]:
        assert isinstance(ann["id"], int) and isinstance(ann["image_id"], int)
        assert isinstance(ann["caption"], str) and ann["caption"].isascii()
    assert path.read_bytes().isascii()


def test_counts_ids_and_files(built):
    path, data = built
    images = data["images"]
    assert len(images) == 240
    assert [img["id"] for img in images] == list(range(1, 241))
    ann_ids = [a["id"] for a in data["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))
    per_image = defaultdict(list)
    for ann in data["annotations"]:
        per_image[ann["image_id"]].append(ann["caption"])
    assert set(per_image) == {img["id"] for img in images}
    assert all(len(caps) >= 2 and len(set(caps)) == len(caps) for caps in per_image.values())
    for img in images:
        with Image.open(path.parent.parent / "images" / img["file_name"]) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size == (img["width"], img["height"]) == (256, 256)


def test_scene_geometry(built):
    _, data = built
    counts, kinds = set(), set()
    for img in data["images"]:
        w, h, shapes = img["width"], img["height"], img["scene"]["shapes"]
        counts.add(len(shapes))
        assert len({(s["kind"], s["color"]) for s in shapes}) == 1
        kinds.add(shapes[0]["kind"])
        assert img["scene"]["background"] != shapes[0]["color"]
        for i, s in enumerate(shapes):
            x0, y0, x1, y1 = s["bbox"]
            assert 0 < x0 < x1 < w - 1 and 0 < y0 < y1 < h - 1
            assert x0 < s["center"][0] < x1 and y0 < s["center"][1] < y1
            for t in shapes[i + 1:]:
                a0, b0, a1, b1 = t["bbox"]
                assert x1 < a0 or a1 < x0 or y1 < b0 or b1 < y0, (img["id"], s, t)
    assert counts == {1, 2, 3, 4} and kinds == KIND_WORDS


def test_pixels_match_scene(built):
    path, data = built
    root = path.parent.parent
    for img in data["images"]:
        px, scene = _pixels(root, img["file_name"]), img["scene"]
        for s in scene["shapes"]:
            _assert_colour(_sample(px, *s["center"]), s["color"], f"{img['file_name']} {s}")
        w, h = img["width"], img["height"]
        for x, y in ((2, 2), (w - 3, 2), (2, h - 3), (w - 3, h - 3)):
            assert not any(s["bbox"][0] <= x <= s["bbox"][2] and s["bbox"][1] <= y <= s["bbox"][3]
                           for s in scene["shapes"])
            _assert_colour(_sample(px, x, y), scene["background"], f"{img['file_name']} corner")


def test_captions_are_true(built):
    _, data = built
    scenes = {img["id"]: img for img in data["images"]}
    for ann in data["annotations"]:
        img = scenes[ann["image_id"]]
        scene, caption = img["scene"], ann["caption"]
        words = set(re.findall(r"[a-z]+", caption.lower()))
        n, kind, colour = len(scene["shapes"]), scene["shapes"][0]["kind"], scene["shapes"][0]["color"]
        assert colour in words, caption
        assert (words & set(PALETTE)) <= {colour, scene["background"]}, caption
        assert (words & {w for k in KIND_WORDS for w in (k, k + "s")}) == {kind if n == 1 else kind + "s"}, caption
        wrong_numbers = {word for c, word in NUMBERS.items() if c != n}
        assert not words & wrong_numbers, caption
        if n == 1:
            assert words & {"a", "an", "one", "single"}, caption
            cx, cy = scene["shapes"][0]["center"]
            cell = (min(2, 3 * cy // img["height"]), min(2, 3 * cx // img["width"]))
            assert PHRASES[cell] in caption.lower(), (caption, cx, cy)
            assert scene["position"] == PHRASES[cell]
        else:
            assert NUMBERS[n] in words, caption
            assert scene["position"] is None
            assert not any(p in caption.lower() for p in PHRASES.values()), caption


def test_deterministic(built, tmp_path):
    path_a, data_a = built
    path_b = build_synthetic_coco(tmp_path / "b")
    assert path_a.read_bytes() == path_b.read_bytes()
    for img in data_a["images"][:: len(data_a["images"]) // 5]:
        np.testing.assert_array_equal(_pixels(path_a.parent.parent, img["file_name"]),
                                      _pixels(path_b.parent.parent, img["file_name"]))
    path_c = build_synthetic_coco(tmp_path / "c", seed=1)
    data_c = json.loads(path_c.read_text())
    assert path_c.read_bytes() != path_a.read_bytes()
    assert sum(a["scene"] != c["scene"] for a, c in zip(data_a["images"], data_c["images"])) > 200


def test_idempotent_and_atomic(tmp_path):
    root = tmp_path / "d"
    path = build_synthetic_coco(root, n_images=20, seed=3)
    first_image = root / "images" / "000000000001.jpg"
    stamps = (path.stat().st_mtime_ns, first_image.stat().st_mtime_ns)
    content = path.read_bytes()
    assert build_synthetic_coco(root, n_images=20, seed=3) == path
    assert build_synthetic_coco(root, n_images=50, seed=9) == path  # existing file wins
    assert (path.stat().st_mtime_ns, first_image.stat().st_mtime_ns) == stamps
    assert path.read_bytes() == content
    assert sorted(p.name for p in path.parent.iterdir()) == ["captions_demo.json"]
    # A half-built dataset (images but no JSON) is rebuilt to the same result.
    path.unlink()
    (root / "images" / "000000000002.jpg").write_bytes(b"truncated")
    assert build_synthetic_coco(root, n_images=20, seed=3) == path
    assert path.read_bytes() == content
    with Image.open(root / "images" / "000000000002.jpg") as im:
        assert im.size == (256, 256)
