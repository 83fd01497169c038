"""The store budget: its file count is the store's, its size an upper bound of the store's, the
7B figures are the arithmetic of the real LLaVA-1.5 config, and a full disk is one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from modalscope import StudyConfig
from modalscope.budget import Budget, disk_problem, estimate


def test_the_small_study_store_matches_its_budget(small_study: Path, tiny_model_dir: Path):
    from transformers import AutoConfig

    attrs = json.loads((small_study / "activations.zarr/zarr.json").read_text())["attributes"]
    config = StudyConfig(out_dir=small_study, stats=tuple(attrs["stats"]), conditions=tuple(attrs["conditions"]),
                         store_dtype=attrs["store_dtype"])
    budget = estimate(config, AutoConfig.from_pretrained(tiny_model_dir), attrs["n_done"],
                      attrs["batch_size"], attrs["sort_window"])
    files = [p for p in (small_study / "activations.zarr").rglob("*") if p.is_file()]
    # The budget counts text/matched_max as holes (a real model's image has more tokens than any
    # caption); the tiny model's 4 image tokens are fewer than some captions', so a few of its
    # shards hold rows: at most one per window and site.
    # Likewise the joint caption's matched_max is counted as stored, and it is all holes wherever
    # the caption is the pair's shortest stream (here: always).
    windows = len(budget.widths) * -(-attrs["n_done"] // budget.window)
    text_matched = [p for p in files if "/text/matched_max/c/" in p.as_posix()]
    caption_matched = [p for p in files if "/image_text_caption/matched_max/c/" in p.as_posix()]
    assert len(text_matched) <= windows and len(caption_matched) <= windows
    assert budget.files + len(text_matched) - (windows - len(caption_matched)) == len(files)
    on_disk = sum(p.stat().st_size for p in files if p.name != "zarr.json")
    assert 0.3 * budget.store_bytes < on_disk <= budget.store_bytes


def test_llava_7b_figures_from_the_real_config():
    from real_models import real_files
    from transformers import AutoConfig

    model = AutoConfig.from_pretrained(real_files("llava-1.5"))
    config = StudyConfig(out_dir=Path("unused"))  # defaults: max, mean, matched_max of text and image, float16
    budget = estimate(config, model, 5000, 16, 8)
    assert budget.widths == {"residual": 4096, "mlp": 11008} and budget.n_layers == 32
    assert budget.derived == (("text", "matched_max"),)
    assert budget.values_per_pair == 32 * 15104 * 5  # 2 streams x 3 reductions, less text/matched_max
    assert budget.store_bytes == 5000 * 32 * 15104 * 5 * 2  # 24.2 GB: the goal is <= 40 GB
    assert budget.lines()[0].startswith("store: at most 24.2 GB in ")
    every = StudyConfig(out_dir=Path("unused"), conditions=("text", "image", "image_text"),
                        stats=("max", "mean", "matched_max", "frac_active", "quantile"), store_dtype="float32")
    budget = estimate(every, model, 5000, 16, 8)  # 5 streams x 5 reductions, less text's and the joint image's
    assert budget.values_per_pair == 32 * 15104 * (25 - 1 - 5)
    assert budget.joint_image_bytes == 5000 * 32 * 15104 * 5 * 4
    bf16 = estimate(StudyConfig(out_dir=Path("unused"), store_dtype="bfloat16"), model, 5000, 16, 8)
    assert bf16.store_bytes == 5000 * 32 * 15104 * 5 * 2 and bf16.lines()[0].endswith("derived, not stored; bfloat16)")


def test_a_disk_too_small_is_one_line_naming_what_shrinks_the_store(tmp_path: Path):
    budget = Budget(10**9, 32, {"mlp": 11008}, ("text", "image"), ("max", "mean"), 128)
    line = disk_problem(budget, tmp_path / "new" / "study")
    assert line is not None and "\n" not in line
    assert line.startswith(f"{tmp_path / 'new' / 'study'}: the store needs about 6,199,705.6 GB (with a 10% margin)")
    assert line.endswith("--sites mlp, --store-dtype float16 or fewer --num-pairs, or pass --force")
    assert disk_problem(Budget(10, 2, {"mlp": 8}, ("text", "image"), ("max",), 8), tmp_path) is None


def test_extraction_prints_the_budget_and_refuses_a_full_disk_before_writing(tiny_model_dir, coco_files, tmp_path,
                                                                            monkeypatch, capsys):
    import shutil as real_shutil

    from modalscope import budget as budget_module
    from modalscope.study import extract_stage

    captions, images = coco_files
    config = StudyConfig(out_dir=tmp_path / "study", model=str(tiny_model_dir), captions=captions, images=images,
                         num_pairs=6, batch_size=2, sort_window=1, device="cpu", stats=("max", "mean"))
    free = real_shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(budget_module.shutil, "disk_usage", lambda path: free)
    with pytest.raises(ValueError) as refused:
        extract_stage(config)
    assert str(refused.value).startswith(f"{config.out_dir}: the store needs about ")
    assert "0.0 GB" not in str(refused.value) and "B (with a 10% margin) and 1.0 kB are free" in str(refused.value)
    assert "1,000" not in str(refused.value) and not config.out_dir.exists()  # nothing written
    capsys.readouterr()
    store = extract_stage(config, force=True)
    err = capsys.readouterr().err
    assert store.n_done == 6
    assert "store: at most " in err and "0.0 GB" not in err
    assert "measured " in err and " pairs/s over the first 2 pairs" in err


def test_plan_prints_the_7b_budget_from_the_config_alone(tmp_path: Path):
    from cli_run import modalscope
    from real_models import real_files

    folder = real_files("llava-1.5")  # config, tokenizer, processor: no weights
    done = modalscope("plan", "--model", str(folder), "--num-pairs", "5000", "--stats", "max,mean",
                      "--conditions", "text,image", "--out", str(tmp_path / "study"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{folder}: 32 decoder layers, residual 4,096 neurons, mlp 11,008 neurons"
    assert lines[1] == ("store: at most 19.3 GB in 354 files (5,000 pairs x 32 layers x 15,104 neurons "
                        "x 4 arrays: 2 streams x 2 reductions; float16)")  # 5,000 x 32 x 15,104 x 4 x 2 bytes
    assert lines[3] == "  one file per 128 inputs (batch size 16 x sort window 8) and array, all layers"
    assert lines[4].startswith(f"{tmp_path / 'study'}: ")


def test_plan_counts_the_random_twins_store(tmp_path: Path):
    """--control random-twin records a second store as large (DIR/control/random-twin): plan
    says so and its disk check asks for both."""
    from modalscope import StudyConfig
    from modalscope.budget import Budget, plan_lines, study_disk_problem
    from real_models import real_files

    folder = real_files("llava-1.5")
    config = StudyConfig(model=str(folder), num_pairs=5000, stats=("max", "mean"), conditions=("text", "image"),
                         control="random-twin", out_dir=tmp_path / "study")
    lines = plan_lines(config, 5000)
    assert lines[4] == ("random twin (--control random-twin): a second store as large, in DIR/control/random-twin: "
                        "38.7 GB in 708 files in all")  # 2 x 19.3 GB (rounded alone), 2 x 354 files
    budget = Budget(1000, 32, {"mlp": 11008}, ("text", "image"), ("max", "mean"), 128, "float16")
    huge = replace(budget, n_pairs=10**9)  # no disk holds it: the message names both stores
    assert "the store and its random twin's need" in study_disk_problem(config, huge)
    assert "the store needs" in study_disk_problem(replace(config, control="none"), huge)
    assert study_disk_problem(config, budget) is None
