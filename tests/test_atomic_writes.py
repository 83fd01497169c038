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


# ----------------------------------------------------------------- durability, strict JSON
def _refuse(token: str) -> None:
    raise ValueError(f"non-standard JSON token {token}")


def _record_fsyncs(monkeypatch) -> list[tuple[str, bool]]:
    """Patch os.fsync to log (what was synced, whether it was a folder) and still sync."""
    import os
    import stat

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("names open files through /proc (Linux)")
    calls: list[tuple[str, bool]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(os.fstat(fd).st_mode)))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


@pytest.mark.parametrize("writer", ["frame", "json", "figure"])
def test_every_writer_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch, writer):
    from modalscope.figures.export import atomic_write

    calls = _record_fsyncs(monkeypatch)
    target = tmp_path / {"frame": "t.parquet", "json": "s.json", "figure": "f.html"}[writer]
    if writer == "frame":
        write_frame(pd.DataFrame({"x": [1.0]}), target)
    elif writer == "json":
        write_json({"a": 1}, target)
    else:
        atomic_write(target, b"<html></html>")
    # one mechanism (files.atomic) for all: the temporary file, then the folder holding it
    assert [is_dir for _, is_dir in calls] == [False, True]
    assert Path(calls[0][0]).name.startswith(f".{target.name}.") and calls[0][0].endswith(".tmp")
    assert Path(calls[1][0]) == tmp_path
    assert target.exists() and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_summary_json_is_strict_json_with_null_for_nan(tmp_path):
    import json
    import math

    import numpy as np

    from modalscope.tables import read_summary

    summary = {"mlp": {"slope": float("nan"), "r2": np.float64("nan"), "stderr": np.float32(0.5),
                       "bounds": [float("inf"), -float("inf"), 1.0], "n_inputs": 3, "contrast": "text - image",
                       "by_stat": {"mean": {"slope": np.nan, "intercept": 2.0}}}}
    path = write_json(summary, tmp_path / "summary.json")
    strict = json.loads(path.read_text(), parse_constant=_refuse)  # old: NaN / Infinity tokens
    assert strict["mlp"] == {"slope": None, "r2": None, "stderr": 0.5, "bounds": [None, None, 1.0],
                             "n_inputs": 3, "contrast": "text - image",
                             "by_stat": {"mean": {"slope": None, "intercept": 2.0}}}
    back = read_summary(path)["mlp"]  # the figures and report read NaN again
    assert math.isnan(back["slope"]) and math.isnan(back["by_stat"]["mean"]["slope"]) and back["n_inputs"] == 3


def test_a_real_analysis_summary_with_nan_is_strict_json(tmp_path):
    """Two layers: the trend (linregress needs 3) is NaN, and summary.json still parses strictly."""
    import json

    import numpy as np

    from modalscope.analysis import AnalysisSettings, run_analysis
    from modalscope.record.reductions import ALWAYS as STATS
    from modalscope.store import ActivationStore
    from modalscope.streams import UNIMODAL as CONDITIONS

    rng = np.random.default_rng(0)
    store = ActivationStore.create(tmp_path / "a.zarr", 2, {"mlp": 3}, 4, {"seed": 0})
    store.append({c: {"mlp": {s: rng.normal(size=(4, 2, 3)).astype(np.float32) for s in STATS}} for c in CONDITIONS},
                 {c: [1] * 4 for c in CONDITIONS})
    summary = run_analysis(store, AnalysisSettings(n_perm=200, n_boot=200)).summary
    assert np.isnan(summary["mlp"]["slope"])
    text = write_json(summary, tmp_path / "summary.json").read_text()
    parsed = json.loads(text, parse_constant=_refuse)
    assert parsed["mlp"]["slope"] is None and parsed["mlp"]["n_inputs"] == 4
