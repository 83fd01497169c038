"""Outputs never stale, never partial without saying so (issue 16, part 3): a rerun of `analyze`
or `plot` replaces every output it owns (CSV copies, Tables 1-2, figures of what is no longer
analysed; study.json's and study.toml's settings and timings), an unfinished extraction is one
line and a banner at the top of the report, every Parquet table carries the study's settings and
versions, and study.json names the command, the host and, when one was used, the GPU."""

from __future__ import annotations

import json
import platform
import tomllib
from importlib.metadata import version

import zarr

from cli_run import modalscope
from modalscope import provenance, study
from modalscope.tables import read_provenance

FAST = ("--permutations", "200", "--bootstrap", "200")


def test_a_rerun_of_analyze_without_csv_leaves_no_csv_and_updates_the_settings(copy):
    done = modalscope("analyze", copy, "--csv", *FAST)
    assert done.returncode == 0, done.stderr
    tables = copy / "tables"
    parquets = {p.stem for p in tables.glob("*.parquet")}
    assert {p.stem for p in tables.glob("*.csv")} == parquets and "table1_activations" in parquets
    before = json.loads((copy / "study.json").read_text())

    done = modalscope("analyze", copy, "--fdr", "by", "--permutations", "300", "--bootstrap", "200",
                      "--long-tables", "never")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tables.iterdir()) == [  # no CSV, no Tables 1-2 of the previous analysis
        "alignment.parquet", "input_layer_means.parquet", "layers.parquet", "significant_neurons.parquet", "summary.json",
        "table3_neurons.parquet", "top_neurons.parquet", "top_pairs.parquet"]
    assert done.stdout.splitlines()[-1] == (f"figures and report.html show the previous analysis: "
                                            f"`modalscope plot {copy}` redraws them")
    after = json.loads((copy / "study.json").read_text())
    assert {k: after["config"][k] for k in ("fdr", "n_perm", "n_boot", "long_tables", "csv")} == {
        "fdr": "by", "n_perm": 300, "n_boot": 200, "long_tables": "never", "csv": False}
    assert after["config"]["model"] == before["config"]["model"]  # what analyze does not own stays
    assert after["timings"]["analyze_s"] != before["timings"]["analyze_s"]
    assert after["timings"]["extract_s"] == before["timings"]["extract_s"]
    assert after["stages"]["analyze"]["command"] == (f"modalscope analyze {copy} --fdr by --permutations 300 "
                                                     "--bootstrap 200 --long-tables never")
    assert after["command"] == after["stages"]["analyze"]["command"]
    settings = tomllib.loads((copy / "study.toml").read_text())  # repeats what the tables now hold
    assert (settings["statistics"]["fdr"], settings["statistics"]["permutations"]) == ("by", 300)
    assert settings["output"]["long_tables"] == "never"
    assert read_provenance(tables / "table3_neurons.parquet")["fdr"] == "by"


def test_a_rerun_of_plot_removes_the_figures_it_no_longer_draws(copy):
    figures = copy / "figures"
    drawn = sorted(p.name for p in figures.iterdir())
    stale = ["figure1_mlp_oldstat.html", "figure2_mlp_vs_base.html", "figure2_mlp.png", "figure2_mlp.svg"]
    for name in [*stale, "notes.txt"]:
        (figures / name).write_text("old")
    done = modalscope("plot", copy, "--no-png")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in figures.iterdir()) == sorted([*drawn, "notes.txt"])  # not ours: kept
    after = json.loads((copy / "study.json").read_text())
    assert after["config"]["png"] is False and after["stages"]["plot"]["command"] == f"modalscope plot {copy} --no-png"
    assert tomllib.loads((copy / "study.toml").read_text())["output"]["png"] is False


def test_an_unfinished_extraction_is_one_line_and_the_reports_first_words(copy):
    zarr.open_group(str(copy / "activations.zarr"), mode="r+").attrs["n_done"] = 8  # 8 of 16 pairs
    done = modalscope("analyze", copy, *FAST)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (f"16 pairs in the manifest, 8 recorded: analysing 8; run "
                                           f"`modalscope extract --out {copy} --resume` to finish")
    summary = json.loads((copy / "tables/summary.json").read_text())
    assert {entry["n_inputs"] for entry in summary.values()} == {8}
    assert modalscope("report", copy).returncode == 0
    page = (copy / "report.html").read_text(encoding="utf-8")
    banner = (f'<main>\n<p class="banner" id="partial">Partial study: 16 pairs in the manifest, 8 recorded, 8 '
              f"analysed in these tables and figures. Run `modalscope extract --out {copy} --resume` to finish "
              f"the extraction, then `modalscope analyze {copy}` and `modalscope plot {copy}`.</p>\n"
              '<section id="glance">')
    assert banner in page


