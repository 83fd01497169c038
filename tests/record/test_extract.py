"""The extraction loop: a bad image stops with one line naming file and pair, finished
batches are kept, and rerunning after the fix continues to the same result as a clean run."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from modalscope import StudyConfig
from modalscope.record.reductions import ALL_STATS
from modalscope.streams import CONDITIONS
from modalscope.data.pairs import DataError
from modalscope.record.plan import default_sort_window, plan_windows
from modalscope.study import extract_stage, prepare_manifest


def padded_tokens(lengths, batches) -> int:
    """Padding positions the batches need: sum over batches of (longest - each)."""
    lengths = np.asarray(lengths)
    return int(sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in batches if len(b)))


def _config(out, jsonl, model, sort_window=2):
    # Every condition and reduction: the tests read the joint streams and every reduction.
    return StudyConfig(out_dir=out, model=str(model), jsonl=jsonl, batch_size=2, device="cpu",
                       png=False, progress=False, sort_window=sort_window, conditions=CONDITIONS, stats=ALL_STATS,
                       store_dtype="float32")


def test_bad_image_keeps_finished_batches_and_rerun_continues(tmp_path, make_jsonl, tiny_model_dir):
    jsonl = make_jsonl(8)
    clean = _config(tmp_path / "clean", jsonl, tiny_model_dir)
    extract_stage(clean, prepare_manifest(clean))

    broken = _config(tmp_path / "broken", jsonl, tiny_model_dir)
    manifest = prepare_manifest(broken)
    victim = manifest.iloc[5]  # second window of two batches of two
    original = open(victim.image_path, "rb").read()
    with open(victim.image_path, "w") as f:
        f.write("not a jpeg")
    with pytest.raises(DataError) as err:
        extract_stage(broken, manifest)
    message = str(err.value)
    assert "\n" not in message and victim.image_path in message and f"pair {victim.pair_id}" in message
    group = zarr.open_group(str(tmp_path / "broken/activations.zarr"), mode="r")
    assert group.attrs["n_done"] == 4  # the finished window (two batches) is kept

    with open(victim.image_path, "wb") as f:
        f.write(original)
    extract_stage(broken, prepare_manifest(broken))
    done = zarr.open_group(str(tmp_path / "broken/activations.zarr"), mode="r")
    ref = zarr.open_group(str(tmp_path / "clean/activations.zarr"), mode="r")
    assert done.attrs["n_done"] == 8
    for name in ("mlp/text/max", "mlp/image/mean", "residual/image/max", "tokens/text"):
        np.testing.assert_array_equal(done[name][:], ref[name][:])


def test_dataloader_workers_give_the_same_store_and_one_line_errors(tmp_path, make_jsonl, tiny_model_dir):
    jsonl = make_jsonl(6)
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


def test_windows_sort_by_length_and_keep_every_row_once():
    lengths = [5, 1, 4, 9, 2, 2, 7, 3, 8, 6, 1]
    windows = plan_windows(lengths, start=10, batch_size=2, sort_window=2)
    assert [(w.start, w.stop) for w in windows] == [(10, 14), (14, 18), (18, 21)]
    # window rows 10-13 have lengths 5, 1, 4, 9 -> longest first: 13 (9), 10 (5), 12 (4), 11 (1)
    assert [b.tolist() for b in windows[0].batches] == [[13, 10], [12, 11]]
    assert [b.tolist() for b in windows[1].batches] == [[16, 17], [14, 15]]  # ties keep order
    assert [b.tolist() for b in windows[2].batches] == [[18, 19], [20]]
    rows = np.concatenate([b for w in windows for b in w.batches])
    assert sorted(rows.tolist()) == list(range(10, 21))
    local = [[b - 10 for b in w.batches] for w in windows]
    in_order = [np.arange(i, min(i + 2, 11)) for i in range(0, 11, 2)]
    assert padded_tokens(lengths, in_order) == 4 + 5 + 0 + 4 + 2 + 0
    assert padded_tokens(lengths, [b for w in local for b in w]) == 4 + 3 + 4 + 0 + 2 + 0
    assert plan_windows(lengths, 0, 4, 1)[0].batches[0].tolist() == [3, 0, 2, 1]
    # the window shrinks to fit its host buffer: 1 GiB / (16 rows x 50 MB) -> 1 batch
    assert default_sort_window(16, 50 << 20) == 1
    assert default_sort_window(16, 1 << 20) == 8


def test_length_sorted_windows_keep_manifest_order(tmp_path, make_jsonl, tiny_model_dir):
    """Records of a length-sorted run sit in the rows of an unsorted run: only batch
    neighbours differ, so values agree to float32 rounding and token counts exactly."""
    jsonl = make_jsonl(8)
    stores = {}
    for window in (1, 4):
        config = _config(tmp_path / f"s{window}", jsonl, tiny_model_dir, sort_window=window)
        config.conditions = ("text", "image", "image_text")
        manifest = prepare_manifest(config)
        extract_stage(config, manifest)
        stores[window] = zarr.open_group(str(tmp_path / f"s{window}/activations.zarr"), mode="r")
    assert stores[4].attrs["sort_window"] == 4
    for name in ("tokens/text", "tokens/image_text_caption", "tokens/image"):
        np.testing.assert_array_equal(stores[4][name][:], stores[1][name][:])
    for name in ("mlp/text/max", "residual/text/mean", "mlp/image_text/matched_max",
                 "residual/image_text_caption/max"):
        np.testing.assert_allclose(stores[4][name][:], stores[1][name][:], rtol=1e-5, atol=1e-5,
                                   err_msg=name)
    lengths = stores[1]["tokens/text"][:]
    sorted_batches = [b for w in plan_windows(lengths, 0, 2, 4) for b in w.batches]
    assert padded_tokens(lengths, sorted_batches) < padded_tokens(lengths, [np.arange(i, i + 2) for i in range(0, 8, 2)])
