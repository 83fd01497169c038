"""Layer alignment wired into the study (layer_alignment.py): run_alignment equals
alignment_with_uncertainty called by hand on the arrays the store holds, pairs with a NaN are
left out, the analyze stage writes tables/alignment.parquet and summary.json's peaks, and
Figure 3 draws one line per measure with its CI and null bands, in figures/ and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modalscope import StudyConfig
from modalscope.figures.alignment import SHOWN, figure_alignment
from modalscope.layer_alignment import COLUMNS, alignment_summary, run_alignment
from modalscope.stats.alignment import MEASURES, alignment_with_uncertainty
from modalscope.stats.protocol import AnalysisSettings
from modalscope.store import STORE, ActivationStore

SMALL = AnalysisSettings(n_perm=200, n_boot=200, seed=0)  # the small_study fixture's settings


def by_hand(x: np.ndarray, y: np.ndarray, settings: AnalysisSettings) -> dict[str, float]:
    return alignment_with_uncertainty(x, y, n_boot=settings.n_boot, n_null=settings.n_perm, seed=settings.seed, k=10)


def check_rows(table: pd.DataFrame, site: str, layer: int, stat: str, want: dict[str, float]) -> None:
    rows = table[(table["site"] == site) & (table["layer"] == layer) & (table["stat"] == stat)].set_index("measure")
    assert list(rows.index) == list(MEASURES)
    for m in MEASURES:
        got = rows.loc[m]
        expected = [want[m], want[f"{m}_low"], want[f"{m}_high"], want[f"{m}_null_low"], want[f"{m}_null_high"],
                    want[f"{m}_p"], want.get(f"{m}_chance", np.nan)]
        np.testing.assert_array_equal(
            got[["value", "ci_low", "ci_high", "null_low", "null_high", "p_value", "chance"]].to_numpy(float),
            expected, err_msg=f"{site} {layer} {m}")
        assert (got["n_pairs"], got["n_boot"], got["n_null"]) == (want["n_pairs"], SMALL.n_boot, SMALL.n_perm)


def test_the_analyze_stage_table_equals_alignment_by_hand_on_the_stored_arrays(small_study: Path):
    store = ActivationStore.read(small_study / STORE)
    table = pd.read_parquet(small_study / "tables" / "alignment.parquet")  # written by the analyze stage
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == len(store.sites) * store.n_layers * len(MEASURES)
    assert set(table["stat"]) == {"mean"} and set(table["contrast"]) == {"text - image"}
    assert table.loc[table["measure"] == "cka", "chance"].isna().all()
    assert (table.loc[table["measure"] == "mutual_knn", "chance"] == 10 / 15).all()  # k / (n - 1), 16 pairs
    for site in store.sites:
        for layer in range(store.n_layers):
            x, y = (store.read_layer(site, c, "mean", layer) for c in ("text", "image"))
            check_rows(table, site, layer, "mean", by_hand(x, y, SMALL))


def test_any_recorded_reduction_is_selectable_and_an_unrecorded_one_is_one_line(small_study: Path, tmp_path):
    store = ActivationStore.read(small_study / STORE)
    table = run_alignment(store, SMALL, "max")
    x, y = (store.read_layer("mlp", c, "max", 2) for c in ("text", "image"))
    check_rows(table, "mlp", 2, "max", by_hand(x, y, SMALL))
    lean = _store(tmp_path / "lean.zarr", np.ones((4, 1, 3, 2)))
    with pytest.raises(ValueError, match=r"^--alignment-stat quantile: .* recorded max, mean$"):
        run_alignment(lean, SMALL, "quantile")
    with pytest.raises(ValueError, match=r"^--alignment-stat quantile: choose one of the recorded max, mean$"):
        StudyConfig(out_dir=tmp_path, stats=("max", "mean"), alignment_stat="quantile").validate()


def _store(path: Path, values: np.ndarray) -> ActivationStore:
    """values [condition (text, image), layer, input, neuron] as both reductions of site mlp."""
    n_layers, n, width = values.shape[1:]
    store = ActivationStore.create(path, n_layers, {"mlp": width}, 4, {"seed": 0}, stats=("max", "mean"))
    for start in range(0, n, 4):
        rows = slice(start, min(start + 4, n))
        store.append({c: {"mlp": {s: values[i][:, rows].transpose(1, 0, 2) for s in ("max", "mean")}}
                      for i, c in enumerate(("text", "image"))}, {c: [3] * (rows.stop - rows.start) for c in ("text", "image")})
    return ActivationStore.read(path)


def test_pairs_with_a_nan_in_either_condition_are_left_out_per_layer(tmp_path):
    rng = np.random.default_rng(4)
    values = rng.normal(size=(2, 2, 14, 5)).astype(np.float32)  # text/image, 2 layers, 14 pairs, 5 neurons
    values[1, 1, [0, 5], 3] = np.nan  # image, layer 1: pairs 0 and 5
    values[0, 1, 9, 0] = np.nan  # text, layer 1: pair 9
    store = _store(tmp_path / "s.zarr", values)
    table = run_alignment(store, SMALL)
    assert set(table.loc[table["layer"] == 0, "n_pairs"]) == {14}
    assert set(table.loc[table["layer"] == 1, "n_pairs"]) == {11}
    kept = [i for i in range(14) if i not in (0, 5, 9)]
    check_rows(table, "mlp", 0, "mean", by_hand(values[0, 0], values[1, 0], SMALL))
    check_rows(table, "mlp", 1, "mean", by_hand(values[0, 1, kept], values[1, 1, kept], SMALL))


def test_summary_names_each_measures_peak_layer(small_study: Path):
    summary = json.loads((small_study / "tables" / "summary.json").read_text())
    table = pd.read_parquet(small_study / "tables" / "alignment.parquet")
    for site in ("residual", "mlp"):
        entry = summary[site]["alignment"]
        assert (entry["stat"], entry["contrast"]) == ("mean", "text - image")
        assert entry == json.loads(json.dumps(alignment_summary(table, site)).replace("NaN", "null"))
        for measure in MEASURES:
            rows = table[(table["site"] == site) & (table["measure"] == measure)]
            best = rows.loc[rows["value"].idxmax()]  # the first of equal maxima, as nanargmax
            above = rows[rows["value"] > rows["null_high"]]["layer"]
            facts = entry["measures"][measure]
            assert (facts["peak_layer"], facts["value"]) == (best["layer"], best["value"]), (site, measure)
            assert facts["first_layer_above_null"] == (int(above.min()) if len(above) else None)


def test_figure3_draws_each_measure_with_its_ci_and_null_bands_and_chance(small_study: Path):
    table = pd.read_parquet(small_study / "tables" / "alignment.parquet")
    fig = figure_alignment(table, "mlp")
    lines = [t for t in fig.data if t.mode == "markers+lines"]
    assert [t.name for t in lines] == [label for _, _, label, _, _ in SHOWN]
    for trace, (measure, panel, label, _, _) in zip(lines, SHOWN):
        rows = table[(table["site"] == "mlp") & (table["measure"] == measure)].sort_values("layer")
        np.testing.assert_array_equal(trace.y, rows["value"].to_numpy(float))
        assert trace.xaxis == ("x" if panel == 1 else f"x{panel}")
        bands = {t.name: t for t in fig.data if t.fill == "toself" and t.name.startswith(f"{label}:")}
        assert set(bands) == {f"{label}: 95% CI over pairs", f"{label}: shuffled-pairing null, 95%"}
        null = bands[f"{label}: shuffled-pairing null, 95%"]
        finite = np.isfinite(rows["null_high"].to_numpy(float))
        np.testing.assert_array_equal(null.y[: finite.sum()], rows["null_high"].to_numpy(float)[finite])
    chance = [t.name for t in fig.data if t.name.endswith(": chance")]
    assert chance == ["mutual k-NN: chance", "top-1, caption → image: chance", "MRR, caption → image: chance"]


def test_plot_and_report_show_figure3_per_site(small_study: Path):
    html = (small_study / "report.html").read_text(encoding="utf-8")
    for site in ("residual", "mlp"):
        assert (small_study / "figures" / f"figure3_alignment_{site}.html").exists()
        assert f'id="alignment-{site}"' in html and f'id="fig-figure3_alignment_{site}"' in html
    assert "Figure 3 (layer alignment of the two modalities), site mlp" in html
    assert html.count("Figure 3: where words and pixels meet") == 2


def test_the_pass_is_capped_at_max_pairs_and_resamples(small_study: Path, monkeypatch):
    """The first MAX_PAIRS pairs of the shuffled order and at most RESAMPLES draws, whatever the
    study's --bootstrap/--permutations: the 7B cost stays minutes (layer_alignment.py, Cost)."""
    import modalscope.layer_alignment as module

    monkeypatch.setattr(module, "MAX_PAIRS", 10)
    monkeypatch.setattr(module, "RESAMPLES", 50)
    store = ActivationStore.read(small_study / STORE)
    table = run_alignment(store, AnalysisSettings(n_perm=300, n_boot=300, seed=0), "mean")
    x, y = (store.read_layer("residual", c, "mean", 1)[:10] for c in ("text", "image"))
    want = alignment_with_uncertainty(x, y, n_boot=50, n_null=50, seed=0, k=10)
    rows = table[(table["site"] == "residual") & (table["layer"] == 1)].set_index("measure")
    assert set(rows["n_pairs"]) == {10} and set(rows["n_boot"]) == {50} and set(rows["n_null"]) == {50}
    got = rows.loc[list(MEASURES), ["value", "null_high"]].to_numpy(float)
    np.testing.assert_array_equal(got, [[want[m], want[f"{m}_null_high"]] for m in MEASURES])
