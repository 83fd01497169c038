"""Messages that point the right way (issue 16, part 4), each asserted exactly: `analyze` on a
folder without a study points to `run`/`extract`; Ctrl-C during analysis or plotting names the
command that reruns that stage; `export`'s bad ranges, lists and neurons are one line naming the
option (and the site); no internal function names; each command's --help lists only the options
it uses, each with help text that shows its default."""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import pytest

from cli_run import modalscope
from modalscope.ablation.cli import _list
from modalscope.cli import build_parser
from modalscope.settings import BY_FIELD
from modalscope.data.manifest import MANIFEST

FAST = ("--permutations", "200", "--bootstrap", "200")
ACCEPTED = "ascending ranges A-B, separated by commas, e.g. 0,10-12"


def test_analyze_without_a_study_points_to_run_and_extract(tmp_path):
    done = modalscope("analyze", tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"modalscope: error: {tmp_path}: no study here (no manifest.parquet, no "
                           f"activations.zarr); make one with `modalscope run --out {tmp_path} ...` or "
                           f"`modalscope extract --out {tmp_path} ...`, then analyze it\n")


def test_analyze_with_a_manifest_but_nothing_recorded_points_to_extract(small_study, tmp_path):
    shutil.copy(small_study / MANIFEST, tmp_path / MANIFEST)
    done = modalscope("analyze", tmp_path)
    assert done.stderr == (f"modalscope: error: {tmp_path}: nothing recorded yet (no activations.zarr); record "
                           f"its manifest's pairs with `modalscope extract --out {tmp_path} --model MODEL`, then "
                           "analyze it\n")


@pytest.fixture()
def copy(small_study: Path, tmp_path: Path) -> Path:
    out = tmp_path / "study"
    shutil.copytree(small_study, out)
    return out


def _ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_during_analysis_says_how_to_rerun_the_analysis(copy, monkeypatch):
    monkeypatch.setattr("modalscope.analysis.run_analysis", _ctrl_c)
    done = modalscope("analyze", copy, *FAST)
    assert done.returncode == 130
    assert done.stderr == (f"modalscope: interrupted during the analysis; every recorded pair is kept: rerun "
                           f"`modalscope analyze {copy}` (or the same command) to write the tables\n")
    done = modalscope("run", "--config", copy / "study.toml", "--out", copy)  # extraction done, then Ctrl-C
    assert done.returncode == 130
    assert done.stderr.splitlines()[-1] == (
        f"modalscope: interrupted during the analysis; every recorded pair is kept: rerun `modalscope analyze "
        f"{copy}` then `modalscope plot {copy}` (or the same command) to write the tables")


def test_ctrl_c_while_plotting_says_how_to_redraw(copy, monkeypatch):
    monkeypatch.setattr("modalscope.figures.assemble.study_figures", _ctrl_c)
    done = modalscope("plot", copy, "--no-png")
    assert (done.returncode, done.stderr) == (130, (
        f"modalscope: interrupted while drawing the figures; the tables are kept: rerun `modalscope plot {copy}` "
        "(or the same command) to draw them\n"))


@pytest.mark.parametrize("args, message", [
    (("--layers", "3-1"), f"--layers 3-1: 3-1 is an empty range (3 > 1); give layer indices (whole numbers "
                          f"from 0) and {ACCEPTED}"),
    (("--layers", "1,,2"), f"--layers 1,,2: an empty item is not an index or a range; give layer indices (whole "
                           f"numbers from 0) and {ACCEPTED}"),
    (("--neurons", "0,five"), f"--neurons 0,five: 'five' is not an index or a range; give neuron indices (whole "
                              f"numbers from 0) and {ACCEPTED}"),
    (("--neurons", "-3"), f"--neurons -3: '-3' is not an index or a range; give neuron indices (whole numbers "
                          f"from 0) and {ACCEPTED}"),
])
def test_export_bad_lists_are_one_line_naming_the_option_and_what_it_accepts(tmp_path, args, message):
    done = modalscope("export", tmp_path, *args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"modalscope: error: {message}\n")


def test_export_out_of_range_names_the_site_and_its_range(small_study):
    done = modalscope("export", small_study, "--neurons", "100", "--name", "_never")
    assert done.stderr == ("modalscope: error: --neurons 100: site residual has neurons 0-63; export mlp alone "
                           "with --sites mlp\n")
    done = modalscope("export", small_study, "--neurons", "0,176", "--sites", "mlp", "--name", "_never")
    assert done.stderr == "modalscope: error: --neurons 176: site mlp has neurons 0-175\n"
    done = modalscope("export", small_study, "--layers", "0-4", "--name", "_never")
    assert done.stderr == "modalscope: error: --layers: 4 is beyond the model, which has layers 0-3\n"
    assert not list((small_study / "tables").glob("*_never*"))


