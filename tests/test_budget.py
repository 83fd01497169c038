"""The store budget: its file count is the store's, its size an upper bound of the store's, the
7B figures are the arithmetic of the real LLaVA-1.5 config, and a full disk is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modalscope import StudyConfig
from modalscope.budget import Budget, disk_problem, estimate


def test_the_small_study_store_matches_its_budget(small_study: Path, tiny_model_dir: Path):
    from transformers import AutoConfig

    attrs = json.loads((small_study / "activations.zarr/zarr.json").read_text())["attributes"]
    config = StudyConfig(out_dir=small_study, stats=tuple(attrs["stats"]))
    budget = estimate(config, AutoConfig.from_pretrained(tiny_model_dir), attrs["n_done"],
                      attrs["batch_size"], attrs["sort_window"])
    files = [p for p in (small_study / "activations.zarr").rglob("*") if p.is_file()]
    assert budget.files == len(files)
    on_disk = sum(p.stat().st_size for p in files if p.name != "zarr.json")
    assert 0.3 * budget.store_bytes < on_disk <= budget.store_bytes


def test_llava_7b_figures_from_the_real_config():
    from real_models import real_files
    from transformers import AutoConfig

    config = StudyConfig(out_dir=Path("unused"))  # defaults: 5 reductions, text/image/image_text
    budget = estimate(config, AutoConfig.from_pretrained(real_files("llava-1.5")), 5000, 16, 8)
    assert budget.widths == {"residual": 4096, "mlp": 11008} and budget.n_layers == 32
    assert budget.values_per_pair == 32 * 15104 * 5 * 5
    assert budget.store_bytes == 5000 * 32 * 15104 * 25 * 4  # 241.7 GB
    assert budget.lines()[0].startswith("store: at most 241.7 GB in ")


def test_a_disk_too_small_is_one_line_naming_what_shrinks_the_store(tmp_path: Path):
    budget = Budget(10**9, 32, {"mlp": 11008}, ("text", "image"), ("max", "mean"), 128)
    line = disk_problem(budget, tmp_path / "new" / "study")
    assert line is not None and "\n" not in line
    assert line.startswith(f"{tmp_path / 'new' / 'study'}: the store needs about 6,199,705.6 GB (with a 10% margin)")
    assert line.endswith("--sites mlp or fewer --num-pairs, or pass --force")
    assert disk_problem(Budget(10, 2, {"mlp": 8}, ("text", "image"), ("max",), 8), tmp_path) is None