def test_a_finished_study_has_no_banner_and_older_tables_say_so(small_study, copy):
    from modalscope.figures.assemble import StudyTables
    from modalscope.report.facts import partial_study

    assert 'id="partial"' not in (small_study / "report.html").read_text(encoding="utf-8")
    assert study.extraction_note(small_study) is None
    assert partial_study(small_study, StudyTables.read(small_study)) is None
    summary = json.loads((copy / "tables/summary.json").read_text())
    for entry in summary.values():  # tables of 8 pairs, a store that has since recorded all 16
        entry["n_inputs"] = 8
    (copy / "tables/summary.json").write_text(json.dumps(summary))
    assert partial_study(copy, StudyTables.read(copy)) == (
        f"Partial study: 16 pairs in the manifest, 16 recorded, 8 analysed in these tables and figures. Run "
        f"`modalscope analyze {copy}` and `modalscope plot {copy}` to analyse every pair.")


def test_every_parquet_table_carries_the_studys_settings_and_versions(small_study, tiny_model_dir):
    paths = sorted((small_study / "tables").glob("*.parquet"))
    assert {p.stem for p in paths} >= {"table1_activations", "table2_differences", "table3_neurons", "layers"}
    for path in paths:
        meta = read_provenance(path)
        assert meta["model"] == str(tiny_model_dir.resolve()) and meta["dtype"] == "float32", path.name
        assert (meta["contrast"], meta["fdr"], meta["n_perm"], meta["n_boot"], meta["seed"]) == (
            "text - image", "bh", 200, 200, 0), path.name
        assert (meta["n_pairs_recorded"], meta["n_pairs_manifest"], meta["tokens"]) == (16, 16, "content")
        assert meta["sites"] == ["residual", "mlp"] and len(meta["weights"]) == 64
        assert {lib: meta["versions"]["tables"][lib] for lib in ("pandas", "pillow", "accelerate")} == {
            lib: version(lib) for lib in ("pandas", "pillow", "accelerate")}
        assert meta["versions"]["recording"]["torch"] == version("torch")


def test_study_json_names_the_command_host_and_versions_and_no_gpu_on_a_cpu(small_study):
    facts = json.loads((small_study / "study.json").read_text())
    assert facts["host"] == platform.node() and facts["command"] == provenance.command_line()
    assert set(facts["stages"]) == {"extract", "analyze", "plot"}
    assert all(stage["host"] == platform.node() for stage in facts["stages"].values())
    assert {lib: facts["versions"][lib] for lib in ("pandas", "pillow", "accelerate")} == {
        lib: version(lib) for lib in ("pandas", "pillow", "accelerate")}
    assert "gpu" not in facts and provenance.gpu_facts() is None  # CPU torch: CUDA never initialised
    from modalscope.figures.assemble import StudyTables
    from modalscope.report.facts import provenance as report_provenance

    rows = dict(report_provenance(small_study, StudyTables.read(small_study)).study)
    assert (rows["command (last stage)"], rows["host"]) == (facts["command"], platform.node())
    assert "GPU of the recording" not in rows


def test_the_gpu_its_cuda_and_driver_are_recorded_when_cuda_was_used(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: ["NVIDIA H200", "NVIDIA H100"][i])
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(provenance, "nvidia_driver", lambda: "570.86.15")
    gpu = {"name": "NVIDIA H100", "count": 2, "names": ["NVIDIA H200", "NVIDIA H100"], "cuda": "12.8",
           "driver": "570.86.15"}
    assert provenance.gpu_facts() == gpu
    provenance.record_stage(tmp_path, "extract", 1.5)
    facts = json.loads((tmp_path / "study.json").read_text())
    assert facts["gpu"] == facts["stages"]["extract"]["gpu"] == gpu and facts["timings"] == {"extract_s": 1.5}
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # an analysis on a CPU later
    provenance.record_stage(tmp_path, "analyze", 2.0)
    facts = json.loads((tmp_path / "study.json").read_text())
    assert facts["gpu"] == gpu and "gpu" not in facts["stages"]["analyze"]  # the recording's GPU stays
