"""A study recorded and analysed, without its figures and report: for tests that read only the
store and the tables (the plot and report stages cost a tiny study more than both together)."""

from __future__ import annotations

from modalscope.config import StudyConfig
from modalscope.store import ActivationStore


def extract_and_analyze(config: StudyConfig) -> ActivationStore:
    """`run_study`'s first two stages: DIR/manifest.parquet, the store, DIR/tables."""
    from modalscope.study import analyze_stage, extract_stage, prepare_manifest

    config.validate()
    manifest = prepare_manifest(config)
    store = extract_stage(config, manifest)
    analyze_stage(config, manifest)
    return store
