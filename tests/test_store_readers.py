"""The store as other tools read it: xarray opens it without a warning and selects by pair id,
and the analysis reads fixed blocks, so its results do not depend on the recording batch size."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from modalscope.analysis import AnalysisSettings, run_analysis
from modalscope.store import ActivationStore
from modalscope.data.manifest import MANIFEST


def test_xarray_opens_the_study_store_without_warnings_and_selects_by_pair_id(small_study: Path):
    import xarray as xr

    path = small_study / "activations.zarr"
    manifest = pd.read_parquet(small_study / MANIFEST)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Failed to open Zarr store with consolidated metadata"
        tree = xr.open_datatree(path, engine="zarr")
    store = ActivationStore.read(path)
    assert store.pair_ids() == manifest["pair_id"].astype(str).tolist()
    pair = manifest["pair_id"].astype(str).iloc[5]
    got = tree["mlp/text"]["max"].sel(input=pair).values  # [layer, neuron]
    np.testing.assert_array_equal(got, store.array("mlp", "text", "max")[5])
    assert tree["mlp/text"]["max"].dims == ("input", "layer", "neuron")


def _store(path: Path, batch: int, data: dict) -> ActivationStore:
    store = ActivationStore.create(path, 2, {"mlp": 6}, batch, {"seed": 0}, stats=("max", "mean"))
    n = len(data["text", "max"])
    for start in range(0, n, batch):
        rows = slice(start, min(start + batch, n))
        store.append({c: {"mlp": {s: data[c, s][rows] for s in ("max", "mean")}} for c in ("text", "image")},
                     {c: [3] * (rows.stop - rows.start) for c in ("text", "image")})
    return store


def test_the_analysis_is_bit_identical_whatever_batch_size_recorded_the_store(tmp_path: Path):
    rng = np.random.default_rng(3)
    data = {(c, s): rng.normal(size=(300, 2, 6)).astype(np.float32) for c in ("text", "image") for s in ("max", "mean")}
    settings = AnalysisSettings(n_perm=200, n_boot=200)
    a = run_analysis(_store(tmp_path / "a.zarr", 4, data), settings)
    b = run_analysis(_store(tmp_path / "b.zarr", 64, data), settings)  # 300 inputs: two blocks of 256 and 44
    pd.testing.assert_frame_equal(a.neurons, b.neurons, check_exact=True)
    pd.testing.assert_frame_equal(a.layers, b.layers, check_exact=True)
    assert json.dumps(a.summary, sort_keys=True) == json.dumps(b.summary, sort_keys=True)  # NaN-safe
