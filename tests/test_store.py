"""The activation store: layout, append, ledger recovery after a crash, provenance checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modalscope.record.reductions import ALWAYS as STATS
from modalscope.store import ActivationStore, StoreMismatch
from modalscope.streams import UNIMODAL as CONDITIONS

WIDTHS = {"residual": 5, "mlp": 7}
N_LAYERS = 3
BATCH = 4
ATTRS = {
    "model": "tiny/llava",
    "weights": "abc123",
    "dtype": "float32",
    "chat_template": "USER: {prompt} ASSISTANT:",
    "tokens": "content",
    "manifest_hash": "f" * 64,
    "seed": 0,
}


def _batch(rng: np.random.Generator, size: int) -> tuple[dict, dict]:
    records = {
        c: {
            site: {s: rng.normal(size=(size, N_LAYERS, w)).astype(np.float32) for s in STATS}
            for site, w in WIDTHS.items()
        }
        for c in CONDITIONS
    }
    tokens = {c: rng.integers(1, 50, size=size).tolist() for c in CONDITIONS}
    return records, tokens


def _concat(batches: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    values = {
        (site, c, s): np.concatenate([rec[c][site][s] for rec, _ in batches])
        for site in WIDTHS for c in CONDITIONS for s in STATS
    }
    tokens = {c: np.concatenate([np.asarray(tok[c]) for _, tok in batches]) for c in CONDITIONS}
    return values, tokens


def _filled(path: Path, sizes=(4, 4, 3), seed=0) -> tuple[ActivationStore, list]:
    store = ActivationStore.create(path, N_LAYERS, WIDTHS, BATCH, ATTRS)
    rng = np.random.default_rng(seed)
    batches = [_batch(rng, n) for n in sizes]
    for records, tokens in batches:
        store.append(records, tokens)
    return store, batches


def _assert_store_holds(store: ActivationStore, values: dict, tokens: dict) -> None:
    n = len(next(iter(tokens.values())))
    assert store.n_done == n
    for (site, c, s), expected in values.items():
        array = store.array(site, c, s)
        assert array.shape == expected.shape
        got = array[:]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    for c in CONDITIONS:
        got = store.group[f"tokens/{c}"][: store.n_done]
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, tokens[c])
        assert store.group[f"tokens/{c}"].shape == (n,)


def test_appended_batches_read_back_exactly(tmp_path):
    store, batches = _filled(tmp_path / "activations.zarr")
    values, tokens = _concat(batches)
    assert values["residual", "text", "max"].shape == (11, N_LAYERS, 5)
    _assert_store_holds(store, values, tokens)


def test_store_reopened_from_disk_holds_same_data_and_attrs(tmp_path):
    store, batches = _filled(tmp_path / "activations.zarr")
    reopened = ActivationStore.open(tmp_path / "activations.zarr")
    _assert_store_holds(reopened, *_concat(batches))
    attrs = reopened.attrs
    assert {k: attrs[k] for k in ATTRS} == ATTRS
    assert attrs["sites"] == ["residual", "mlp"] and reopened.sites == ["residual", "mlp"]
    assert attrs["n_layers"] == N_LAYERS == reopened.n_layers
    assert attrs["n_done"] == 11
    assert {site: reopened.width(site) for site in WIDTHS} == WIDTHS


def test_read_layer_is_one_layer_slice_of_finished_inputs(tmp_path):
    store, batches = _filled(tmp_path / "activations.zarr")
    values, _ = _concat(batches)
    expected = values["mlp", "image", "mean"]
    np.testing.assert_array_equal(store.read_layer("mlp", "image", "mean", 2), expected[:, 2, :])
    np.testing.assert_array_equal(
        store.read_layer("residual", "text", "max", 1, 4, 8), values["residual", "text", "max"][4:8, 1]
    )
    # stop past n_done is clamped to the finished inputs
    assert store.read_layer("mlp", "text", "max", 0, 8, 100).shape == (3, 7)


def test_arrays_have_dimension_names_and_batch_by_layer_chunks(tmp_path):
    store, _ = _filled(tmp_path / "activations.zarr")
    for site, width in WIDTHS.items():
        for c in CONDITIONS:
            for s in STATS:
                array = store.array(site, c, s)
                assert tuple(array.metadata.dimension_names) == ("input", "layer", "neuron")
                assert array.chunks == (BATCH, 1, width)
                assert array.dtype == np.float32
                assert array.metadata.zarr_format == 3
    for c in CONDITIONS:
        assert tuple(store.group[f"tokens/{c}"].metadata.dimension_names) == ("input",)


def test_input_blocks_are_chunk_aligned_and_cover_finished_inputs(tmp_path):
    store, _ = _filled(tmp_path / "activations.zarr", sizes=(4, 4, 3))
    assert store.input_blocks(None) == [(0, 4), (4, 8), (8, 11)]  # one chunk each
    assert store.input_blocks(8) == [(0, 8), (8, 11)] and store.input_blocks() == [(0, 11)]
    small, _ = _filled(tmp_path / "small.zarr", sizes=(2, 1))
    assert small.input_blocks(None) == [(0, 3)]
    empty = ActivationStore.create(tmp_path / "empty.zarr", N_LAYERS, WIDTHS, BATCH, ATTRS)
    assert empty.n_done == 0 and empty.input_blocks() == []


def test_open_trims_uncommitted_rows_after_crash(tmp_path):
    path = tmp_path / "activations.zarr"
    store, batches = _filled(path, sizes=(4, 4, 2))  # 10 committed, last chunk half full
    rng = np.random.default_rng(99)
    crashed, crashed_tokens = _batch(rng, 3)
    # a crash mid-append: some arrays grew, the ledger (n_done) was never updated
    store.array("residual", "text", "max").append(crashed["text"]["residual"]["max"], axis=0)
    store.array("mlp", "text", "mean").append(crashed["text"]["mlp"]["mean"], axis=0)
    store.array("mlp", "image", "max").append(crashed["image"]["mlp"]["max"][:1], axis=0)
    store.group["tokens/text"].append(np.asarray(crashed_tokens["text"], dtype=np.int32), axis=0)
    assert store.array("residual", "text", "max").shape[0] == 13
    assert store.n_done == 10

    recovered = ActivationStore.open(path)
    _assert_store_holds(recovered, *_concat(batches))

    # the next batch continues right after the committed rows; no crashed rows leak in
    after = _batch(rng, 4)
    recovered.append(*after)
    again = ActivationStore.open(path)
    _assert_store_holds(again, *_concat(batches + [after]))
    assert again.input_blocks(None) == [(0, 4), (4, 8), (8, 12), (12, 14)]
    assert again.pair_ids() == [str(i) for i in range(14)]  # trimmed with the rest


def test_read_writes_nothing_and_stops_at_the_ledger(tmp_path):
    """The analysis, export and report open the store with `read`: a store left mid-append by a
    crash stays as it is on disk (extraction's `open` trims it), and no read passes n_done."""
    import os

    path = tmp_path / "activations.zarr"
    store, batches = _filled(path, sizes=(4, 4))
    extra = _batch(np.random.default_rng(7), 3)[0]
    store.array("mlp", "text", "max").append(extra["text"]["mlp"]["max"], axis=0)
    def chmod(mode: int) -> None:
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                (Path(folder) / name).chmod(mode | (0o111 if (Path(folder) / name).is_dir() else 0))

    before = sorted((p.relative_to(path), p.stat().st_mtime_ns) for p in path.rglob("*"))
    chmod(0o444)  # a read-only copy, as a shared dataset would be (root ignores it: the mtimes tell)
    try:
        reader = ActivationStore.read(path)
        assert reader.n_done == 8 and reader.array("mlp", "text", "max").shape[0] == 11  # not trimmed
        values = _concat(batches)[0]["mlp", "text", "max"]
        np.testing.assert_array_equal(reader.read_layer("mlp", "text", "max", 1), values[:, 1])
        assert reader.input_blocks(None) == [(0, 4), (4, 8)]
        with pytest.raises(ValueError):  # zarr refuses a write through a read-only group
            reader.group.attrs["n_done"] = 0
    finally:
        chmod(0o644)
    assert sorted((p.relative_to(path), p.stat().st_mtime_ns) for p in path.rglob("*")) == before


def test_check_matches_same_attrs_passes(tmp_path):
    store, _ = _filled(tmp_path / "activations.zarr")
    store.check_matches(ATTRS)
    store.check_matches({**ATTRS, "seed": 5, "versions": {"numpy": "0"}})  # not provenance keys
    ActivationStore.open(tmp_path / "activations.zarr").check_matches(dict(ATTRS))


@pytest.mark.parametrize(
    ("key", "value", "label"),
    [("dtype", "bfloat16", "dtype"), ("model", "other/model", "model"),
     ("manifest_hash", "0" * 64, "manifest"), ("tokens", "all", "token scope")],
)
def test_check_matches_difference_raises_one_line_naming_it(tmp_path, key, value, label):
    store, _ = _filled(tmp_path / "activations.zarr")
    with pytest.raises(StoreMismatch) as err:
        store.check_matches({**ATTRS, key: value})
    message = str(err.value)
    assert f"different {label}" in message
    assert "\n" not in message
    assert str(ATTRS[key])[:20] in message and str(value)[:20] in message
    assert isinstance(err.value, ValueError)


def test_check_matches_chat_template_difference_message_is_one_line(tmp_path):
    store, _ = _filled(tmp_path / "activations.zarr")
    other = "{% for m in messages %}\n{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(StoreMismatch, match="chat template") as err:
        store.check_matches({**ATTRS, "chat_template": other})
    assert "\n" not in str(err.value)


def test_open_missing_store_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no activation store"):
        ActivationStore.open(tmp_path / "nothing.zarr")


def test_window_chunks_and_one_root_write_that_is_zarrs_own_consolidation(tmp_path):
    """Chunks of a window x one layer in shards of every layer; each append's single root write
    (ledger + consolidated metadata, from memory) equals what zarr.consolidate_metadata writes,
    for a created store and for one reopened to resume; values (and holes) read back as appended."""
    import json
    import warnings

    import zarr

    path, window, conditions = tmp_path / "activations.zarr", 8, ("text", "image", "image_text_image")
    store = ActivationStore.create(path, N_LAYERS, WIDTHS, BATCH, ATTRS, conditions=conditions, window=window)
    for site, width in WIDTHS.items():
        assert store.array(site, "text", "max").chunks == (window, 1, width)
        assert store.array(site, "text", "max").shards == (window, N_LAYERS, width)
    rng = np.random.default_rng(5)
    appended = []

    def append(target: ActivationStore, n: int) -> None:
        records = {c: {site: {s: rng.normal(size=(n, N_LAYERS, w)).astype(np.float32) for s in STATS}
                       for site, w in WIDTHS.items()} for c in conditions}
        records["image_text_image"]["mlp"]["max"][:] = np.nan  # all holes: only resized
        records["image"]["mlp"]["mean"][:, :, 0] = np.nan  # NaN first values, numbers after: written
        target.append(records, {c: [3] * n for c in conditions}, flags={"image_text_image": [True] * n})
        appended.append(records)
        mine = json.loads((path / "zarr.json").read_text())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(path))
        assert mine == json.loads((path / "zarr.json").read_text())

    append(store, window)
    append(store, 3)  # a partial window
    resumed = ActivationStore.open(path)  # node metadata listed from disk this time
    append(resumed, window)
    assert resumed.n_done == ActivationStore.read(path).n_done == 2 * window + 3
    for c in conditions:
        for site in WIDTHS:
            for s in STATS:
                expected = np.concatenate([r[c][site][s] for r in appended])
                np.testing.assert_array_equal(resumed.array(site, c, s)[:], expected, err_msg=f"{site}/{c}/{s}")
    assert resumed.group["derived/image_text_image"][:].tolist() == [True] * (2 * window + 3)
