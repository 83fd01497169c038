"""--store-dtype float16 and bfloat16: half the store, Table 3 within stated tolerances of float32's,
and a value beyond float16's range keeps its array float32 (first window) or stops the run in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modalscope import StudyConfig
from modalscope.record.extract import ExtractionError, _check_range
from modalscope.record.reductions import ALL_STATS
from modalscope.store import ActivationStore
from modalscope.store_dtypes import STORE_DTYPES
from analysed import extract_and_analyze
from modalscope.streams import CONDITIONS

# Stated tolerances, float16 store against float32, as a share of each column's largest |value|
# (or absolute for p-values): float16 rounds each stored reduction to 11 bits (~4.9e-4 relative).
CONTINUOUS = ("mean_diff", "sd_diff", "t_value", "cohen_d")
TOLERANCE = {"continuous": 1e-3, "p_value": 2e-3, "q_value": 2e-3, "p_perm": 1e-2}
# bfloat16 keeps 8 bits (~3.9e-3 relative): 8x float16's rounding, so 8x the tolerances.
SCALE = {"float16": 1.0, "bfloat16": 8.0}


def assert_within_tolerances(wide: pd.DataFrame, half: pd.DataFrame, scale: float = 1.0) -> int:
    """Every Table 3 column with a stated tolerance (times `scale`); returns how many were compared."""
    compared = 0
    for name in wide.columns:
        base = name.split("_vs_base")[0]
        kind = next((k for k in TOLERANCE if base == k or base.startswith(k + "_")), None)
        if kind is None and any(base == c or base.startswith(c + "_") for c in CONTINUOUS):
            kind = "continuous"
        if kind is None:
            continue
        x, y = wide[name].to_numpy(), half[name].to_numpy()
        factor = np.nanmax(np.abs(x)) if kind == "continuous" else 1.0
        np.testing.assert_allclose(y, x, rtol=0, atol=TOLERANCE[kind] * scale * factor, err_msg=name)
        compared += 1
    return compared


def test_on_llava_15s_real_files_float16_and_bfloat16_give_table3_within_the_same_tolerances(
        real_llava_dir: Path, coco_files, tmp_path: Path):
    """The real tokenizer, processor and template (random weights): the default float16 store and
    a bfloat16 one against float32, analysed alike."""
    from modalscope.analysis import AnalysisSettings, run_analysis
    from modalscope.study import extract_stage, prepare_manifest

    captions, images = coco_files
    tables = {}
    for dtype in ("float32", "float16", "bfloat16"):
        config = StudyConfig(out_dir=tmp_path / dtype, model=str(real_llava_dir), captions=captions, images=images,
                             num_pairs=24, batch_size=8, device="cpu", png=False, progress=False, store_dtype=dtype)
        store = extract_stage(config, prepare_manifest(config))
        assert store.array("mlp", "image", "max").dtype == STORE_DTYPES[dtype]
        tables[dtype] = run_analysis(ActivationStore.read(store.path), AnalysisSettings(n_perm=200, n_boot=200)).neurons
    assert assert_within_tolerances(tables["float32"], tables["float16"]) >= 12
    assert assert_within_tolerances(tables["float32"], tables["bfloat16"], SCALE["bfloat16"]) >= 12


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_16_bit_store_gives_table3_within_the_stated_tolerances(dtype: str, small_study: Path, tiny_model_dir,
                                                                   coco_files, tmp_path: Path):
    """The small study (float32, every condition and reduction) recorded again into a 16-bit store
    and analysed alike (extract and analyze: the figures do not read the store's dtype)."""
    captions, images = coco_files
    config = StudyConfig(out_dir=tmp_path / dtype, model=str(tiny_model_dir), captions=captions, images=images,
                         num_pairs=16, batch_size=8, device="cpu", n_perm=200, n_boot=200, png=False,
                         progress=False, store_dtype=dtype, conditions=CONDITIONS,
                         stats=ALL_STATS)  # as the small study: every condition and reduction
    store = extract_and_analyze(config)
    wide = pd.read_parquet(small_study / "tables/table3_neurons.parquet")  # the same study in float32
    half = pd.read_parquet(config.out_dir / "tables/table3_neurons.parquet")
    assert store.array("mlp", "text", "max").dtype == STORE_DTYPES[dtype] and store.attrs["store_dtype"] == dtype
    assert assert_within_tolerances(wide, half, SCALE[dtype]) >= 30
    sizes = [sum(p.stat().st_size for p in (d / "activations.zarr").rglob("c/**/*") if p.is_file())
             for d in (small_study, config.out_dir)]
    assert sizes[1] < 0.85 * sizes[0]


def _store(path: Path) -> ActivationStore:
    return ActivationStore.create(path, 2, {"mlp": 4}, 2, {}, stats=("max", "mean"), dtype="float16")


def _records(peak: float) -> dict:
    values = np.ones((2, 2, 4), np.float32)
    values[1, 0, 3] = peak
    return {c: {"mlp": {"max": values, "mean": np.ones((2, 2, 4), np.float32)}} for c in ("text", "image")}


def test_a_value_beyond_float16_keeps_its_array_float32_in_the_first_window(tmp_path: Path, capsys):
    store = _store(tmp_path / "a.zarr")
    manifest = pd.DataFrame({"pair_id": ["p0", "p1"]})
    records = _records(1e5)
    _check_range(records, np.arange(2), manifest, store, first=True)
    said = capsys.readouterr().err.splitlines()  # printed, not only kept in the store's attributes
    assert said == [f"  note    mlp/{s}/max reaches 1e+05, beyond float16's range: stored as float32 (the report's "
                    "'What was run' lists it)" for s in ("text", "image")]
    assert store.array("mlp", "text", "max").dtype == np.float32
    assert store.array("mlp", "text", "mean").dtype == np.float16
    assert store.attrs["widened"] == ["mlp/image/max", "mlp/text/max"]
    store.append(records, {"text": [1, 1], "image": [1, 1]})
    assert store.array("mlp", "text", "max")[1, 0, 3] == 1e5


def test_after_the_first_window_a_value_beyond_float16_stops_in_one_line(tmp_path: Path):
    store = _store(tmp_path / "b.zarr")
    manifest = pd.DataFrame({"pair_id": ["p0", "p1"]})
    with pytest.raises(ExtractionError) as stop:
        _check_range(_records(7e4), np.arange(2), manifest, store, first=False)
    assert str(stop.value) == (
        "pair p1: mlp/text/max reaches 7e+04, beyond float16's range (65504), after the first window chose "
        "float16 for it; rerun into a new --out with --store-dtype bfloat16 or float32: the finished windows are kept")
