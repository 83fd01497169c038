"""The untrained twin (`--control random-twin`, twin.py): the same inputs through a re-initialised
copy of the model, its results beside the study's, and nothing new in a study without it.

Everything here runs the real tiny LLaVA (tests/conftest.py): the twin is built by transformers'
own initialisation, recorded and analysed by the same code as the study; no part is mocked. The
study with the twin is the shared small study (conftest `small_study`) with the control added
afterwards, so its own outputs can be compared with the small study's, which the golden test pins.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from modalscope import StudyConfig, run_study
from modalscope.data.manifest import MANIFEST
from modalscope.record.reductions import ALL_STATS
from modalscope.streams import CONDITIONS
from modalscope.twin import (
    RANDOM_TWIN, TWIN_SPAWN_KEY, build_twin, compare_slopes, twin_dir, twin_torch_seed,
)


def _small_config(out: Path, tiny_model_dir: Path, coco_files, **extra) -> StudyConfig:
    """The small study's settings (conftest `small_study`), in `out`."""
    captions, images = coco_files
    return StudyConfig(out_dir=out, model=str(tiny_model_dir), captions=captions, images=images, num_pairs=16,
                       batch_size=8, device="cpu", n_perm=200, n_boot=200, png=False, progress=False,
                       conditions=CONDITIONS, stats=ALL_STATS, store_dtype="float32", **extra)


@pytest.fixture(scope="module")
def with_twin(small_study: Path, tiny_model_dir: Path, coco_files, tmp_path_factory) -> Path:
    """The small study, rerun with --control random-twin (its store is complete: only the twin is
    recorded), then analysed, plotted and reported with the twin beside it."""
    out = tmp_path_factory.mktemp("twin") / "study"
    shutil.copytree(small_study, out)
    result = run_study(_small_config(out, tiny_model_dir, coco_files, control=RANDOM_TWIN))
    assert result.report == out / "report.html"
    return out


# The twin itself ------------------------------------------------------------------------------
def test_twin_initialisation_is_deterministic_per_seed_and_the_models_own(loaded):
    source = loaded.model
    before = torch.random.get_rng_state()
    first = build_twin(source, 3)
    assert torch.equal(torch.random.get_rng_state(), before)  # the study's own torch draws are left alone
    torch.manual_seed(12345)  # whatever the global state, the same seed gives the same twin
    again = build_twin(source, 3)
    other = build_twin(source, 4)
    ours, same, theirs, src = (m.state_dict() for m in (first, again, other, source))
    assert list(ours) == list(src)
    assert all(torch.equal(ours[k], same[k]) for k in ours)
    matrices = [k for k, v in src.items() if v.ndim == 2 and v.numel() > 64]
    assert matrices and all(not torch.equal(ours[k], theirs[k]) for k in matrices)  # another seed: other weights
    assert all(not torch.equal(ours[k], src[k]) for k in matrices)  # not the model's weights
    assert all(ours[k].dtype == src[k].dtype and ours[k].device == src[k].device for k in ours)
    assert first.config.to_dict() == source.config.to_dict()  # the same config, dtype included
    assert not first.training
    # transformers' own initialisation: linear weights ~ N(0, initializer_range) of the text config
    text = source.config.text_config
    down = first.model.language_model.layers[0].mlp.down_proj.weight.detach()
    assert abs(float(down.std()) - text.initializer_range) < 0.1 * text.initializer_range
    assert abs(float(down.mean())) < 0.1 * text.initializer_range
    # the torch seed is child TWIN_SPAWN_KEY of SeedSequence(seed), outside seeds.STREAMS
    words = np.random.SeedSequence(3, spawn_key=(TWIN_SPAWN_KEY,)).generate_state(2, dtype=np.uint32)
    assert twin_torch_seed(3) == (int(words[0]) << 31) ^ int(words[1]) != twin_torch_seed(4)


