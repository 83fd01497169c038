"""A damaged store is never analysed, and a resume never mixes inputs (issue 23, points 2 and 3).

2. Every chunk carries zarr v3's crc32c (store.py): 40 flipped bytes in a shard of `mlp/text/max`,
   the shard truncated, or deleted, make `analyze` stop in one line naming the array, the window
   and the file; the intact copy analyses to the very tables of the study. A store made before the
   checksums still reads.
3. The store records the sha256 of each weight file and the manifest the sha256 of each image:
   same-size weights scaled by 1.05, or another picture under an unrecorded pair, are refused on
   `extract --resume`, naming the file or the pair.

Measured on the tiny study (16 pairs, every stream and reduction, float32; 2 shared cores): the
checksum adds 4 bytes per chunk, +0.12% of the chunk bytes (3,960,500 -> 3,965,136 bytes for 64
pairs in 295 files), and its write time is within the run-to-run noise (process CPU to append 64
pairs, medians of two interleaved series: 1.75 s without vs 1.59 s with, 1.68 s vs 1.90 s; crc32c
itself runs at ~11 GB/s, i.e. ~0.4 ms for those 4 MB). The weights' sha256: 1.6 ms for the tiny
model's 1.2 MB, 0.1 ms on a resume that reuses the recorded digests; ~1.5 GB/s here (SHA-NI), so
~10 s for a 7B checkpoint's 14 GB, hashed in a thread while the model loads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from cli_run import modalscope

FAST = ("--permutations", "200", "--bootstrap", "200")
SHARD = Path("activations.zarr/mlp/text/max/c/0/0/0")  # the one window of the small study (16 pairs)


def _one_line_error(done) -> str:
    """The one line of a refusal (after any progress bar, which redraws itself with carriage returns)."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    text = done.stderr.split("\r")[-1]
    assert text.count("\n") == 1 and text.startswith("modalscope: error: "), done.stderr
    return text.removeprefix("modalscope: error: ").rstrip("\n")


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 40] = bytes(b ^ 0xFF for b in data[middle:middle + 40])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# 2. A damaged store ------------------------------------------------------------------------------
@pytest.mark.parametrize("damage, says", [(_flip, "is damaged (ValueError: Stored and computed checksum do not match)"),
                                          (_truncate, "is damaged ("),
                                          (Path.unlink, "is missing, though the ledger (n_done) records 16 inputs")],
                         ids=["flipped", "truncated", "deleted"])
def test_a_damaged_shard_stops_analyze_in_one_line_naming_array_window_and_file(copy, damage, says):
    shard = copy / SHARD
    damage(shard)
    line = _one_line_error(modalscope("analyze", copy, *FAST))
    assert line.startswith(f"{copy / 'activations.zarr'}: mlp/text/max, window 0 (inputs 0-15"), line
    assert str(shard) in line and says in line, line


def test_an_intact_store_analyses_as_before(copy, small_study):
    done = modalscope("analyze", copy, *FAST)
    assert done.returncode == 0, done.stderr
    for table in ("table3_neurons", "layers"):
        pd.testing.assert_frame_equal(pd.read_parquet(copy / f"tables/{table}.parquet"),
                                      pd.read_parquet(small_study / f"tables/{table}.parquet"))


def test_every_array_is_checksummed_and_windows_of_holes_may_be_absent(small_study):
    """The value arrays' inner chunks and the [input] arrays end with crc32c; the arrays whose
    window is all holes (derived.py: text/matched_max here) have no shard, and read."""
    from modalscope.store import ActivationStore

    root = small_study / "activations.zarr"
    for meta in root.rglob("zarr.json"):
        node = json.loads(meta.read_text())
        if node["node_type"] != "array":
            continue
        codecs = node["codecs"]
        inner = codecs[0]["configuration"]["codecs"] if codecs[0]["name"] == "sharding_indexed" else codecs
        assert inner[-1]["name"] == "crc32c", meta
    assert not (root / "mlp/text/matched_max/c").exists()
    store = ActivationStore.read(root)
    assert store.checksummed
    assert store.read_layer("mlp", "text", "matched_max", 0).shape == (16, store.width("mlp"))


