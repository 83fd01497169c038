"""Stages 4-5, statistics and tables: Δ per input and neuron, per-neuron tests with FDR control,
the layer summaries and their trend, the layer alignment of the two modalities, into DIR/tables.

Why every table is written through the catalogue (outputs.py): an analysis replaces every output
of an earlier one, so the tables it does not write now are found there and removed, never listed
by hand; a table computed from Table 3 (`outputs.derived`) is written here without a line of its own.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from modalscope import outputs
from modalscope.config import StudyConfig
from modalscope.data.manifest import data_counts
from modalscope.folder import study_manifest, study_store
from modalscope.seeds import record as seed_streams
from modalscope.stages.settings import ANALYSIS_FIELDS, update_study_file
from modalscope.store import ActivationStore
from modalscope.tables import (
    ALIGNMENT, INPUT_LAYERS, INPUT_LAYERS_VS_BASE, LAYERS, LAYERS_VS_BASE, LONG_TABLE_AUTO_LIMIT, SIGNIFICANT, SUMMARY,
    TABLE3, long_table_csv, table1_rows, write_frame, write_json, write_long_tables,
)


def analyze_stage(config: StudyConfig, manifest: pd.DataFrame) -> tuple[list[Path], str | None]:
    """Tables 1-3, the layer summary, the layer alignment of the two modalities (alignment.parquet,
    layer_alignment.py) and summary.json into DIR/tables, replacing every output of an earlier
    analysis (a table not written now, or a CSV copy without --csv, is removed).
    Each Parquet table carries the study's settings and versions in its schema metadata;
    summary.json gains per site the headline sentence and where each alignment measure peaks;
    study.json and DIR/study.toml take the analysis settings, its wall time and versions.
    With a random twin recorded (`--control random-twin`), the twin's folder is analysed first with
    the same settings and each site's summary gains its `twin` block (twin.py).

    Returns the paths written and, when Tables 1-2 were left out for size (or a twin cannot be
    compared), a one-line note.
    """
    from modalscope.analysis import run_analysis
    from modalscope.cards.table import TOP_PAIRS, top_pairs_stat, write_top_pairs
    from modalscope.layer_alignment import alignment_summary, run_alignment
    from modalscope.provenance import record_stage, table_provenance
    from modalscope.report.headline import headline
    from modalscope.stats.layer_summary import significance_table

    clock = time.perf_counter()
    twin_paths, twin_summary, twin_note = _analyze_twin(config)  # ([], None, None) without a random twin
    out = config.out_dir
    store = study_store(out)
    contrast = config.contrast_pair
    settings = _analysis_settings(config, store)
    # with text_base recorded, also Δ_base = text - text_base; a bar per site unless --quiet
    result = run_analysis(store, settings, progress=config.progress and sys.stderr.isatty())
    for site, entry in result.summary.items():  # per site (and its Δ_base): pairs left out or cut, the headline
        for trend in (entry, entry.get("vs_base")):
            if trend is not None:
                trend.update(data_counts(out))
                trend["headline"] = headline(site, trend)
    alignment = run_alignment(store, settings, config.alignment_stat)  # where words and pixels meet
    for site, entry in result.summary.items():
        entry["alignment"] = alignment_summary(alignment, site)
    meta = table_provenance(store, " - ".join(contrast), config)

    def table(name: str, frame: pd.DataFrame) -> Path:  # every table at its catalogue path, inside DIR
        return write_frame(frame, outputs.table(name).at(out), config.csv, meta)

    paths = [
        table(TABLE3, result.neurons),
        table(LAYERS, result.layers),
        table(INPUT_LAYERS, result.input_means),
        table(SIGNIFICANT, significance_table(result.layers, store.stats)),
        table(ALIGNMENT, alignment),
        write_json(result.summary, outputs.table(SUMMARY).at(out)),
    ]
    paths += [table(derived.name, derived.build()(result.neurons, store.stats))  # e.g. top_neurons.parquet
              for derived in outputs.derived(TABLE3)]
    if result.vs_base is not None:  # else a previous analysis's Δ_base is removed below (`outputs.stale`)
        paths += [table(LAYERS_VS_BASE, result.vs_base.layers), table(INPUT_LAYERS_VS_BASE, result.vs_base.input_means)]
    paths.append(write_top_pairs(store, outputs.table(TOP_PAIRS).at(out), top_pairs_stat(config.stat, store), contrast,
                                 provenance=meta, csv=config.csv))
    paths, note = _long_tables(config, store, manifest, meta, paths)
    from modalscope.concepts import concept_stage  # concepts.parquet, summary's `concepts`; none without labels
    paths += concept_stage(out, config.csv, meta)
    for old in outputs.stale(out, "analyze", outputs.TABLES, paths):  # an earlier analysis's, not written now
        old.unlink(missing_ok=True)
    if twin_summary is not None:  # each site's `twin` block and the twin sentence of its headline
        from modalscope.tables import read_summary
        from modalscope.twin import add_twin

        summary = outputs.table(SUMMARY).at(out)
        write_json(add_twin(read_summary(summary), twin_summary), summary)
        paths += twin_paths
    note = "\n".join(x for x in (note, twin_note) if x) or None
    record_stage(out, "analyze", time.perf_counter() - clock,
                 {name: getattr(config, name) for name in ANALYSIS_FIELDS}, seeds=seed_streams(settings.seed))
    update_study_file(out, {name: getattr(config, name) for name in ANALYSIS_FIELDS})
    return paths, note


def _analyze_twin(config: StudyConfig) -> tuple[list[Path], dict | None, str | None]:
    """The random twin's analysis (DIR/control/random-twin/tables, the study's settings, Tables 1-2
    left out) when DIR holds a twin of all the study's recorded pairs: (its paths, its summary, None);
    a twin that cannot be compared gives ([], None, one line why); no twin ([], None, None)."""
    from modalscope import twin as twins
    from modalscope.tables import read_summary

    ready, note = twins.analysable(config.out_dir)
    if not ready:
        return [], None, note
    folder = twins.twin_dir(config.out_dir)
    twin_config = replace(config, out_dir=folder, control=None, long_tables="never")
    manifest, _ = study_manifest(folder)
    paths, _ = analyze_stage(twin_config, manifest)  # finds no twin of its own
    return paths, read_summary(outputs.table(SUMMARY).at(folder)), None


def _analysis_settings(config: StudyConfig, store: ActivationStore):
    """The analysis settings of `config` on `store`; one line when the contrast names a stream the
    store did not record. The seed is the store's: the one its inputs were shuffled with."""
    from modalscope.analysis import AnalysisSettings

    missing = [c for c in config.contrast_pair if c not in store.conditions]
    if missing:
        raise ValueError(f"--contrast {config.contrast}: {config.out_dir} did not record "
                         f"{', '.join(missing)} (it has {', '.join(store.conditions)})")
    return AnalysisSettings(contrast=config.contrast_pair, fdr=config.fdr, n_perm=config.n_perm, n_boot=config.n_boot,
                            outlier_factor=config.outlier_factor, seed=int(store.attrs.get("seed", config.seed)),
                            primary=config.primary)


def _long_tables(config: StudyConfig, store: ActivationStore, manifest: pd.DataFrame, meta: dict,
                 paths: list[Path]) -> tuple[list[Path], str | None]:
    """Tables 1-2 when --long-tables allows (their CSV copies with --csv); Tables 1-2 of an
    earlier analysis are removed when not written now (`outputs.stale`), as they would hold another analysis."""
    tables_dir = config.out_dir / outputs.TABLES
    rows = table1_rows(store, config.contrast_pair)
    if config.long_tables == "never" or (config.long_tables == "auto" and rows > LONG_TABLE_AUTO_LIMIT):
        return paths, (f"Tables 1-2 not written ({rows:,} rows); use `modalscope export "
                       f"{config.out_dir} --layers ... --neurons ...` for the part you need")
    long_paths = write_long_tables(store, manifest["pair_id"].tolist(), tables_dir, contrast=config.contrast_pair,
                                   provenance=meta)
    if config.csv:
        long_table_csv(long_paths)
    else:
        for path in long_paths:
            path.with_suffix(".csv").unlink(missing_ok=True)
    return long_paths + paths, None
