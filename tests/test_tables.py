"""Tables 1-2 streamed from the store, and Table 3 / layers / summary from the analysis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from modalscope.analysis import run_analysis
from modalscope.record.reductions import ALWAYS as STATS
from modalscope.store import ActivationStore
from modalscope.streams import UNIMODAL as CONDITIONS
from modalscope.tables import TABLE1, TABLE2, table1_rows, write_long_tables
from modalscope.stats.one_sample import hall_p

WIDTHS = {"residual": 5, "mlp": 7}
N_LAYERS = 3
BATCH = 4
N_INPUTS = 10  # three chunks: 4, 4, 2
ATTRS = {"model": "tiny/llava", "weights": "abc", "dtype": "float32", "chat_template": None,
         "tokens": "content", "manifest_hash": "0" * 64, "seed": 0}
T1_COLUMNS = ["input_index", "pair_id", "site", "modality", "layer", "neuron",
              "max_activation", "mean_activation"]
T2_COLUMNS = ["input_index", "pair_id", "site", "layer", "neuron", "delta", "delta_mean", "contrast"]


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> tuple[ActivationStore, dict, list[str]]:
    """A store of known values: values[site, condition, stat] is [input, layer, neuron] float32."""
    rng = np.random.default_rng(2024)
    values = {}
    for site, width in WIDTHS.items():
        for stat in STATS:
            image = rng.normal(size=(N_INPUTS, N_LAYERS, width))
            # text - image has a layer trend and per-neuron offsets, so the tests are not all null
            shift = 0.4 * np.arange(N_LAYERS)[None, :, None] + rng.normal(0, 0.5, size=(1, N_LAYERS, width))
            text = image + shift + rng.normal(size=image.shape)
            values[site, "text", stat] = text.astype(np.float32)
            values[site, "image", stat] = image.astype(np.float32)
    store = ActivationStore.create(
        tmp_path_factory.mktemp("store") / "activations.zarr", N_LAYERS, WIDTHS, BATCH, ATTRS
    )
    for start in range(0, N_INPUTS, BATCH):
        stop = min(start + BATCH, N_INPUTS)
        records = {c: {site: {s: values[site, c, s][start:stop] for s in STATS} for site in WIDTHS}
                   for c in CONDITIONS}
        store.append(records, {c: list(range(start + 1, stop + 1)) for c in CONDITIONS})
    pair_ids = [f"img{n}" for n in rng.permutation(1000)[:N_INPUTS]]
    return store, values, pair_ids


def _read(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    for name in ("pair_id", "site", "modality", "contrast"):
        if name in frame:
            frame[name] = frame[name].astype(str)
    return frame


@pytest.fixture(scope="module")
def long_tables(filled, tmp_path_factory) -> tuple[list[Path], pd.DataFrame, pd.DataFrame]:
    store, _, pair_ids = filled
    out = tmp_path_factory.mktemp("tables")
    paths = write_long_tables(store, pair_ids, out)
    return paths, _read(paths[0]), _read(paths[1])


def test_long_tables_file_names_and_no_tmp_left(long_tables):
    paths, _, _ = long_tables
    assert [p.name for p in paths] == [TABLE1, TABLE2]
    assert all(p.is_file() for p in paths)
    assert sorted(p.name for p in paths[0].parent.iterdir()) == sorted([TABLE1, TABLE2])


def test_table1_columns_and_row_count(filled, long_tables):
    store, _, _ = filled
    _, t1, _ = long_tables
    assert list(t1.columns) == T1_COLUMNS
    expected_rows = N_INPUTS * 2 * N_LAYERS * (5 + 7)
    assert len(t1) == expected_rows == table1_rows(store) == 720
    key = ["input_index", "site", "modality", "layer", "neuron"]
    assert not t1.duplicated(key).any()  # so every (input, site, modality, layer, neuron) once
    assert set(t1["modality"]) == {"text", "image"}
    for site, width in WIDTHS.items():
        part = t1[t1["site"] == site]
        assert len(part) == N_INPUTS * 2 * N_LAYERS * width
        assert set(part["neuron"]) == set(range(width))
        assert set(part["layer"]) == set(range(N_LAYERS))
        assert set(part["input_index"]) == set(range(N_INPUTS))


def _check_table1_values(t1: pd.DataFrame, values: dict) -> None:
    for (site, modality), part in t1.groupby(["site", "modality"]):
        idx = (part["input_index"].to_numpy(), part["layer"].to_numpy(), part["neuron"].to_numpy())
        np.testing.assert_array_equal(part["max_activation"].to_numpy(), values[site, modality, "max"][idx])
        np.testing.assert_array_equal(part["mean_activation"].to_numpy(), values[site, modality, "mean"][idx])
        assert part["max_activation"].dtype == np.float32


def _check_table2_values(t2: pd.DataFrame, values: dict) -> None:
    for site, part in t2.groupby("site"):
        idx = (part["input_index"].to_numpy(), part["layer"].to_numpy(), part["neuron"].to_numpy())
        delta = values[site, "text", "max"] - values[site, "image", "max"]  # float32 - float32
        delta_mean = values[site, "text", "mean"] - values[site, "image", "mean"]
        assert delta.dtype == np.float32 and part["delta"].dtype == np.float32
        np.testing.assert_array_equal(part["delta"].to_numpy(), delta[idx])
        np.testing.assert_array_equal(part["delta_mean"].to_numpy(), delta_mean[idx])
        assert set(part["contrast"]) == {"text - image"}


def test_table1_values_equal_store_values_at_input_layer_neuron(filled, long_tables):
    store, values, _ = filled
    _, t1, _ = long_tables
    _check_table1_values(t1, values)
    # and what the store itself returns (the known values were stored exactly)
    np.testing.assert_array_equal(store.array("mlp", "text", "max")[:], values["mlp", "text", "max"])


def test_long_tables_pair_id_is_manifest_id_of_input_index(filled, long_tables):
    _, _, pair_ids = filled
    _, t1, t2 = long_tables
    for table in (t1, t2):
        expected = np.asarray(pair_ids)[table["input_index"].to_numpy()]
        assert (table["pair_id"].to_numpy() == expected).all()
    assert t1.groupby("input_index")["pair_id"].nunique().eq(1).all()


def test_table2_columns_rows_and_delta_is_float32_text_minus_image(filled, long_tables):
    _, values, _ = filled
    _, _, t2 = long_tables
    assert list(t2.columns) == T2_COLUMNS
    assert len(t2) == N_INPUTS * N_LAYERS * (5 + 7)
    assert not t2.duplicated(["input_index", "site", "layer", "neuron"]).any()
    _check_table2_values(t2, values)


def test_table2_delta_equals_table1_text_minus_image(long_tables):
    _, t1, t2 = long_tables
    key = ["input_index", "site", "layer", "neuron"]
    wide = t1.pivot_table(index=key, columns="modality", values="max_activation", aggfunc="first")
    merged = t2.set_index(key).join(wide)
    np.testing.assert_array_equal(
        merged["delta"].to_numpy(), (merged["text"] - merged["image"]).astype(np.float32).to_numpy()
    )


def test_filtered_long_tables_restrict_rows_and_use_suffix(filled, tmp_path):
    store, values, pair_ids = filled
    paths = write_long_tables(
        store, pair_ids, tmp_path, sites=["mlp"], layers=[0, 2], neurons=[1, 6], suffix="_part"
    )
    assert [p.name for p in paths] == ["table1_activations_part.parquet", "table2_differences_part.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    t1, t2 = _read(paths[0]), _read(paths[1])
    assert list(t1.columns) == T1_COLUMNS and list(t2.columns) == T2_COLUMNS
    assert len(t1) == N_INPUTS * 2 * 2 * 2 and len(t2) == N_INPUTS * 2 * 2
    for table in (t1, t2):
        assert set(table["site"]) == {"mlp"}
        assert set(table["layer"]) == {0, 2}
        assert set(table["neuron"]) == {1, 6}
        assert set(table["input_index"]) == set(range(N_INPUTS))
    assert not t1.duplicated(["input_index", "modality", "layer", "neuron"]).any()
    _check_table1_values(t1, values)
    _check_table2_values(t2, values)


def test_filtered_by_layer_only_keeps_every_site_and_neuron(filled, tmp_path):
    store, values, pair_ids = filled
    paths = write_long_tables(store, pair_ids, tmp_path, layers=[1], suffix="_l1")
    t1 = _read(paths[0])
    assert len(t1) == N_INPUTS * 2 * 1 * (5 + 7)
    assert set(t1["layer"]) == {1} and set(t1["site"]) == set(WIDTHS)
    _check_table1_values(t1, values)
    assert not list(tmp_path.glob("*.tmp"))


def test_table2_holds_and_names_the_chosen_contrast(filled, tmp_path):
    """--contrast image-text: Δ = image - text (by hand from the stored float32 values), and
    the `contrast` column says so; the old writer wrote text - image whatever was asked."""
    store, values, pair_ids = filled
    paths = write_long_tables(store, pair_ids, tmp_path, contrast=("image", "text"))
    t1, t2 = _read(paths[0]), _read(paths[1])
    assert list(t2.columns) == T2_COLUMNS and set(t2["contrast"]) == {"image - text"}
    assert set(t1["modality"]) == {"text", "image"} and table1_rows(store, ("image", "text")) == len(t1)
    for site, part in t2.groupby("site"):
        idx = (part["input_index"].to_numpy(), part["layer"].to_numpy(), part["neuron"].to_numpy())
        expected = values[site, "image", "max"][idx] - values[site, "text", "max"][idx]
        np.testing.assert_array_equal(part["delta"].to_numpy(), expected)
        np.testing.assert_array_equal(
            part["delta_mean"].to_numpy(), values[site, "image", "mean"][idx] - values[site, "text", "mean"][idx])
    with pytest.raises(ValueError, match="image_text_caption"):
        write_long_tables(store, pair_ids, tmp_path / "no", contrast=("image_text_caption", "text"))


def test_every_delta_table_names_its_contrast(analyzed):
    from modalscope.stats.layer_summary import significance_table

    neurons, layers, summary = analyzed
    assert set(neurons["contrast"]) == set(layers["contrast"]) == {"text - image"}
    assert set(significance_table(layers, list(STATS))["contrast"]) == {"text - image"}
    assert {entry["contrast"] for entry in summary.values()} == {"text - image"}


# Table 3, layers, summary ---------------------------------------------------------------
@pytest.fixture(scope="module")
def analyzed(filled):
    store, _, _ = filled
    result = run_analysis(store)
    return result.neurons, result.layers, result.summary


def _delta64(values: dict, site: str, stat: str = "max") -> np.ndarray:
    return values[site, "text", stat].astype(np.float64) - values[site, "image", stat].astype(np.float64)


def _site_rows(neurons: pd.DataFrame, site: str) -> pd.DataFrame:
    rows = neurons[neurons["site"] == site].sort_values(["layer", "neuron"])
    assert len(rows) == N_LAYERS * WIDTHS[site]
    return rows


@pytest.mark.parametrize("site", list(WIDTHS))
def test_table3_single_neuron_equals_scipy_ttest_of_text_minus_image(filled, analyzed, site):
    _, values, _ = filled
    neurons, _, _ = analyzed
    layer, neuron = 2, 3
    delta = _delta64(values, site)[:, layer, neuron]
    ref = sps.ttest_1samp(delta, 0.0)
    row = neurons[(neurons["site"] == site) & (neurons["layer"] == layer) & (neurons["neuron"] == neuron)]
    assert len(row) == 1
    row = row.iloc[0]
    assert row["n"] == N_INPUTS
    assert row["mean_diff"] == pytest.approx(delta.mean(), rel=1e-12)
    assert row["sd_diff"] == pytest.approx(delta.std(ddof=1), rel=1e-12)
    assert row["t_value"] == pytest.approx(ref.statistic, rel=1e-10)
    assert row["p_student"] == pytest.approx(ref.pvalue, rel=1e-8)
    assert row["p_value"] == pytest.approx(hall_p(ref.statistic, sps.skew(delta), len(delta)), rel=1e-8)
    assert row["cohen_d"] == pytest.approx(delta.mean() / delta.std(ddof=1), rel=1e-10)


@pytest.mark.parametrize("site", list(WIDTHS))
@pytest.mark.parametrize("stat", STATS)
def test_table3_all_neurons_equal_numpy_scipy_and_q_is_bh_over_site(filled, analyzed, site, stat):
    _, values, _ = filled
    neurons, _, _ = analyzed
    suffix = "" if stat == "max" else f"_{stat}"
    rows = _site_rows(neurons, site)
    delta = _delta64(values, site, stat).reshape(N_INPUTS, -1)  # [input, layer*neuron], layer-major
    ref = sps.ttest_1samp(delta, 0.0, axis=0)
    np.testing.assert_allclose(rows[f"mean_diff{suffix}"], delta.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(rows[f"t_value{suffix}"], ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(rows[f"p_student{suffix}"], ref.pvalue, rtol=1e-8)
    p = hall_p(ref.statistic, sps.skew(delta, axis=0), np.full(delta.shape[1], N_INPUTS))  # what q reads
    np.testing.assert_allclose(rows[f"p_value{suffix}"], p, rtol=1e-8)
    np.testing.assert_allclose(
        rows[f"cohen_d{suffix}"], delta.mean(axis=0) / delta.std(axis=0, ddof=1), rtol=1e-10
    )
    # BH over every neuron of this site (all layers), not per layer and not across sites
    np.testing.assert_allclose(
        rows[f"q_value{suffix}"], sps.false_discovery_control(p), rtol=1e-8
    )
    per_layer = np.concatenate(
        [sps.false_discovery_control(part) for part in p.reshape(N_LAYERS, -1)]
    )
    assert not np.allclose(rows[f"q_value{suffix}"], per_layer)  # the family matters here


def test_table3_columns_and_rows(analyzed):
    neurons, _, _ = analyzed
    assert list(neurons.columns[:4]) == ["site", "layer", "neuron", "n"]
    for name in ("mean_diff", "sd_diff", "t_value", "p_value", "q_value", "cohen_d"):
        assert name in neurons.columns and f"{name}_mean" in neurons.columns
    assert len(neurons) == N_LAYERS * sum(WIDTHS.values())
    assert not neurons.duplicated(["site", "layer", "neuron"]).any()


def test_layers_mean_diff_is_mean_over_layer_neurons_with_t_interval(filled, analyzed):
    _, values, _ = filled
    _, layers, _ = analyzed
    assert len(layers) == N_LAYERS * len(WIDTHS)
    for site, width in WIDTHS.items():
        neuron_means = _delta64(values, site).mean(axis=0)  # [layer, neuron]
        rows = layers[layers["site"] == site].sort_values("layer")
        assert rows["layer"].tolist() == list(range(N_LAYERS))
        np.testing.assert_allclose(rows["mean_diff"], neuron_means.mean(axis=1), rtol=1e-12)
        half = sps.t.ppf(0.975, width - 1) * neuron_means.std(axis=1, ddof=1) / np.sqrt(width)
        np.testing.assert_allclose(rows["ci_low"], neuron_means.mean(axis=1) - half, rtol=1e-10)
        np.testing.assert_allclose(rows["ci_high"], neuron_means.mean(axis=1) + half, rtol=1e-10)
        assert rows["n_neurons"].tolist() == [width] * N_LAYERS
        np.testing.assert_allclose(
            rows["mean_diff_mean"], _delta64(values, site, "mean").mean(axis=0).mean(axis=1), rtol=1e-12
        )


def test_summary_regression_equals_linregress_on_layer_means(filled, analyzed):
    _, values, _ = filled
    _, _, summary = analyzed
    assert set(summary) == set(WIDTHS)
    for site in WIDTHS:
        layer_means = _delta64(values, site).mean(axis=0).mean(axis=1)
        fit = sps.linregress(np.arange(N_LAYERS), layer_means)
        entry = summary[site]
        assert entry["slope"] == pytest.approx(fit.slope, rel=1e-10)
        assert entry["intercept"] == pytest.approx(fit.intercept, rel=1e-10, abs=1e-12)
        assert entry["r2"] == pytest.approx(fit.rvalue**2, rel=1e-10)
        assert entry["ols_p_value_layers_as_independent"] == pytest.approx(fit.pvalue, rel=1e-8)
        assert entry["ols_stderr_layers_as_independent"] == pytest.approx(fit.stderr, rel=1e-8)
        assert "p_value" not in entry and "stderr" not in entry  # never read as an inference
        assert entry["n_inputs"] == N_INPUTS
        assert entry["contrast"] == "text - image"
        mean_fit = sps.linregress(
            np.arange(N_LAYERS), _delta64(values, site, "mean").mean(axis=0).mean(axis=1)
        )
        assert entry["by_stat"]["mean"]["slope"] == pytest.approx(mean_fit.slope, rel=1e-10)


def test_a_table_carries_its_provenance_and_never_an_old_csv_copy(tmp_path):
    import pyarrow.parquet as pq

    from modalscope.tables import PROVENANCE_KEY, read_provenance, write_frame

    frame = pd.DataFrame({"layer": [0, 1], "mean_diff": [0.5, -0.25]})
    meta = {"model": "some/vlm", "contrast": "text - image", "n_perm": 200, "r": float("nan")}
    path = write_frame(frame, tmp_path / "layers.parquet", csv=True, provenance=meta)
    assert path.with_suffix(".csv").read_text() == "layer,mean_diff\n0,0.5\n1,-0.25\n"
    assert read_provenance(path) == {**meta, "r": None}  # strict JSON, as summary.json
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)  # the columns are untouched
    again = write_frame(frame, tmp_path / "layers.parquet", provenance=meta)  # a rerun without --csv
    assert not path.with_suffix(".csv").exists() and again.read_bytes() == path.read_bytes()
    assert PROVENANCE_KEY in pq.read_schema(path).metadata and read_provenance(
        write_frame(frame, tmp_path / "bare.parquet")) == {}


def test_long_tables_carry_the_provenance_they_are_given(tmp_path, filled):
    from modalscope.tables import read_provenance

    store, _, pair_ids = filled
    paths = write_long_tables(store, pair_ids, tmp_path, layers=[0], provenance={"model": "some/vlm", "seed": 3})
    assert [read_provenance(p) for p in paths] == [{"model": "some/vlm", "seed": 3}] * 2
