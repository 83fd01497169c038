"""Data-parallel extraction with torchrun or accelerate launch (gloo, 2 CPU processes) equals
one process, the random twin's recording included (each rank builds the same twin from the
study's seed and records its shard of the pairs), and shard statistics merged with Chan's
formula equal a single pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from modalscope.stats.moments import RunningMoments

N_PAIRS, BATCH = 11, 2  # an odd count: the last window is short and lands on rank 0


def _args(out, model, jsonl):
    return ["-m", "modalscope", "extract", "--out", str(out), "--model", str(model), "--jsonl", str(jsonl),
            "--num-pairs", str(N_PAIRS), "--batch-size", str(BATCH), "--device", "cpu", "--quiet",
            "--stats", "matched_max", "--conditions", "text,image,image_text", "--sort-window", "2",
            "--control", "random-twin"]


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_model_dir, coco_files):
    """The jsonl of the first N_PAIRS pairs and a single-process extraction of it."""
    captions, images = coco_files
    data = json.loads(captions.read_text())
    lines = [json.dumps({"image": str(images / im["file_name"]), "id": im["id"],
                         "caption": next(a["caption"] for a in data["annotations"] if a["image_id"] == im["id"])})
             for im in data["images"][:N_PAIRS]]
    root = tmp_path_factory.mktemp("single")
    jsonl = root / "pairs.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    done = subprocess.run([sys.executable, *_args(root / "one", tiny_model_dir, jsonl)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    return jsonl, root / "one"


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531"],
    # accelerate's multi-process launcher; on CPU-only machines our ranks join with gloo
    "accelerate": [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", "29532"],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_processes_equal_one(tmp_path, tiny_model_dir, single, launcher):
    jsonl, one = single
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parallel = subprocess.run([*LAUNCHERS[launcher], *_args(tmp_path / "two", tiny_model_dir, jsonl)],
                              capture_output=True, text=True, env=env, timeout=300)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    assert (tmp_path / "two/shards/rank1.zarr").exists()
    shard = zarr.open_group(str(tmp_path / "two/shards/rank1.zarr"), mode="r")
    assert shard.attrs["n_done"] == 4  # windows of 2 batches x 2 pairs: rank 1 has window 1
    twin_shard = zarr.open_group(str(tmp_path / "two/control/random-twin/shards/rank1.zarr"), mode="r")
    assert twin_shard.attrs["n_done"] == 4  # the twin's windows are the study's
    for store in ("activations.zarr", "control/random-twin/activations.zarr"):
        _assert_same_store(one / store, tmp_path / "two" / store)
    a = zarr.open_group(str(one / "activations.zarr"), mode="r")
    twin = zarr.open_group(str(one / "control/random-twin/activations.zarr"), mode="r")
    assert not np.array_equal(twin["mlp/text/max"][:], a["mlp/text/max"][:])  # another network's


def _assert_same_store(one: Path, two: Path) -> None:
    a = zarr.open_group(str(one), mode="r")
    b = zarr.open_group(str(two), mode="r")
    assert b.attrs["n_done"] == N_PAIRS
    assert {k: v for k, v in b.attrs.items() if k != "versions"} == {k: v for k, v in a.attrs.items() if k != "versions"}
    for site in a.attrs["sites"]:
        for condition in a.attrs["conditions"]:
            for stat in a.attrs["stats"]:
                name = f"{site}/{condition}/{stat}"
                np.testing.assert_array_equal(b[name][:], a[name][:], err_msg=name)
    for condition in a.attrs["conditions"]:
        np.testing.assert_array_equal(b[f"tokens/{condition}"][:], a[f"tokens/{condition}"][:])


def test_shard_moments_merge_to_one_pass():
    rng = np.random.default_rng(4)
    delta = rng.normal(3.0, 2.0, size=(1003, 64)) * rng.uniform(0.1, 10, size=64)
    one = RunningMoments()
    one.add(delta)
    shards = []
    for part in np.array_split(delta, 5):  # e.g. five ranks, uneven sizes
        shard = RunningMoments()
        for block in np.array_split(part, 3):
            shard.add(block)
        shards.append(shard)
    merged = RunningMoments()
    for shard in shards:
        merged.merge(shard)
    np.testing.assert_array_equal(merged.n, one.n)
    np.testing.assert_allclose(merged.mean, one.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.m2, one.m2, rtol=1e-12)
    np.testing.assert_allclose(merged.mean, delta.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.sd, delta.std(0, ddof=1), rtol=1e-12)
