"""Shared fixtures: a real tiny LLaVA checkpoint and a small synthetic COCO set, built once.

The checkpoint is built by the same code as `modalscope demo` and loaded through
`from_pretrained`, so every test runs the real model classes (nothing is mocked).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Under pytest-xdist (`make test` runs two workers on two cores) each worker, and every process it
# starts, computes on one thread: two workers of two threads each would oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

from modalscope.data.synthetic import build_synthetic_coco
from real_models import real_files

# The longest test files (measured: `make test`'s --durations), run first: `--dist loadfile`
# hands files to the two workers in collection order, so a long file collected last runs alone
# at the end while the other worker idles (longest-first keeps both busy to the end: 8.2 min
# before this, see the session note). Order only; every test still runs.
LONGEST_FIRST = ("test_trained_demo.py", "test_families_end_to_end.py", "test_benchmarks.py", "test_trained_vlm.py",
                 "test_distributed.py", "test_awkward_study.py", "test_kill_stages.py", "test_resume.py",
                 "test_faults.py", "test_extract.py", "test_memory.py", "test_random_twin.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def coco_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    build_synthetic_coco(root, n_images=40)
    return root


@pytest.fixture(scope="session")
def coco_files(coco_dir: Path) -> tuple[Path, Path]:
    return coco_dir / "annotations" / "captions_demo.json", coco_dir / "images"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, coco_files: tuple[Path, Path]) -> Path:
    from modalscope.models.tiny import build_tiny_llava

    corpus = [a["caption"] for a in json.loads(coco_files[0].read_text())["annotations"]]
    return build_tiny_llava(tmp_path_factory.mktemp("model") / "tiny-llava", corpus)


@pytest.fixture(scope="session")
def loaded(tiny_model_dir: Path):
    from modalscope.models.loading import load_model

    return load_model(str(tiny_model_dir), dtype="float32", device="cpu")


# One small real study (the tiny LLaVA, 16 pairs), made by `run_study`: the report tests and the
# bit-identical output check read it.
@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, coco_files) -> Path:
    from modalscope import StudyConfig, run_study
    from modalscope.record.reductions import ALL_STATS
    from modalscope.streams import CONDITIONS

    captions, images = coco_files
    # Everything recorded (all conditions and reductions, float32), not the lean defaults: the
    # tests that read this study cover every stream and reduction, and the golden hashes pin it.
    config = StudyConfig(out_dir=tmp_path_factory.mktemp("study"), model=str(tiny_model_dir), captions=captions,
                         images=images, num_pairs=16, batch_size=8, device="cpu", n_perm=200, n_boot=200,
                         png=False, progress=False, conditions=CONDITIONS, stats=ALL_STATS, store_dtype="float32")
    result = run_study(config)
    assert result.report == config.out_dir / "report.html"
    return config.out_dir


# A writable copy of the small study, for the tests that change, break or rerun it.
@pytest.fixture()
def copy(small_study: Path, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "study"
    shutil.copytree(small_study, out)
    return out


# Real model files (config, tokenizer, processor, template; no weights): see real_models.py
@pytest.fixture(scope="session")
def real_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """llava-hf/llava-1.5-7b-hf's own tokenizer, processor, template and config, shrunk to 2
    decoder layers of width 64 with random weights (read from ../shared, not copied: Llama 2
    licence)."""
    from modalscope.models.shrunk import build_shrunk

    return build_shrunk(real_files("llava-1.5"), tmp_path_factory.mktemp("real") / "llava-1.5-shrunk")


@pytest.fixture(scope="session")
def real_loaded(real_llava_dir: Path):
    from modalscope.models.loading import load_model

    return load_model(str(real_llava_dir), dtype="float32", device="cpu")


@pytest.fixture(scope="session", params=["tiny", "llava-1.5"])
def any_loaded(request: pytest.FixtureRequest):
    """The fidelity tests run on both: the demo's tiny LLaVA and the real LLaVA-1.5 files."""
    return request.getfixturevalue("loaded" if request.param == "tiny" else "real_loaded")
