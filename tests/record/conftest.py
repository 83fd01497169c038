"""Fixtures of the extraction tests: a JSONL study over copies of the first synthetic images."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def make_jsonl(tmp_path: Path, coco_files: tuple[Path, Path]) -> Callable[[int], Path]:
    """make_jsonl(n): DIR/pairs.jsonl of the first n pairs, images copied (tests may break them)."""

    def make(n: int = 8) -> Path:
        captions, images = coco_files
        data = json.loads(captions.read_text())
        folder = tmp_path / "images"
        folder.mkdir(exist_ok=True)
        lines = []
        for im in data["images"][:n]:
            shutil.copy(images / im["file_name"], folder / im["file_name"])
            caption = next(a["caption"] for a in data["annotations"] if a["image_id"] == im["id"])
            lines.append(json.dumps({"image": f"images/{im['file_name']}", "caption": caption, "id": im["id"]}))
        (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
        return tmp_path / "pairs.jsonl"

    return make