# A study with the twin --------------------------------------------------------------------------
def test_the_twin_is_a_study_folder_of_the_same_inputs(with_twin: Path):
    from modalscope.store import ActivationStore

    folder = twin_dir(with_twin)
    assert folder == with_twin / "control" / "random-twin"
    for name in ("manifest.parquet", "skipped.parquet", "truncated.parquet", "activations.zarr", "study.json",
                 "tables/summary.json", "tables/layers.parquet", "tables/table3_neurons.parquet",
                 "tables/alignment.parquet"):
        assert (folder / name).exists(), name
    assert not (folder / "study.toml").exists()  # DIR/study.toml repeats the study and its twin
    assert not (folder / "tables/table1_activations.parquet").exists()  # Tables 1-2 left out
    assert (folder / MANIFEST).read_bytes() == (with_twin / MANIFEST).read_bytes()
    main, twin = ActivationStore.read(with_twin / "activations.zarr"), ActivationStore.read(folder / "activations.zarr")
    for key in ("manifest_hash", "n_inputs", "sites", "stats", "conditions", "tokens", "prompts", "model", "config",
                "batch_size", "sort_window", "store_dtype", "n_done"):
        assert twin.attrs[key] == main.attrs[key], key
    assert twin.attrs["weights"] == f"random twin (seed 0, SeedSequence spawn key 65) of {main.attrs['weights']}"
    assert twin.attrs["control"]["kind"] == RANDOM_TWIN and twin.attrs["control"]["torch_seed"] == twin_torch_seed(0)
    # the same token scopes, other activations
    for stream in main.conditions:
        np.testing.assert_array_equal(twin.token_counts()[stream], main.token_counts()[stream])
    assert not np.allclose(twin.read_layer("mlp", "text", "max", 1), main.read_layer("mlp", "text", "max", 1))
    assert "control = \"random-twin\"" in (with_twin / "study.toml").read_text()
    # the Python API reaches the twin's tables from the study's result
    from modalscope import StudyResult

    result = StudyResult.open(with_twin)
    assert result.twin is not None and result.twin.out_dir == folder
    pd.testing.assert_frame_equal(result.twin.neurons, pd.read_parquet(folder / "tables/table3_neurons.parquet"))
    assert result.twin.twin is None


def _without_twin(summary: dict) -> dict:
    out = json.loads(json.dumps(summary))
    for entry in out.values():
        entry.pop("twin", None)
        entry["headline"] = entry["headline"].split(" Against its random twin")[0]
    return out


def test_the_studys_own_outputs_are_unchanged_by_the_twin(with_twin: Path, small_study: Path):
    """Every table of the study equals the small study's (which the golden test pins); its summary
    too, but for the `twin` block and the twin sentence after each headline."""
    names = sorted(p.name for p in (small_study / "tables").glob("*.parquet"))
    assert names == sorted(p.name for p in (with_twin / "tables").glob("*.parquet"))
    for name in names:
        pd.testing.assert_frame_equal(pd.read_parquet(with_twin / "tables" / name),
                                      pd.read_parquet(small_study / "tables" / name), obj=name)
    ours = json.loads((with_twin / "tables/summary.json").read_text())
    assert _without_twin(ours) == json.loads((small_study / "tables/summary.json").read_text())
    figures = {p.name for p in (with_twin / "figures").glob("*.html")}
    assert figures - {p.name for p in (small_study / "figures").glob("*.html")} == {
        "xmodal_share_mlp.html", "xmodal_share_residual.html"}


def test_a_study_without_the_control_has_nothing_of_it(small_study: Path):
    from modalscope.figures.assemble import StudyTables

    assert not (small_study / "control").exists()
    summary = json.loads((small_study / "tables/summary.json").read_text())
    assert all("twin" not in entry and "random twin" not in entry["headline"] for entry in summary.values())
    assert "control" not in (small_study / "study.toml").read_text()
    assert not list((small_study / "figures").glob("xmodal_share_*"))
    report = (small_study / "report.html").read_text()
    assert 'id="twin"' not in report and "random twin" not in report
    assert StudyTables.read(small_study).twin is None
    from modalscope import StudyResult

    assert StudyResult.open(small_study).twin is None


def test_the_summary_and_headline_compare_each_effect_with_the_twin(with_twin: Path):
    summary = json.loads((with_twin / "tables/summary.json").read_text())
    twin_summary = json.loads((twin_dir(with_twin) / "tables/summary.json").read_text())
    for site, entry in summary.items():
        block = entry["twin"]
        assert block["stat"] == "matched_max" and list(block["trend"]) == ["matched_max", "max"]
        for stat, facts in block["trend"].items():
            ours = entry if stat == "max" else entry["by_stat"][stat]
            theirs = twin_summary[site] if stat == "max" else twin_summary[site]["by_stat"][stat]
            assert facts["study_slope"] == ours["slope"] and facts["twin_slope"] == theirs["slope"]
            outside = not ours["slope_ci_low"] <= theirs["slope"] <= ours["slope_ci_high"]
            assert facts["exceeds"] == (abs(ours["slope"]) > abs(theirs["slope"]) and outside)
            assert facts["ratio"] == pytest.approx(ours["slope"] / theirs["slope"])
            name = {"max": "raw max", "matched_max": "length-matched max"}[stat]
            word = f"is {facts['ratio']:.2g} times" if facts["exceeds"] and facts["ratio"] > 1 else (
                "exceeds" if facts["exceeds"] else "does not exceed")
            assert f"the {name} trend ({ours['slope']:.3g} per layer) {word} the random twin's " \
                   f"({theirs['slope']:.3g})" in entry["headline"]
        share = block["xmodal_share"]
        xmodal = entry["xmodal"]["by_stat"]["matched_max"]
        assert share["study"] == xmodal["n_cross_modal"] / xmodal["n_neurons"]
        assert "the share of cross-modal neurons (matched_max: " in entry["headline"]
        assert set(block["alignment"]) == set(entry["alignment"]["measures"])
        assert block["alignment"]["cka"]["twin_peak"] == twin_summary[site]["alignment"]["measures"]["cka"]["value"]
    # the tiny model is itself random: its residual's raw max falls less steeply than its twin's
    assert not summary["residual"]["twin"]["trend"]["max"]["exceeds"]


