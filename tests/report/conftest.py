"""One small real study (the tiny LLaVA, 16 pairs), made by `run_study`, shared by the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, coco_files) -> Path:
    from modalscope import StudyConfig, run_study

    captions, images = coco_files
    config = StudyConfig(out_dir=tmp_path_factory.mktemp("study"), model=str(tiny_model_dir), captions=captions,
                         images=images, num_pairs=16, batch_size=8, device="cpu", n_perm=200, n_boot=200,
                         png=False, progress=False)
    result = run_study(config)
    assert result.report == config.out_dir / "report.html"
    return config.out_dir
