"""The `report` stage: DIR/report.html, the study on one offline page (report/ lays it out)."""

from __future__ import annotations

from pathlib import Path

from modalscope.stages.checks import check_manifest, mixed_tables


def report_stage(out_dir: Path, stat: str | None = None) -> Path:
    """DIR/report.html: provenance, the headline figures with their controls, significant
    counts, the strongest neurons each way and links to every table, in one offline page.
    `stat` (the reduction it leads with) defaults to the one DIR/study.json recorded."""
    from modalscope.report import write_report

    check_manifest(out_dir)
    mixed = mixed_tables(out_dir)
    if mixed:
        raise ValueError(mixed)
    if stat is None:
        from modalscope.provenance import read_study_json

        stat = read_study_json(out_dir).get("config", {}).get("stat", "max")
    return write_report(out_dir, stat)


