"""The bad-input corpus (issue 6), generated at test time with Pillow (fixture: `bad_corpus`).

`bad_corpus` is one folder holding good and bad pairs side by side, in both data formats:
COCO (`captions.json` + `images/`) and JSONL (`pairs.jsonl`), plus `good.json` / `good.jsonl`
holding only the usable pairs. `CORPUS` lists every pair with the skip reason it must get
(None: usable). Nothing big is allocated: the 20,000 x 20,000 image is a PNG whose header
claims that size.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

LONG_CAPTION = ("A red circle on a white background, next to a blue square. " * 200)[:10_000]
UNICODE_CAPTION = "Un chat 🐱‍👤 assis — שלום עולם مرحبا, e\u0301le\u0300ve au cafe\u0301 👍🏽"
BOMB = "image has 400,000,000 pixels, over the 89,478,485-pixel limit (decompression-bomb guard)"


@dataclass(frozen=True)
class Case:
    pair_id: int
    file_name: str | None  # None: the annotation names an image `images` does not list
    caption: str
    reason: str | None  # the skip reason, None for a usable pair


N_PLAIN = 8  # plain synthetic pairs, ids 1..8
CORPUS = [
    Case(101, "cmyk.jpg", "A red picture.", None),  # 5
    Case(102, "gray16.png", "A grey gradient.", None),  # 6
    Case(103, "rgba.png", "A partly transparent picture.", None),  # 7
    Case(104, "palette.png", "A picture with few colours.", None),  # 8
    Case(105, "exif_rotated.jpg", "A red block in a white picture.", None),  # 10
    Case(106, "000000000001.jpg", UNICODE_CAPTION, None),  # 14
    Case(107, "000000000002.jpg", LONG_CAPTION, None),  # 13
    Case(201, "empty.jpg", "An empty file.", "image file is empty (0 bytes)"),  # 1
    Case(202, "truncated.jpg", "A truncated file.",
         "cannot decode image (image file is truncated (11 bytes not processed))"),  # 2
    Case(203, "text.jpg", "A text file.", "not an image Pillow can read (unknown format)"),  # 3
    Case(204, "missing.jpg", "A missing file.", "image file not found"),  # 4
    Case(205, "bomb.png", "A huge picture.", BOMB),  # 9
    Case(206, "000000000003.jpg", "", "caption is empty"),  # 11
    Case(207, "000000000004.jpg", " \t\n ", "caption is whitespace only"),  # 12
]
GOOD_IDS = [str(i) for i in range(1, N_PLAIN + 1)] + [str(c.pair_id) for c in CORPUS if c.reason is None]


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming `width` x `height`, with no real pixel data."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def write_bad_images(folder: Path) -> None:
    """Every corpus image file (cases 1-3, 5-10); `missing.jpg` is, on purpose, not written."""
    folder.mkdir(parents=True, exist_ok=True)
    ramp = (np.indices((96, 128)).sum(0) % 256).astype(np.uint8)
    photo = Image.fromarray(np.stack([ramp, 255 - ramp, ramp // 2], axis=-1))
    photo.save(folder / "photo.jpg", quality=90)
    data = (folder / "photo.jpg").read_bytes()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("a text file, not a JPEG\n")
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)
    gray = np.linspace(0, 65535, 64 * 48).round().astype(np.uint16).reshape(48, 64)
    Image.fromarray(gray).save(folder / "gray16.png")
    rgba = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle((0, 0, 31, 47), fill=(255, 0, 0, 128))
    ImageDraw.Draw(rgba).rectangle((32, 0, 63, 23), fill=(0, 0, 255, 255))
    rgba.save(folder / "rgba.png")
    photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(folder / "palette.png")
    (folder / "bomb.png").write_bytes(png_header_only(20_000, 20_000))
    rotated = Image.new("RGB", (40, 20), "white")
    rotated.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    rotated.save(folder / "exif_rotated.jpg", quality=95, exif=exif.tobytes())


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory: pytest.TempPathFactory, coco_files: tuple[Path, Path]) -> Path:
    """COCO and JSONL files over good and bad pairs; see the module docstring."""
    root = tmp_path_factory.mktemp("bad")
    images = root / "images"
    write_bad_images(images)
    captions, synthetic = coco_files
    data = json.loads(captions.read_text())
    plain = {}
    for image in data["images"][:N_PLAIN]:
        shutil.copy(synthetic / image["file_name"], images / image["file_name"])
        plain[image["id"]] = image["file_name"]
    first = {}
    for ann in data["annotations"]:
        if ann["image_id"] in plain and ann["image_id"] not in first:
            first[ann["image_id"]] = ann["caption"]
    good_images = [{"id": i, "file_name": name} for i, name in plain.items()]
    good_anns = [{"id": 1000 + i, "image_id": i, "caption": first[i]} for i in plain]
    bad_images, bad_anns = [], []
    for case in CORPUS:
        entry = {"id": case.pair_id, "file_name": case.file_name}
        ann = {"id": 1000 + case.pair_id, "image_id": case.pair_id, "caption": case.caption}
        (good_images if case.reason is None else bad_images).append(entry)
        (good_anns if case.reason is None else bad_anns).append(ann)
    # 17: an image id listed twice with different files, and an annotation of an unlisted image
    bad_images += [{"id": 208, "file_name": "000000000005.jpg"}, {"id": 208, "file_name": "000000000006.jpg"}]
    bad_anns += [{"id": 1208, "image_id": 208, "caption": "Listed twice."},
                 {"id": 1209, "image_id": 209, "caption": "An orphan caption."}]
    coco = {"info": {}, "images": good_images + bad_images, "annotations": good_anns + bad_anns}
    (root / "captions.json").write_text(json.dumps(coco))
    (root / "good.json").write_text(json.dumps({"images": good_images, "annotations": good_anns}))
    captions_by_id = {a["image_id"]: a["caption"] for a in good_anns + bad_anns}

    def line(pair_id: int, name: str) -> str:
        return json.dumps({"image": f"images/{name}", "caption": captions_by_id[pair_id], "id": str(pair_id)},
                          ensure_ascii=False)

    good_lines = [line(e["id"], e["file_name"]) for e in good_images]
    bad_lines = [line(e["id"], e["file_name"]) for e in bad_images]
    (root / "pairs.jsonl").write_text("\n".join(good_lines + bad_lines) + "\n", encoding="utf-8")
    (root / "good.jsonl").write_text("\n".join(good_lines) + "\n", encoding="utf-8")
    return root