def test_a_store_without_checksums_still_reads(tmp_path, monkeypatch):
    """Stores written before the checksum codec: read as before (`checksummed` False); a deleted
    shard is caught there too."""
    import numpy as np
    import zarr

    from modalscope import store as st

    monkeypatch.setattr(st, "VALUE_CODECS", (st.COMPRESSOR,))
    monkeypatch.setattr(st, "SMALL_CODECS", (zarr.codecs.ZstdCodec(level=0, checksum=False),))
    path = tmp_path / "old.zarr"
    made = st.ActivationStore.create(path, 2, {"mlp": 8}, 4, {}, stats=("max", "mean"), conditions=("text", "image"),
                                     window=4)
    values = np.arange(4 * 2 * 8, dtype=np.float32).reshape(4, 2, 8)
    made.append({c: {"mlp": {"max": values, "mean": values + 1}} for c in ("text", "image")},
                {"text": [3] * 4, "image": [5] * 4})
    old = st.ActivationStore.read(path)
    assert not old.checksummed
    assert "made before chunk checksums" in st.unchecked_note(path)  # `analyze` prints it
    np.testing.assert_array_equal(old.read_layer("mlp", "text", "max", 1), values[:, 1])
    (path / "mlp/image/mean/c/0/0/0").unlink()
    with pytest.raises(st.StoreDamaged, match=r"mlp/image/mean, window 0 \(inputs 0-3\): its file .* is missing"):
        st.ActivationStore.read(path).read_layer("mlp", "image", "mean", 0)


# 3. A resume with other inputs -------------------------------------------------------------------
N_PAIRS = 4


