"""The table of settings (settings/table.py) is the one source: every StudyConfig field is one row,
every row's flag is in the parser of each command it names (and no such command takes a setting
the table does not give it), every study-file key round-trips; and the bugs of two sources are
gone: one quantile bound, a stage run alone checks its settings before it writes DIR/study.toml,
--config for plan, report, export and neuron, list settings from a comma string."""

from __future__ import annotations

import argparse
import math
from dataclasses import fields

import pytest

from cli_run import modalscope
from modalscope import StudyConfig
from modalscope.cli import build_parser
from modalscope.record.reductions import ReductionSpec
from modalscope.seeds import STREAMS
from modalscope.settings import BY_FIELD, SECTIONS, SETTINGS, fields_of
from modalscope.study_file import dumps, read

# The commands whose study settings come from the table alone (export, shrink and ablate have
# options of their own that share a name with a setting: export's --sites filters the export).
TABLE_COMMANDS = ("demo", "run", "plan", "extract", "analyze", "plot", "report")
OWN = {"demo": {"model"}}  # demo --model: trained or tiny, the embedded model to build


def test_every_study_config_field_is_exactly_one_row():
    names = [s.field for s in SETTINGS]
    assert sorted(names) == sorted(f.name for f in fields(StudyConfig)) and len(set(names)) == len(names)
    keys = [(s.section, s.name) for s in SETTINGS]
    assert len(set(keys)) == len(keys) and {s.section for s in SETTINGS} == set(SECTIONS)
    assert len({s.option for s in SETTINGS if s.commands}) == len([s for s in SETTINGS if s.commands])


def test_every_row_flag_is_in_the_parser_of_each_command_it_names():
    parser = build_parser()
    for name, command in parser.commands.items():
        dests = {a.dest: a for a in command._actions if not isinstance(a, argparse._HelpAction)}
        for setting in SETTINGS:
            if name in setting.commands:
                action = dests.get(setting.field)
                assert action is not None and setting.option in action.option_strings, (name, setting.field)
                assert action.default is None, (name, setting.field)  # a typed flag alone beats the file
        if name in TABLE_COMMANDS:  # and nothing else sets a StudyConfig field there
            settings = {d for d in dests if d in BY_FIELD} - OWN.get(name, set()) - {"out_dir"}
            assert settings == set(fields_of(name)), name


def test_every_study_file_key_round_trips(tmp_path):
    config = StudyConfig(out_dir=tmp_path / "s", sites="mlp", stats=["quantile"], quantile=0.5, n_perm=300,
                         csv=True, png=False, ablation_sets="text,concept:red", ablation_pairs=20)
    path = tmp_path / "study.toml"
    path.write_text(dumps(config))
    settings = read(path)
    assert set(settings) == {s.field for s in SETTINGS if getattr(config, s.field) is not None}
    again = StudyConfig(**settings)
    for setting in SETTINGS:
        assert getattr(again, setting.field) == getattr(config, setting.field), setting.name


def test_list_settings_take_a_comma_string_or_a_list():
    config = StudyConfig(out_dir="x", sites="mlp", stats="quantile", conditions=["image_text"],
                         ablation_method="mean, zero")
    assert config.sites == ("mlp",) and config.stats == ("max", "mean", "quantile")
    assert config.conditions == ("text", "image", "image_text") and config.ablation_method == ("mean", "zero")
    config.validate()
    assert StudyConfig(out_dir="x", sites="residual,mlp") == StudyConfig(out_dir="x")


@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_one_quantile_bound_for_the_flag_and_the_reductions(q):
    reason = "must be between 0 and 1, both excluded (0 is the min, 1 the max)"
    with pytest.raises(ValueError, match=f"^--quantile {q}: {reason.replace('(', '.').replace(')', '.')}$"):
        StudyConfig(out_dir="x", stats=("quantile",), quantile=q).validate()
    with pytest.raises(ValueError, match=f"^quantile {q}: "):
        ReductionSpec(("quantile",), q)
    assert ReductionSpec(("quantile",), 0.5).quantile == StudyConfig(out_dir="x", quantile=0.5).validate().quantile


def test_seed_help_names_every_random_stream():
    help_text = BY_FIELD["seed"].help
    assert len(STREAMS) == 6 and "six" in help_text  # a seventh stream: say it here
    for words in ("shuffle", "sign flips", "bootstrap", "alignment", "shuffled pairings", "cross-modal null"):
        assert words in help_text, words


def test_a_stage_run_alone_checks_its_settings_before_writing_the_study_file(copy):
    before = (copy / "study.toml").read_bytes()
    tables = {p.name: p.stat().st_mtime_ns for p in (copy / "tables").iterdir()}
    ran = modalscope("run", "--out", copy / "never", "--model", "m", "--permutations", "10", "--bootstrap", "10")
    done = modalscope("analyze", copy, "--permutations", "10", "--bootstrap", "10")
    assert done.returncode == ran.returncode == 2
    assert done.stderr == ran.stderr == "modalscope: error: --permutations 10: needs at least 200 resamples\n"
    done = modalscope("analyze", copy, "--outlier-factor", "1")
    assert done.returncode == 2 and done.stderr.startswith("modalscope: error: --outlier-factor 1.0: ")
    assert (copy / "study.toml").read_bytes() == before  # nothing written
    assert {p.name: p.stat().st_mtime_ns for p in (copy / "tables").iterdir()} == tables


def test_plan_report_export_and_neuron_take_config(copy, tmp_path):
    study = StudyConfig.from_toml(copy / "study.toml", out_dir=copy)
    path = study.to_toml(tmp_path / "study.toml")
    done = modalscope("report", "--config", path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"  report  {copy.resolve() / 'report.html'}\n"
    done = modalscope("export", "--config", path, "--layers", "0", "--neurons", "0-1", "--name", "_cfg")
    assert done.returncode == 0, done.stderr
    assert (copy / "tables" / "table1_activations_cfg.parquet").exists()
    done = modalscope("neuron", "--config", path, "--site", "mlp", "--layer", "0", "--neuron", "0")
    assert done.returncode == 0, done.stderr
    assert (copy / "cards" / "mlp_layer0_neuron0.html").exists()
    done = modalscope("plan", "--config", path)
    assert done.returncode == 0, done.stderr
    assert "16" in done.stdout  # the file's num_pairs
    done = modalscope("plan", "--config", path, "--quantile", "1")
    assert (done.returncode, done.stderr) == (2, "modalscope: error: --quantile 1.0: must be between 0 and 1, "
                                                 "both excluded (0 is the min, 1 the max)\n")
