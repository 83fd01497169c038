"""SIGKILL during extraction at an arbitrary moment, then `extract --resume`: the arrays and
the tables equal those of an uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from cli_run import modalscope

pytestmark = pytest.mark.slow
N_PAIRS, BATCH = 24, 2


def _extract(out: Path, model: Path, jsonl: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "modalscope", "extract", "--out", str(out), "--model", str(model),
            "--jsonl", str(jsonl), "--num-pairs", str(N_PAIRS), "--batch-size", str(BATCH),
            "--device", "cpu", "--quiet", "--stats", "matched_max", "--conditions", "text,image", "--sort-window", "2", *extra]


def _n_done(store: Path) -> int:
    try:
        return int(json.loads((store / "zarr.json").read_text())["attributes"]["n_done"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, coco_files) -> Path:
    captions, images = coco_files
    data = json.loads(captions.read_text())
    root = tmp_path_factory.mktemp("pairs")
    lines = [json.dumps({"image": str(images / im["file_name"]), "id": im["id"],
                         "caption": next(a["caption"] for a in data["annotations"] if a["image_id"] == im["id"])})
             for im in data["images"][:N_PAIRS]]
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root / "pairs.jsonl"


def test_sigkill_then_resume_is_bit_identical(tmp_path, tiny_model_dir, pairs):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert modalscope(*_extract(clean, tiny_model_dir, pairs)[3:]).returncode == 0  # in process: no kill

    rng = np.random.default_rng(int(time.time()))
    target = int(rng.integers(2, N_PAIRS // BATCH - 2)) * BATCH
    proc = subprocess.Popen(_extract(killed, tiny_model_dir, pairs), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while _n_done(killed / "activations.zarr") < target and proc.poll() is None:
            assert time.monotonic() < deadline, "extraction did not progress"
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0, 0.05)))  # land anywhere inside a later batch
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    stopped = _n_done(killed / "activations.zarr")
    assert 0 < stopped < N_PAIRS, f"killed too late to test anything ({stopped})"

    done = modalscope("extract", "--out", killed, "--resume", "--device", "cpu", "--quiet")
    assert done.returncode == 0, done.stderr
    a = zarr.open_group(str(clean / "activations.zarr"), mode="r")
    b = zarr.open_group(str(killed / "activations.zarr"), mode="r")
    assert b.attrs["n_done"] == N_PAIRS
    names = [f"{site}/{c}/{s}" for site in a.attrs["sites"] for c in a.attrs["conditions"] for s in a.attrs["stats"]]
    for name in names + [f"tokens/{c}" for c in a.attrs["conditions"]]:
        np.testing.assert_array_equal(b[name][:], a[name][:], err_msg=name)

    from modalscope import StudyConfig
    from modalscope.study import analyze_stage, prepare_manifest

    for out in (clean, killed):
        config = StudyConfig(out_dir=out, n_perm=200, n_boot=200)
        analyze_stage(config, prepare_manifest(config))
    for table in ("table1_activations", "table3_neurons", "layers"):
        pd.testing.assert_frame_equal(pd.read_parquet(killed / f"tables/{table}.parquet"),
                                      pd.read_parquet(clean / f"tables/{table}.parquet"))


def test_resume_without_a_study_is_refused_in_one_line(tmp_path):
    done = modalscope("extract", "--out", tmp_path, "--resume")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "nothing to resume" in done.stderr