def test_figures_draw_the_twin_beside_the_study(with_twin: Path):
    from modalscope.figures.assemble import StudyTables, study_figures

    tables = StudyTables.read(with_twin)
    assert tables.twin is not None and tables.has_twin("mlp")
    figures = study_figures(tables, "max")
    twin_layers = pd.read_parquet(twin_dir(with_twin) / "tables/layers.parquet")
    for site in ("mlp", "residual"):
        traces = [t for t in figures[f"figure2_{site}"].data if t.name and t.name.startswith("random twin")]
        assert [t.name.split(",")[0] for t in traces] == [
            "random twin (re-initialised): layer mean Δ (max)",
            "random twin (re-initialised): layer mean Δ (matched_max)"]
        rows = twin_layers[twin_layers["site"] == site].sort_values("layer")
        np.testing.assert_array_equal(traces[0].y, rows["mean_diff"].to_numpy())
        np.testing.assert_array_equal(traces[1].y, rows["mean_diff_matched_max"].to_numpy())
        assert traces[0].line.dash == "dash"
        slope = json.loads((twin_dir(with_twin) / "tables/summary.json").read_text())[site]["slope"]
        assert f"slope = {slope:.3g}/layer" in traces[0].name
        share = figures[f"xmodal_share_{site}"]
        assert [t.name for t in share.data if t.fill is None] == ["this model", "random twin (re-initialised)"]
        alignment = [t.name for t in figures[f"figure3_alignment_{site}"].data if t.name.startswith("random twin")]
        assert alignment == ["random twin: debiased CKA", "random twin: mutual k-NN",
                             "random twin: top-1, caption → image", "random twin: MRR, caption → image"]
    assert any(t.name.startswith("random twin") for t in figures["figure2_mlp_mean"].data)
    on_disk = (with_twin / "figures/figure2_mlp.html").read_text()
    assert "random twin (re-initialised): layer mean" in on_disk


def test_the_report_and_the_printed_summary_show_the_twin(with_twin: Path):
    from modalscope.cli.run import headline_block
    from modalscope.study import study_headlines

    report = (with_twin / "report.html").read_text()
    assert '<section id="twin"><h2>Against the random twin</h2>' in report and 'href="#twin"' in report
    assert "layer slope of Δ (length-matched max)" in report and "exceeds the twin" in report
    assert "<td>control</td><td>random twin: the same inputs through type(model)._from_config(config)" in report
    assert "dark grey, dashed: the same layer means of the random twin" in report.lower()
    assert "control/random-twin/tables/summary.json" in report  # its tables are linked
    block = headline_block(with_twin, study_headlines(with_twin))
    assert block.count("Against its random twin") == 2
    assert block.splitlines()[-1] == (f"  (random twin: this model re-initialised, the same inputs; its study folder "
                                      f"{twin_dir(with_twin)})")


def test_a_rerun_keeps_a_finished_twin_and_finishes_a_stopped_one(with_twin: Path, tiny_model_dir, coco_files,
                                                                   tmp_path: Path):
    import zarr

    from modalscope.store import ActivationStore
    from modalscope.study import extract_stage

    out = tmp_path / "study"
    shutil.copytree(with_twin, out)
    config = _small_config(out, tiny_model_dir, coco_files, control=RANDOM_TWIN)
    store = twin_dir(out) / "activations.zarr"
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*") if p.is_file()}
    extract_stage(config)  # finished: the twin is checked against the study, not built or written
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*") if p.is_file()} == files

    before = ActivationStore.read(store)
    values = {n: before.read_layer(*n.split("/"), 2) for n in ("mlp/text/max", "residual/image/mean")}
    zarr.open_group(str(store), mode="r+").attrs["n_done"] = 9  # stopped after 9 of 16 pairs
    extract_stage(config)
    after = ActivationStore.read(store)
    assert after.n_done == 16
    for name, value in values.items():  # the resumed rows are the same twin's numbers
        again = after.read_layer(*name.split("/"), 2)
        np.testing.assert_array_equal(again[:9], value[:9])  # kept
        # recorded again in other batches (other padding): float32 noise of the kernels, no more
        np.testing.assert_allclose(again[9:], value[9:], rtol=1e-4, atol=1e-5 * float(np.abs(value).max()))