@pytest.fixture(scope="module")
def own_images(tmp_path_factory, coco_files) -> Path:
    """A JSONL of N_PAIRS + 1 pairs over copies of the images (the session's are shared)."""
    captions, images = coco_files
    data = json.loads(captions.read_text())
    root = tmp_path_factory.mktemp("own")
    lines = []
    for image in data["images"][: N_PAIRS + 1]:
        shutil.copy(images / image["file_name"], root / image["file_name"])
        caption = next(a["caption"] for a in data["annotations"] if a["image_id"] == image["id"])
        lines.append(json.dumps({"image": image["file_name"], "id": image["id"], "caption": caption}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _half_extracted(out: Path, model: Path, jsonl: Path) -> None:
    """`extract` of N_PAIRS pairs in windows of 2, then the ledger set back to the first window: the
    store a kill after that window leaves (ActivationStore.open trims the rows past the ledger)."""
    from modalscope.store import ActivationStore

    done = modalscope("extract", "--out", out, "--model", model, "--jsonl", jsonl, "--num-pairs", N_PAIRS,
                      "--batch-size", 2, "--sort-window", 1, "--device", "cpu", "--quiet", "--stats", "max,mean",
                      "--conditions", "text,image")
    assert done.returncode == 0, done.stderr
    store = ActivationStore.open(out / "activations.zarr")
    store._commit({"n_done": 2})
    assert ActivationStore.open(out / "activations.zarr").n_done == 2


def _resume(out: Path):
    return modalscope("extract", "--out", out, "--resume", "--device", "cpu", "--quiet")


def test_same_size_other_weights_are_refused_on_resume_naming_the_file(tiny_model_dir, own_images, tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    out = tmp_path / "study"
    _half_extracted(out, model, own_images / "pairs.jsonl")
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    with safe_open(weights, "pt") as handle:
        metadata = handle.metadata()
    state = load_file(weights)
    save_file({k: v * 1.05 if v.is_floating_point() else v for k, v in state.items()}, weights, metadata=metadata)
    assert weights.stat().st_size == size and not torch.equal(load_file(weights)[next(iter(state))],
                                                              state[next(iter(state))])
    line = _one_line_error(_resume(out))
    assert line.startswith(f"{out / 'activations.zarr'}: the model's weights changed since this study was recorded: "
                           f"{weights.resolve()} has other content"), line
    from modalscope.store import ActivationStore

    assert ActivationStore.read(out / "activations.zarr").n_done == 2  # nothing recorded with them


def test_an_unchanged_resume_goes_on_without_rehashing_and_a_changed_image_is_refused_naming_the_pair(
        tiny_model_dir, own_images, tmp_path, monkeypatch):
    from modalscope.data.manifest import load_manifest
    from modalscope.models import loading
    from modalscope.store import ActivationStore

    out = tmp_path / "study"
    _half_extracted(out, tiny_model_dir, own_images / "pairs.jsonl")
    manifest, _ = load_manifest(out)
    assert manifest["image_sha256"].str.fullmatch("[0-9a-f]{64}").all()

    # the weights' digests come from the store while the files' stat is unchanged: not one byte is read
    recorded = ActivationStore.read(out / "activations.zarr").attrs
    assert set(recorded["weights_files"]) >= {"config.json", "model.safetensors"}
    monkeypatch.setattr(loading.hashlib, "file_digest", lambda *a, **k: pytest.fail("a weight file was hashed"))
    assert loading.weights_content(tiny_model_dir, recorded)["weights_files"] == recorded["weights_files"]
    monkeypatch.undo()

    unrecorded = manifest.iloc[3]
    other = next(p for p in own_images.iterdir() if p.suffix != ".jsonl" and str(p.resolve()) not in set(manifest["image_path"]))
    shutil.copy(other, unrecorded["image_path"])
    line = _one_line_error(_resume(out))
    assert line.startswith(f"{unrecorded['image_path']}: pair {unrecorded['pair_id']}: the image changed since "
                           "DIR/manifest.parquet was made"), line
    assert ActivationStore.read(out / "activations.zarr").n_done == 2  # the pair's window was not recorded


def test_the_window_named_is_the_damaged_one_among_several(tmp_path):
    """Three windows of 4 inputs: the middle shard damaged is named as window 1 (inputs 4-7), the
    others read; a window of holes only (never written) is no error."""
    import numpy as np

    from modalscope import store as st

    path = tmp_path / "s.zarr"
    made = st.ActivationStore.create(path, 2, {"mlp": 8}, 4, {}, stats=("max", "mean", "matched_max"),
                                     conditions=("text", "image"), window=4)
    rng = np.random.default_rng(0)
    for _ in range(3):
        values = {c: {"mlp": {s: rng.normal(size=(4, 2, 8)).astype(np.float32) for s in ("max", "mean", "matched_max")}}
                  for c in ("text", "image")}
        values["text"]["mlp"]["matched_max"] = np.full((4, 2, 8), np.nan, np.float32)  # text is the shortest
        made.append(values, {"text": [3] * 4, "image": [5] * 4})
    assert not (path / "mlp/text/matched_max/c").exists()
    whole = st.ActivationStore.read(path)
    np.testing.assert_array_equal(whole.read_layer("mlp", "text", "matched_max", 1),
                                  whole.read_layer("mlp", "text", "max", 1))
    _flip(path / "mlp/image/max/c/1/0/0")
    damaged = st.ActivationStore.read(path)
    assert damaged.read_layer("mlp", "image", "max", 0, 0, 4).shape == (4, 8)
    with pytest.raises(st.StoreDamaged, match=r"mlp/image/max, window 1 \(inputs 4-7, file .*/mlp/image/max/c/1/0/0\) "
                                             r"is damaged \(ValueError: Stored and computed checksum do not match\)"):
        for layer in (0, 1):  # a shard's layers are read one by one: the flip is in one of them
            damaged.read_layer("mlp", "image", "max", layer)
