"""`run_study`: the whole method on one config, stage after stage, each reading what the one
before wrote in DIR.

Why each stage inside `_Stage`: Ctrl-C names the stage it stopped in, so the message can say which
command continues the study.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from modalscope import outputs
from modalscope.config import StudyConfig
from modalscope.data.manifest import data_notes
from modalscope.folder import study_manifest, study_store
from modalscope.results import StudyResult
from modalscope.seeds import record as seed_streams
from modalscope.stages.analyze import analyze_stage
from modalscope.stages.checks import extraction_complete, extraction_note
from modalscope.stages.extract import extract_stage
from modalscope.stages.plot import plot_stage
from modalscope.stages.report import report_stage
from modalscope.stages.settings import write_study_file
from modalscope.store import STORE
from modalscope.tables import SUMMARY, write_json


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the stage it stopped in, so the message names the command that reruns it."""

    def __init__(self, stage: str, out_dir: Path) -> None:
        super().__init__(stage)
        self.stage = stage
        self.out_dir = out_dir


class _Stage:
    """`with _Stage("analyze", DIR):` turns a KeyboardInterrupt inside into Interrupted."""

    def __init__(self, stage: str, out_dir: Path) -> None:
        self.stage, self.out_dir = stage, out_dir

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, trace) -> None:
        if kind is not None and issubclass(kind, KeyboardInterrupt) and not isinstance(error, Interrupted):
            raise Interrupted(self.stage, self.out_dir) from None


def run_study(config: StudyConfig, force: bool = False) -> StudyResult:
    """The whole method on one config: manifest, extraction, statistics, tables, figures, report.
    `force`: record even when the free disk looks too small for the store (budget.py)."""
    from modalscope.lock import study_lock

    config.validate()
    with study_lock(config.out_dir, "run_study"):  # one writer per folder (the CLI already holds it)
        return _run_study(config, force)


def _run_study(config: StudyConfig, force: bool) -> StudyResult:
    from modalscope.provenance import read_study_json, record_stage
    from modalscope.record.distributed import Ranks

    leader = Ranks.from_env().leader  # under torchrun, rank 0 analyses the merged store
    result = StudyResult(out_dir=config.out_dir)
    clock = time.perf_counter()
    done = extraction_complete(config.out_dir) if config.progress and sys.stderr.isatty() else None
    if done and leader:  # a rerun of a finished study: say so before the work
        print(f"extraction already complete ({done:,} pairs in {config.out_dir / STORE}): analysing and plotting "
              "again", file=sys.stderr)
    with _Stage("extract", config.out_dir):
        extract_stage(config, force=force)  # model checked, then pairs (DIR/manifest.parquet), then recorded
    manifest, _ = study_manifest(config.out_dir)
    result.timings["extract_s"] = time.perf_counter() - clock
    if not leader:
        return result
    record_stage(config.out_dir, "extract", result.timings["extract_s"])
    result.messages.extend(data_notes(config.out_dir))  # fewer pairs, skipped pairs, cut captions
    note = extraction_note(config.out_dir)
    if note:
        result.messages.append(note)
    clock = time.perf_counter()
    with _Stage("analyze", config.out_dir):
        result.tables, skipped = analyze_stage(config, manifest)
    if skipped:
        result.messages.append(skipped)
    result.timings["analyze_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    with _Stage("plot", config.out_dir):
        result.figures, png_message = plot_stage(config.out_dir, config.png, config.stat,
                                                 config.progress and sys.stderr.isatty())
    if png_message:
        result.messages.append(png_message)
    result.timings["plot_s"] = time.perf_counter() - clock
    if config.ablation:  # the study file's [ablation]: `modalscope ablate` on this study (ablation/stage.py)
        from modalscope.ablation.stage import ablation_stage

        with _Stage("ablate", config.out_dir):
            ablation_stage(config, result)
    seed = int(study_store(config.out_dir).attrs.get("seed", config.seed))
    study = read_study_json(config.out_dir)  # the stages' records stay; the whole study's settings replace theirs
    study.update({"config": config.as_dict(), "timings": result.timings,
                  "seeds": seed_streams(seed)})  # which random stream the shuffle, sign flips and bootstrap drew
    write_json(study, outputs.entry(outputs.STUDY_JSON).at(config.out_dir))
    write_study_file(config)
    with _Stage("report", config.out_dir):
        result.report = report_stage(config.out_dir, config.stat)
    return result


def study_headlines(out_dir: Path) -> list[str]:
    """The headline sentence of each site, as summary.json holds it (see report/headline.py)."""
    from modalscope.tables import read_summary

    summary = read_summary(outputs.table(SUMMARY).at(out_dir))
    return [entry["headline"] for entry in summary.values() if isinstance(entry.get("headline"), str)]