@pytest.mark.parametrize("args, message", [
    (("run", "--out", "x", "--model", "m", "--batch-size", "ten"), "--batch-size ten: give a whole number or auto"),
    (("run", "--out", "x", "--model", "m", "--num-pairs", "ten"), "--num-pairs ten: expected a whole number"),
    (("run", "--out", "x", "--model", "m", "--quantile", "high"), "--quantile high: expected a number"),
    (("run", "--out", "x", "--model", "m", "--dtype", "float8"), "--dtype float8: choose float32, float16 or bfloat16"),
    (("plot", "x", "--stat", "median"), "--stat median: choose max, mean, matched_max, frac_active or quantile"),
    (("analyze", "x", "--fdr"), "--fdr: needs a value"),
    (("analyze", "x", "--no-png"), "--no-png is not an option of analyze (it is one of demo, run, plot); see "
                                   "`modalscope analyze --help`"),
    (("plot", "x", "--csv"), "--csv is not an option of plot (it is one of demo, run, analyze, export); see "
                             "`modalscope plot --help`"),
    (("run", "--num-pair", "5"), "unrecognized option --num-pair; did you mean --num-pairs?"),
    (("frobnicate",), "COMMAND frobnicate: choose demo, init, run, plan, shrink, extract, analyze, plot, report, "
                      "export, neuron or ablate"),
])
def test_usage_errors_name_the_option_never_an_internal_function(args, message):
    done = modalscope(*args)
    assert (done.returncode, done.stderr) == (2, f"modalscope: error: {message}\n")


# What each command uses, and so lists: nothing more.
OPTIONS = {
    "demo": ["--out", "--model", "--device", "--batch-size", "--num-pairs", "--seed", "--sites", "--tokens", "--control", "--contrast",
             "--fdr", "--primary", "--permutations", "--bootstrap", "--outlier-factor", "--alignment-stat", "--long-tables", "--csv",
             "--no-png", "--stat", "--quiet"],
    "init": ["path"],
    "run": ["--out", "--config", "--model", "--revision", "--base-model", "--base-revision", "--device", "--dtype",
            "--device-map", "--quantization", "--batch-size", "--sort-window", "--workers", "--captions", "--images",
            "--jsonl", "--instances", "--num-pairs", "--seed", "--sites", "--tokens", "--stats", "--quantile", "--store-dtype",
            "--conditions", "--control", "--contrast", "--fdr", "--primary", "--permutations", "--bootstrap", "--outlier-factor",
            "--alignment-stat", "--long-tables", "--csv", "--no-png", "--stat", "--quiet", "--force"],
    "plan": ["--out", "--config", "--model", "--revision", "--base-model", "--batch-size", "--sort-window",
             "--num-pairs", "--sites", "--tokens", "--stats", "--quantile", "--store-dtype", "--conditions"],
    "shrink": ["source", "out", "--revision", "--seed", "--layers"],
    "extract": ["--out", "--config", "--resume", "--model", "--revision", "--base-model", "--base-revision",
                "--device", "--dtype", "--device-map", "--quantization", "--batch-size", "--sort-window", "--workers",
                "--captions", "--images", "--jsonl", "--instances", "--num-pairs", "--seed", "--sites", "--tokens", "--stats",
                "--quantile", "--store-dtype", "--conditions", "--control", "--contrast", "--quiet", "--force"],
    "analyze": ["dir", "--config", "--contrast", "--fdr", "--primary", "--permutations", "--bootstrap", "--outlier-factor",
                "--alignment-stat", "--long-tables", "--csv"],
    "plot": ["dir", "--config", "--no-png", "--stat"],
    "report": ["dir", "--config", "--stat"],
    "export": ["dir", "--config", "--layers", "--neurons", "--sites", "--name", "--csv"],
    "neuron": ["dir", "--config", "--site", "--layer", "--neuron", "--out", "--top"],
    "ablate": ["dir", "--k", "--sets", "--method", "--random", "--pairs", "--bands", "--readouts", "--concept-words",
               "--sites", "--stat", "--batch-size", "--device", "--dtype", "--seed", "--new-tokens", "--quiet"],
}


def test_each_command_lists_only_its_options_each_with_help_and_its_default():
    parser = build_parser()
    assert list(parser.commands) == list(OPTIONS)
    for name, command in parser.commands.items():
        actions = [a for a in command._actions if not isinstance(a, argparse._HelpAction)]
        assert [a.option_strings[0] if a.option_strings else a.dest for a in actions] == OPTIONS[name], name
        for action in actions:
            assert re.search(r"\S.* \((default|required)[^()]*\)$", action.help or ""), (name, action.dest)
        assert command.description, name
    text = modalscope("analyze", "--help").stdout
    assert "--permutations N" in text and "(default: 1000)" in text and "--no-png" not in text
    assert "--stat" not in text and "--quiet" not in text


@pytest.mark.parametrize("option, message", [
    (("--k", "0"), "--k 0: give 1 to 1,000,000"),
    (("--k", "ten"), "--k ten: expected a whole number"),
    (("--method", "foo"), "--method foo: choose from mean, zero"),
    (("--random", "100001"), "--random 100001: give 1 to 100,000"),
    (("--readouts", "image,bogus"), "--readouts image,bogus: choose from image, text, image_concept, text_concept, "
                                    "caption_words"),
    (("--pairs", "1"), "--pairs 1: give 2 to 10,000,000 (pairs to score)"),
])
def test_ablates_shared_options_check_as_the_study_files_ablation_keys(tmp_path, option, message):
    """`ablate --k` and `[ablation] k` are one setting (settings/table.py): the same bounds, named by the option."""
    done = modalscope("ablate", str(tmp_path), *option)
    assert (done.returncode, done.stderr) == (2, f"modalscope: error: {message}\n")
    row = BY_FIELD["ablation_" + option[0][2:]]
    if row.kind == "list" or option[1].isdigit():  # the study file's key refuses the same value
        with pytest.raises(ValueError, match=f"\\[ablation\\] {row.name} = "):
            row.checked(_list(option[1]) if row.kind == "list" else int(option[1]))
