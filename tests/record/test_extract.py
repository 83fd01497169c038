"""The extraction loop: a bad image stops with one line naming file and pair, finished
batches are kept, and rerunning after the fix continues to the same result as a clean run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from modalscope import StudyConfig
from modalscope.data.pairs import DataError
from modalscope.study import extract_stage, prepare_manifest


def _jsonl(tmp_path, coco_files, n=8):
    captions, images = coco_files
    data = json.loads(captions.read_text())
    folder = tmp_path / "images"
    folder.mkdir()
    lines = []
    for im in data["images"][:n]:
        shutil.copy(images / im["file_name"], folder / im["file_name"])
        caption = next(a["caption"] for a in data["annotations"] if a["image_id"] == im["id"])
        lines.append(json.dumps({"image": f"images/{im['file_name']}", "caption": caption, "id": im["id"]}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "pairs.jsonl"


def _config(out, jsonl, model):
    return StudyConfig(out_dir=out, model=str(model), jsonl=jsonl, batch_size=2, device="cpu",
                       png=False, progress=False)


def test_bad_image_keeps_finished_batches_and_rerun_continues(tmp_path, coco_files, tiny_model_dir):
    jsonl = _jsonl(tmp_path, coco_files)
    clean = _config(tmp_path / "clean", jsonl, tiny_model_dir)
    extract_stage(clean, prepare_manifest(clean))

    broken = _config(tmp_path / "broken", jsonl, tiny_model_dir)
    manifest = prepare_manifest(broken)
    victim = manifest.iloc[5]  # third batch of two
    original = open(victim.image_path, "rb").read()
    with open(victim.image_path, "w") as f:
        f.write("not a jpeg")
    with pytest.raises(DataError) as err:
        extract_stage(broken, manifest)
    message = str(err.value)
    assert "\n" not in message and victim.image_path in message and f"pair {victim.pair_id}" in message
    group = zarr.open_group(str(tmp_path / "broken/activations.zarr"), mode="r")
    assert group.attrs["n_done"] == 4  # the two finished batches are kept

    with open(victim.image_path, "wb") as f:
        f.write(original)
    extract_stage(broken, prepare_manifest(broken))
    done = zarr.open_group(str(tmp_path / "broken/activations.zarr"), mode="r")
    ref = zarr.open_group(str(tmp_path / "clean/activations.zarr"), mode="r")
    assert done.attrs["n_done"] == 8
    for name in ("mlp/text/max", "mlp/image/mean", "residual/image/max", "tokens/text"):
        np.testing.assert_array_equal(done[name][:], ref[name][:])


def test_dataloader_workers_give_the_same_store_and_one_line_errors(tmp_path, coco_files, tiny_model_dir):
    jsonl = _jsonl(tmp_path, coco_files, n=6)
    stores = {}
    for workers in (0, 2):
        config = _config(tmp_path / f"w{workers}", jsonl, tiny_model_dir)
        config.workers = workers
        extract_stage(config, prepare_manifest(config))
        stores[workers] = zarr.open_group(str(tmp_path / f"w{workers}/activations.zarr"), mode="r")
    for name in ("mlp/text/max", "residual/image/matched_max", "mlp/image_text_caption/mean"):
        np.testing.assert_array_equal(stores[2][name][:], stores[0][name][:])

    config = _config(tmp_path / "bad", jsonl, tiny_model_dir)
    config.workers = 2
    manifest = prepare_manifest(config)
    victim = manifest.iloc[3]
    with open(victim.image_path, "w") as f:
        f.write("not a jpeg")
    with pytest.raises(DataError) as err:
        extract_stage(config, manifest)
    assert "\n" not in str(err.value) and f"pair {victim.pair_id}" in str(err.value)
