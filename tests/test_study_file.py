"""The study file (study.toml): a TOML round trip of every setting, flags over the file over the
defaults, `run --config DIR/study.toml --out NEW` repeating a study exactly, one-line messages
for unknown keys, wrong types and bad values (file, line, key, suggestion), the same typo rule
for CLI options, and `modalscope init`'s starter file."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest

from cli_run import modalscope
from modalscope import StudyConfig
from modalscope.study_file import KEYS, StudyFileError, starter
from modalscope.data.manifest import MANIFEST

TINY_STUDY = ("--num-pairs", "8", "--permutations", "200", "--bootstrap", "200", "--no-png", "--quiet",
              "--batch-size", "8", "--device", "cpu")


def _every_field_set(tmp_path: Path, coco_files) -> StudyConfig:
    captions, images = coco_files
    return StudyConfig(
        out_dir=tmp_path / "study", model="some/vlm", captions=captions, images=images,
        revision='v"1\\2\n\té ☃', base_model="some/base", base_revision="abc123", device="cuda:1",
        dtype="bfloat16", device_map="auto", quantization="4bit", batch_size=3, sort_window=2, workers=1,
        num_pairs=9, seed=5, sites=("mlp",), tokens="all", conditions=("text", "image", "image_text"), contrast="image-text",
        stats=("max", "mean", "quantile"), stat="mean", quantile=0.75, store_dtype="float32", fdr="by", n_perm=300, n_boot=400,
        outlier_factor=12.5, alignment_stat="max", long_tables="never", csv=True, png=False, progress=False,
        primary="mlp:quantile", instances=captions.parent.parent / "instances_demo.json",
        control="random-twin",
        ablation=True, ablation_k=3, ablation_sets=("text", "concept:red"), ablation_method=("mean", "zero"),
        ablation_random=200, ablation_pairs=50, ablation_bands=2, ablation_readouts=("image", "caption_words"),
    )


def test_every_field_survives_a_round_trip(tmp_path, coco_files):
    config = _every_field_set(tmp_path, coco_files)
    defaults = StudyConfig(out_dir="elsewhere")
    unset = [f.name for f in fields(config) if getattr(config, f.name) == getattr(defaults, f.name)
             and f.name != "jsonl"]
    assert unset == []  # the test covers every field (jsonl below)
    path = config.to_toml(tmp_path / "study.toml")
    assert StudyConfig.from_toml(path) == config
    assert {k.attr for k in KEYS} == {f.name for f in fields(StudyConfig)}  # one key per field

    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"image": "a.png", "caption": "a cat", "id": "1"}\n')
    other = StudyConfig(out_dir=tmp_path / "s2", jsonl=jsonl, batch_size="auto", outlier_factor=1e17)
    assert StudyConfig.from_toml(other.to_toml(tmp_path / "other.toml")) == other
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left over


def test_a_flag_beats_the_file_and_the_file_beats_the_default(tmp_path):
    from modalscope.cli import _config, parse_args

    path = tmp_path / "study.toml"
    path.write_text(f'[data]\nseed = 3\n[statistics]\npermutations = 300\nbootstrap = 400\n'
                    f'[output]\nout = "{tmp_path / "s"}"\ncsv = true\n')
    args = parse_args(["run", "--config", str(path), "--permutations", "500", "--seed", "0", "--quiet"])
    config = _config(args, args.out)
    assert config.n_perm == 500 and config.seed == 0 and not config.progress  # flags, even at the default
    assert config.n_boot == 400 and config.csv and config.out_dir == tmp_path / "s"  # the file
    assert config.fdr == "bh" and config.model == "llava-hf/llava-1.5-7b-hf"  # neither: the defaults
    args = parse_args(["run", "--config", str(path), "--out", str(tmp_path / "t")])
    assert _config(args, args.out).out_dir == tmp_path / "t"
    # the Python API: keyword overrides beat the file
    assert StudyConfig.from_toml(path, n_boot=1000, out_dir=tmp_path / "u").n_boot == 1000


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_model_dir, coco_files):
    captions, images = coco_files
    out = tmp_path_factory.mktemp("first") / "study"
    done = modalscope("run", "--model", tiny_model_dir, "--captions", captions, "--images", images,
                      *TINY_STUDY, "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


@pytest.fixture(scope="module")
def first_study(first_run) -> Path:
    return first_run[0]


@pytest.mark.slow
def test_run_config_study_toml_repeats_the_study(first_study, tmp_path):
    settings = tomllib.loads((first_study / "study.toml").read_text())
    assert settings["data"]["num_pairs"] == 8 and settings["statistics"]["permutations"] == 200
    assert settings["statistics"]["fdr"] == "bh" and settings["output"]["png"] is False  # defaults too
    assert Path(settings["data"]["captions"]).is_absolute()
    assert "config" in json.loads((first_study / "study.json").read_text())  # the measured facts stay

    new = tmp_path / "new"
    done = modalscope("run", "--config", first_study / "study.toml", "--out", new)
    assert done.returncode == 0, done.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_parquet(new / MANIFEST),
                                  pd.read_parquet(first_study / MANIFEST))
    tables = sorted(p.name for p in (first_study / "tables").iterdir())
    assert "table1_activations.parquet" in tables and "summary.json" in tables
    assert sorted(p.name for p in (new / "tables").iterdir()) == tables
    for name in tables:  # every byte: columns, schema metadata (settings, versions), summary.json
        assert (new / "tables" / name).read_bytes() == (first_study / "tables" / name).read_bytes(), name
    again = tomllib.loads((new / "study.toml").read_text())
    assert again["output"].pop("out") == str(new.resolve())
    settings["output"].pop("out")
    assert again == settings


@pytest.mark.slow
def test_run_ends_with_the_headline_of_each_site(first_run, tiny_model_dir, coco_files):
    out, done = first_run
    summary = json.loads((out / "tables/summary.json").read_text())
    assert done.stdout.endswith("At a glance:\n" + "".join(f"  {summary[site]['headline']}\n"
                                                         for site in ("residual", "mlp")))
    assert summary["mlp"]["headline"].startswith("mlp, layer mean of Δ = text − image: raw max ")
    facts = json.loads((out / "study.json").read_text())
    captions, images = coco_files
    assert facts["command"] == shlex.join(["modalscope", "run", "--model", str(tiny_model_dir), "--captions",
                                           str(captions), "--images", str(images), *TINY_STUDY, "--out", str(out)])
    assert set(facts["stages"]) == {"extract", "analyze", "plot"}


@pytest.mark.slow
def test_extract_writes_the_study_file_after_its_checks(first_study, tmp_path):
    out = tmp_path / "extracted"
    done = modalscope("extract", "--config", first_study / "study.toml", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert StudyConfig.from_toml(out / "study.toml").out_dir == out.resolve()
    facts = json.loads((out / "study.json").read_text())  # the measured facts of the stage
    assert facts["stages"]["extract"]["command"] == f"modalscope extract --config {first_study / 'study.toml'} " \
                                                    f"--out {out}"
    assert set(facts["timings"]) == {"extract_s"} and "gpu" not in facts
    refused = tmp_path / "refused"  # a model that cannot load: no study file
    done = modalscope("extract", "--config", first_study / "study.toml", "--out", refused,
                      "--model", tmp_path / "no-model")
    assert done.returncode != 0 and not (refused / "study.toml").exists()


def _study_file(tmp_path: Path, body: str) -> tuple[Path, Path]:
    out = tmp_path / "never"
    path = tmp_path / "study.toml"
    path.write_text(f'[output]\nout = "{out}"\n\n{body}')
    return path, out


def test_unknown_key_names_file_line_and_the_closest_key(tmp_path):
    path, out = _study_file(tmp_path, '[data]\n# the pairs\nnum_pair = 5\n')
    done = modalscope("run", "--config", path)
    assert done.returncode == 2
    assert done.stderr == f"modalscope: error: {path}, line 6: [data] num_pair: unknown key; did you mean num_pairs?\n"
    assert not out.exists()  # nothing written
    path, _ = _study_file(tmp_path, "[model]\nseed = 1\n")
    with pytest.raises(StudyFileError, match=r"line 5: \[model\] seed: unknown key; did you mean \[data\] seed\?$"):
        StudyConfig.from_toml(path)
    path, _ = _study_file(tmp_path, "[statistic]\nfdr = 'bh'\n")
    with pytest.raises(StudyFileError, match=r"line 4: \[statistic\]: unknown section; did you mean \[statistics\]\?$"):
        StudyConfig.from_toml(path)


def test_wrong_type_names_the_expected_type(tmp_path):
    path, out = _study_file(tmp_path, '[data]\nnum_pairs = "ten"\n')
    done = modalscope("run", "--config", path)
    assert done.returncode == 2 and not out.exists()
    assert done.stderr == f'modalscope: error: {path}, line 5: [data] num_pairs = "ten": expected a whole number\n'
    for body, expected in [("[output]\ncsv = 1\n", "csv = 1: expected true or false"),
                           ('[conditions]\nsites = "mlp"\n', 'sites = "mlp": expected a list of strings'),
                           ("[data]\nseed = true\n", "seed = true: expected a whole number")]:
        path.write_text(body)
        with pytest.raises(StudyFileError, match=f"line 2: .*{expected.replace('[', '.')}"):
            StudyConfig.from_toml(path, out_dir=tmp_path / "x")


def test_bad_value_goes_through_validation_with_the_file_named(tmp_path):
    path, out = _study_file(tmp_path, '[statistics]\nfdr = "xx"\n')
    done = modalscope("run", "--config", path)
    assert done.returncode == 2 and not out.exists()
    assert done.stderr == f'modalscope: error: {path}, line 5: [statistics] fdr = "xx": choose bh or by\n'
    path, _ = _study_file(tmp_path, "[statistics]\nbootstrap = 100\n")
    with pytest.raises(StudyFileError, match=r"line 5: \[statistics\] bootstrap = 100: needs at least 200 resamples"):
        StudyConfig.from_toml(path)
    done = modalscope("run", "--config", path, "--bootstrap", "50")  # the flag's value: no file line
    assert done.stderr == "modalscope: error: --bootstrap 50: needs at least 200 resamples\n"
    path.write_text("[data]\nnum_pairs = 5\n")
    done = modalscope("run", "--config", path)
    assert done.stderr == f"modalscope: error: {path}: no [output] out; give the study folder there or with --out DIR\n"
    done = modalscope("run", "--config", tmp_path / "missing.toml")
    assert done.stderr == f"modalscope: error: --config {tmp_path / 'missing.toml'}: no such file\n"


def test_unknown_cli_option_suggests_the_closest():
    done = modalscope("run", "--num-pair", "5")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "modalscope: error: unrecognized option --num-pair; did you mean --num-pairs?\n"
    done = modalscope("analyze", "somewhere", "--permutation", "300")  # no prefix matching either
    assert done.stderr == "modalscope: error: unrecognized option --permutation; did you mean --permutations?\n"


def test_init_writes_a_starter_that_parses_and_never_overwrites(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "coco/annotations").mkdir(parents=True)
    (tmp_path / "coco/annotations/captions_val2017.json").write_text("{}")
    (tmp_path / "coco/val2017").mkdir()
    done = modalscope("init")
    assert done.returncode == 0, done.stderr
    config = StudyConfig.from_toml("study.toml")
    assert (config.model, config.num_pairs, config.device, config.dtype) == (
        "llava-hf/llava-1.5-7b-hf", 5000, "cuda", "float16")
    assert config.captions == Path("coco/annotations/captions_val2017.json") and config.images == Path("coco/val2017")
    text = (tmp_path / "study.toml").read_text()
    for key in KEYS:  # every option: set, or commented out at its default
        assert f"\n{key.name} = " in text or f"\n# {key.name} = " in text, key.name
    uncommented = "\n".join(line[2:] if re.match(r"# [a-z_]+ = ", line) else line for line in text.splitlines())
    assert {s for s in tomllib.loads(uncommented)} == {k.section for k in KEYS}  # the defaults parse too
    done = modalscope("init")
    assert done.returncode == 2
    assert done.stderr == ("modalscope: error: study.toml: already exists; give another PATH "
                           "(modalscope init PATH) or remove it\n")
    assert (tmp_path / "study.toml").read_text() == text == starter()
    assert modalscope("init", "other.toml").returncode == 0 and (tmp_path / "other.toml").exists()
