"""Long stages say what they do: a rerun of a finished study says extraction was already complete
before it analyses again, and analyze and plot show progress (issue 28)."""

from __future__ import annotations

import shutil
from pathlib import Path


def test_a_rerun_says_extraction_was_complete_and_shows_progress(small_study: Path, tmp_path: Path, capsys,
                                                                  monkeypatch):
    """At a terminal (the bars and the note go to stderr only there: a log or a pipe keeps its one-line
    errors)."""
    import sys

    from modalscope import StudyConfig, run_study

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    copy = tmp_path / "study"
    shutil.copytree(small_study, copy)
    config = StudyConfig.from_toml(copy / "study.toml", out_dir=copy, progress=True, png=False)
    run_study(config)
    err = capsys.readouterr().err
    said = err.index(f"extraction already complete (16 pairs in {copy / 'activations.zarr'}): analysing and "
                     "plotting again")
    assert said < err.index("analyze mlp") and said < err.index("plot")  # said first, then the bars
    assert "analyze residual" in err
