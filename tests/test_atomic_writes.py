"""Every output file is written to a temporary name and renamed: a failed write leaves the old
file whole and no temporary behind (files.atomic, which tables, the manifest and the figures share)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from modalscope.data.manifest import SKIPPED, load_skipped, save_skipped
from modalscope.data.pairs import Pair
from modalscope.tables import atomic, write_frame, write_json


def _unwritable() -> pd.DataFrame:
    return pd.DataFrame({"x": [1, "a", object()]})  # pyarrow cannot convert this column


def test_failed_parquet_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path):
    path = write_frame(pd.DataFrame({"x": [1, 2]}), tmp_path / "t.parquet", csv=True)
    before = path.read_bytes()
    with pytest.raises((TypeError, ValueError)):  # pyarrow's ArrowTypeError / ArrowInvalid
        write_frame(_unwritable(), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.parquet"]


def test_failed_json_write_keeps_the_old_file(tmp_path: Path):
    path = write_json({"a": 1}, tmp_path / "summary.json")
    with pytest.raises(TypeError):
        write_json({"a": object()}, path)
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_atomic_renames_only_when_the_block_ends(tmp_path: Path):
    target = tmp_path / "out.txt"
    with pytest.raises(KeyboardInterrupt), atomic(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert not target.exists() and not list(tmp_path.iterdir())
    with atomic(target) as tmp:
        tmp.write_text("whole")
        assert not target.exists()
    assert target.read_text() == "whole"


def test_skip_list_is_written_atomically_and_even_when_empty(tmp_path: Path):
    save_skipped([], tmp_path)
    assert list(load_skipped(tmp_path).columns) == ["pair_id", "image_path", "caption", "caption_id", "reason"]
    save_skipped([(Pair("7", "/x.jpg", "", 3), "caption is empty")], tmp_path)
    assert load_skipped(tmp_path).to_dict("records") == [
        {"pair_id": "7", "image_path": "/x.jpg", "caption": "", "caption_id": 3, "reason": "caption is empty"}]
    assert [p.name for p in tmp_path.iterdir()] == [SKIPPED]
