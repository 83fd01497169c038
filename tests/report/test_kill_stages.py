"""SIGKILL during `analyze`, `plot` and `report` never leaves a truncated file that looks
complete: every Parquet, JSON, HTML, PNG and SVG in DIR is either the old whole file or the
new whole file (outputs are written to a temporary name and renamed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow

COMMANDS = {
    "analyze": ["analyze", "--permutations", "200", "--bootstrap", "200"],
    "plot": ["plot", "--no-png"],  # the browser's PNG/SVG copies: atomic_write, tests/test_atomic_writes.py
    "report": ["report"],
}
# When to kill, as a share of the stage's full run: late enough to be writing, mostly. plot and
# report write one file after another, so one point in their second half finds one being written.
FRACTIONS = {"analyze": (0.5, 0.85), "plot": (0.7,), "report": (0.7,)}


def _whole(path: Path) -> bool:
    """Does the file parse to its end in its own format?"""
    data = path.read_bytes()
    if path.suffix == ".parquet":
        try:
            pq.read_table(path)
            return True
        except Exception:  # noqa: BLE001 - any read failure means a broken file
            return False
    if path.suffix == ".json":
        try:
            json.loads(data)
            return True
        except ValueError:
            return False
    if path.suffix == ".html":
        return data.rstrip().endswith(b"</html>")
    if path.suffix == ".png":
        return data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82")
    if path.suffix == ".svg":
        return data.rstrip().endswith(b"</svg>")
    if path.suffix == ".js":
        return len(data) > 1_000_000  # plotly.min.js is ~4.8 MB; copied atomically
    return True


def _outputs(study: Path) -> list[Path]:
    return [p for p in study.rglob("*") if p.is_file() and not p.name.startswith(".")
            and "activations.zarr" not in p.parts and "assets" not in p.parts]


@pytest.mark.parametrize("stage", list(COMMANDS))
def test_sigkill_during_a_stage_leaves_only_whole_files(tmp_path, small_study, stage):
    command = [sys.executable, "-m", "modalscope", *COMMANDS[stage][:1], str(tmp_path / "s"), *COMMANDS[stage][1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    shutil.copytree(small_study, tmp_path / "s")
    clock = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, timeout=300)
    full = time.perf_counter() - clock
    for fraction in FRACTIONS[stage]:
        for path in _outputs(tmp_path / "s"):
            if path.suffix in (".parquet", ".json", ".html"):
                path.unlink()  # so a file found after the kill was written by the killed run
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(full * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        broken = [str(p) for p in _outputs(tmp_path / "s") if not _whole(p)]
        assert not broken, f"{stage} killed at {fraction:.0%} of {full:.1f} s left truncated files: {broken}"
