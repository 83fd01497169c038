"""Layer alignment wired into the study (layer_alignment.py): run_alignment equals
alignment_with_uncertainty called by hand on the arrays the store holds, pairs with a NaN are
left out, p_layers is the max-statistic over the site's layers (and controls the family-wise
error), the analyze stage writes tables/alignment.parquet and summary.json's corrected peaks,
and Figure 3 draws one line per measure with its null band (and the debiased CKA's interval),
in figures/ and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modalscope import StudyConfig
from modalscope.figures.alignment import SHOWN, figure_alignment
from modalscope.layer_alignment import COLUMNS, alignment_summary, max_statistic_p, run_alignment
from modalscope.stats.alignment import INTERVAL_METHOD, MEASURES, alignment_layer, alignment_with_uncertainty, interval
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
                    want[f"{m}_p"], want.get(f"{m}_chance", np.nan), want[f"{m}_se"]]
        np.testing.assert_array_equal(
            got[["value", "ci_low", "ci_high", "null_low", "null_high", "p_value", "chance", "se"]].to_numpy(float),
            expected, err_msg=f"{site} {layer} {m}")
        assert (got["n_pairs"], got["n_boot"], got["n_null"]) == (want["n_pairs"], 0, SMALL.n_perm)
        assert got["ci_method"] == INTERVAL_METHOD.get(m, "")


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
            above = rows[rows["p_layers"] < 0.05]["layer"]  # family-wise over the layers
            facts = entry["measures"][measure]
            assert (facts["peak_layer"], facts["value"]) == (best["layer"], best["value"]), (site, measure)
            assert facts["first_layer_above_null"] == (int(above.min()) if len(above) else None)
            assert facts["p_value"] == best["p_layers"] and facts["p_pointwise"] == best["p_value"]
            low, high = interval(best["value"], best["se"], tests=len(rows))  # simultaneous over the layers
            bounds = [np.nan if facts[b] is None else facts[b] for b in ("ci_low", "ci_high")]  # JSON null: NaN
            np.testing.assert_array_equal(bounds, [low, high])


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
        ci = {f"{label}: 95% CI over pairs (jackknife)"} if measure == "cka_debiased" else set()
        assert set(bands) == ci | {f"{label}: shuffled-pairing null, 95%"}
        null = bands[f"{label}: shuffled-pairing null, 95%"]
        finite = np.isfinite(rows["null_high"].to_numpy(float))
        np.testing.assert_array_equal(null.y[: finite.sum()], rows["null_high"].to_numpy(float)[finite])
    chance = [t.name for t in fig.data if t.name.endswith(": chance")]
    assert chance == ["mutual k-NN: chance", "top-1, caption → image: chance", "MRR, caption → image: chance"]
    plug_in = [t for t in fig.data if t.name == "plug-in CKA (biased)"]
    rows = table[(table["site"] == "mlp") & (table["measure"] == "cka")].sort_values("layer")
    assert len(plug_in) == 1 and np.array_equal(plug_in[0].y, rows["value"].to_numpy(float))


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
    want = alignment_with_uncertainty(x, y, n_null=50, seed=0, k=10)
    rows = table[(table["site"] == "residual") & (table["layer"] == 1)].set_index("measure")
    assert set(rows["n_pairs"]) == {10} and set(rows["n_boot"]) == {0} and set(rows["n_null"]) == {50}
    got = rows.loc[list(MEASURES), ["value", "null_high"]].to_numpy(float)
    np.testing.assert_array_equal(got, [[want[m], want[f"{m}_null_high"]] for m in MEASURES])


def test_p_layers_is_the_max_statistic_over_the_sites_layers(small_study: Path):
    """Recomputed from alignment_layer's null draws: each layer standardised by its own null,
    p_l = (1 + #{pairings whose largest standardised value over layers >= layer l's}) / (P + 1)."""
    store = ActivationStore.read(small_study / STORE)
    table = pd.read_parquet(small_study / "tables" / "alignment.parquet")
    draws = [alignment_layer(*(store.read_layer("mlp", c, "mean", i) for c in ("text", "image")),
                             n_null=SMALL.n_perm, seed=SMALL.seed, k=10) for i in range(store.n_layers)]
    for measure in ("cka_debiased", "mutual_knn", "mrr_text_to_image"):
        observed = np.array([result[measure] for result, _ in draws])
        null = np.array([nulls[measure] for _, nulls in draws])  # [layers, P]
        z = (null - null.mean(axis=1, keepdims=True)) / null.std(axis=1, ddof=1, keepdims=True)
        t = (observed - null.mean(axis=1)) / null.std(axis=1, ddof=1)
        want = [(1 + np.sum(z.max(axis=0) >= t_l - 1e-12 * max(abs(t_l), 1))) / (SMALL.n_perm + 1) for t_l in t]
        rows = table[(table["site"] == "mlp") & (table["measure"] == measure)].sort_values("layer")
        np.testing.assert_allclose(rows["p_layers"].to_numpy(float), want, rtol=1e-12, err_msg=measure)
        assert (rows["p_layers"].to_numpy(float) >= rows["p_value"].to_numpy(float) - 1e-12).all()


def test_max_statistic_controls_the_family_wise_error_over_layers():
    """No layer aligned, layers of different spread sharing part of their null (as layers of
    one model do): P(any layer's p_layers < 0.05) stays at 0.05 (400 sites, 8 layers), where
    the uncorrected scan calls a layer in about a third of them."""
    rng = np.random.default_rng(12)
    sites, layers, pairings = 400, 8, 199
    shared = rng.normal(size=(sites, pairings + 1, 1))
    draws = (0.7 * shared + 0.7 * rng.normal(size=(sites, pairings + 1, layers))) * np.arange(1, layers + 1)
    any_call = uncorrected = 0
    for site in draws:  # row 0 plays the observed pairing: exchangeable with the rest under the null
        p = max_statistic_p(site[0], site[1:].T)
        any_call += bool((p < 0.05).any())
        pointwise = (1 + (site[1:] >= site[0]).sum(axis=0)) / (pairings + 1)
        uncorrected += bool((pointwise < 0.05).any())
    assert any_call / sites <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / sites)
    assert uncorrected / sites > 0.15


def test_max_statistic_edge_cases():
    assert np.isnan(max_statistic_p(np.array([1.0, 2.0]), np.empty((2, 0)))).all()
    null = np.array([[0.5, 0.5, 0.5], [0.0, 1.0, 2.0]])  # layer 0: a null with no spread
    p = max_statistic_p(np.array([0.6, 1.5]), null)
    assert p[0] == 0.25  # above a flat null: nothing reaches +inf
    assert p[1] == (1 + 1) / 4  # only the pairing at 2.0 (z = 1) reaches 0.5 standard deviations
    assert max_statistic_p(np.array([0.5, np.nan]), null)[0] == 1.0 and np.isnan(max_statistic_p(
        np.array([0.5, np.nan]), null)[1])
