"""Image-caption pairs from an MSCOCO captions file or a JSONL file.

Why: a study is defined by its pairs. COCO gives several captions per image; we keep one,
chosen deterministically (the annotation with the lowest id) and recorded by its
annotation id, so a pair always means the same image and the same sentence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """Bad input data; the message is one line naming the file, the pair and the problem."""


@dataclass(frozen=True)
class Pair:
    pair_id: str
    image_path: str  # absolute path
    caption: str
    caption_id: int | None = None  # COCO annotation id of the chosen caption


def load_coco(captions_json: Path, images_dir: Path) -> list[Pair]:
    """One pair per image that has at least one caption, in image-id order."""
    captions_json = Path(captions_json)
    try:
        data = json.loads(captions_json.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(
            f"{captions_json}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}"
        ) from None
    for key in ("images", "annotations"):
        if key not in data:
            raise DataError(f"{captions_json}: missing '{key}' (not a COCO captions file)")
    files = {int(image["id"]): image["file_name"] for image in data["images"]}
    chosen: dict[int, dict] = {}
    for ann in data["annotations"]:
        image_id = int(ann["image_id"])
        if image_id not in chosen or int(ann["id"]) < int(chosen[image_id]["id"]):
            chosen[image_id] = ann
    pairs = []
    for image_id in sorted(chosen):
        if image_id not in files:
            raise DataError(
                f"{captions_json}: annotation {chosen[image_id]['id']} points to unknown "
                f"image id {image_id}"
            )
        pairs.append(
            Pair(
                pair_id=str(image_id),
                image_path=str((Path(images_dir) / files[image_id]).resolve()),
                caption=str(chosen[image_id]["caption"]).strip(),
                caption_id=int(chosen[image_id]["id"]),
            )
        )
    return pairs


def load_jsonl(path: Path) -> list[Pair]:
    """Lines of {"image": path, "caption": text, "id": ...}; image paths are relative to the file."""
    path = Path(path)
    pairs = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                image, caption = record["image"], record["caption"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DataError(
                    f"{path}, line {number}: expected {{\"image\": ..., \"caption\": ..., "
                    f"\"id\": ...}} ({type(err).__name__}: {err})"
                ) from None
            pair_id = str(record.get("id", number))
            pairs.append(
                Pair(
                    pair_id=pair_id,
                    image_path=str((path.parent / image).resolve()),
                    caption=str(caption).strip(),
                )
            )
    ids = [p.pair_id for p in pairs]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: pair ids are not unique")
    return pairs