def test_extract_resume_continues_the_twin(with_twin: Path, small_study: Path):
    from modalscope.cli.run import _stored_settings

    assert _stored_settings(with_twin, None, True)["control"] == RANDOM_TWIN
    assert "control" not in _stored_settings(small_study, None, True)


def test_control_is_refused_with_what_it_cannot_run_with(tiny_model_dir, coco_files, tmp_path: Path, capsys):
    from modalscope.cli import main

    captions, images = coco_files
    for extra, said in ((["--base-model", str(tiny_model_dir)], "not with --base-model"),
                        (["--quantization", "4bit"], "not with --quantization 4bit"),
                        (["--device-map", "auto"], "not with --device-map auto")):
        out = tmp_path / said.split()[-1].strip("-")
        code = main(["run", "--model", str(tiny_model_dir), "--captions", str(captions), "--images", str(images),
                     "--num-pairs", "4", "--out", str(out), "--control", "random-twin", "--quiet", *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"modalscope: error: --control random-twin: {said}")
        assert err.count("\n") == 1
        assert not (out / MANIFEST).exists() and not (out / "activations.zarr").exists()


def test_the_study_file_round_trips_conditions_control(tmp_path: Path):
    from modalscope.cli import _config, parse_args
    from modalscope.study_file import StudyFileError, dumps, read

    path = tmp_path / "study.toml"
    path.write_text(f'[conditions]\ncontrol = "random-twin"\n[output]\nout = "{tmp_path / "s"}"\n')
    config = StudyConfig.from_toml(path)
    assert config.control == RANDOM_TWIN
    assert '[conditions]\n' in dumps(config) and 'control = "random-twin"\n' in dumps(config)
    assert StudyConfig.from_toml(config.to_toml(tmp_path / "again.toml")) == config
    path.write_text(f'[conditions]\ncontrol = "none"\n[output]\nout = "{tmp_path / "s"}"\n')
    none = StudyConfig.from_toml(path)
    assert none.control is None and "control" not in dumps(none)  # no control: nothing written
    assert none == StudyConfig(out_dir=tmp_path / "s")
    path.write_text('[conditions]\ncontrol = "twin"\n')
    with pytest.raises(StudyFileError, match=r'line 2: \[conditions\] control = "twin": choose none or '
                                             r'random-twin'):
        read(path)
    # the flag, and the flag beating the file
    args = parse_args(["run", "--model", "m", "--out", str(tmp_path / "s"), "--control", "random-twin"])
    assert _config(args, args.out).control == RANDOM_TWIN
    path.write_text(f'[conditions]\ncontrol = "random-twin"\n[output]\nout = "{tmp_path / "s"}"\n')
    args = parse_args(["run", "--config", str(path), "--control", "none"])
    assert _config(args, args.out).control is None
    assert parse_args(["extract", "--out", "d", "--control", "random-twin"]).control == RANDOM_TWIN
    assert parse_args(["demo", "--out", "d", "--control", "random-twin"]).control == RANDOM_TWIN
    with pytest.raises(ValueError, match="--control twin: choose none or random-twin"):
        StudyConfig(out_dir="x", control="twin").validate()


def test_the_comparison_rule_and_its_sentence():
    """Hand-made trends: larger and outside the study's CI exceeds; within it, or smaller, does not."""
    from modalscope.report.headline import twin_sentence

    study = {"slope": -0.12, "slope_ci_low": -0.15, "slope_ci_high": -0.09, "r2": 0.9}
    cases = {-0.01: (True, "is 12 times the random twin's (-0.01)"),
             0.02: (True, "exceeds the random twin's (0.02)"),
             -0.1: (False, "does not exceed the random twin's (-0.1)"),  # larger, but within the CI
             -0.3: (False, "does not exceed the random twin's (-0.3)")}
    for twin_slope, (exceeds, words) in cases.items():
        facts = compare_slopes(study, {"slope": twin_slope})
        assert facts["exceeds"] is exceeds
        sentence = twin_sentence({"trend": {"matched_max": facts},
                                  "imagery": {"stat": "max", "study": 40.0, "twin": 10.0, "ratio": 4.0,
                                              "exceeds": True}})
        assert sentence == ("Against its random twin (the same architecture re-initialised, the same inputs): the "
                            f"length-matched max trend (-0.12 per layer) {words}; imagery neuron-concept pairs "
                            "(max: 40) are 4 times the random twin's (10).")
