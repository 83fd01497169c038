"""The study, top to bottom, as the report's method section reads (each step is a module of stages/).

1. Pairs (stages/pairs.py): image-caption pairs, shuffled once with the seed into
   `manifest.parquet` and reused; pairs that cannot be used in either condition are listed in
   `skipped.parquet`.
2. Inputs (stages/recording.py): each pair once per recorded stream: the caption alone and the
   image alone with a minimal prompt, plus the image with its caption and, with --base-model, the
   caption through the base language model, when asked for.
3. Recording (stages/extract.py): every neuron of every decoder layer, reduced over tokens on the
   device (max, mean, the length-matched max, a quantile, the fraction active: --stats), stored per
   input in `activations.zarr`; with --control random-twin also through the re-initialised model.
4. Statistics (stages/analyze.py): Δ = A - B of the contrast (text - image by default) per input,
   neuron and reduction; per neuron mean Δ, sd, t with its p, BH/BY q, Cohen's d_z; per layer the
   mean with its intervals and its trend; the layer alignment of the two modalities; concepts.
5. Tables and figures (stages/analyze.py, stages/plot.py): Tables 1-3 and the others of
   outputs.CATALOGUE; Figure 1 (histograms per layer), Figure 2 (layer trend with its controls),
   Figure 3 (layer alignment), the significant counts, the cross-modal and concept figures.
6. The report (stages/report.py): DIR/report.html, the study on one offline page.

Each stage reads what the previous one wrote in DIR (outputs.py catalogues every file), so
`extract`, `analyze`, `plot`, `report` and `export` also run alone on an existing study folder.
This module keeps the names the command line, the tests and users' scripts import from it.
"""

from __future__ import annotations

from modalscope.provenance import LIBRARIES, library_versions
from modalscope.results import StudyResult  # what run_study returns (its tables read lazily)
from modalscope.stages.analyze import analyze_stage
from modalscope.stages.checks import (
    SUMMARY_VS_PROVENANCE, analysis_manifest, check_manifest, extraction_complete, extraction_note, mixed_tables,
)
from modalscope.stages.export import export_stage
from modalscope.stages.extract import extract_stage, record_twin
from modalscope.stages.loading import load_base, load_vlm, weights_problem
from modalscope.stages.pairs import check_manifest_request, prepare_manifest, prepare_manifest_ranked, read_pairs
from modalscope.stages.plot import plot_stage
from modalscope.stages.recording import Recording, RecordingPlan, store_attributes
from modalscope.stages.report import report_stage
from modalscope.stages.run import Interrupted, run_study, study_headlines
from modalscope.stages.settings import (
    ANALYSIS_FIELDS, DATA_KEYS, EXTRACT_KEEPS, PLOT_FIELDS, update_study_file, write_study_file,
)

_load_vlm = load_vlm  # the name tests patched before the split (patch modalscope.stages.extract.load_vlm)

__all__ = [
    "ANALYSIS_FIELDS", "DATA_KEYS", "EXTRACT_KEEPS", "LIBRARIES", "PLOT_FIELDS", "SUMMARY_VS_PROVENANCE",
    "Interrupted", "Recording", "RecordingPlan", "StudyResult", "analysis_manifest", "analyze_stage",
    "check_manifest", "check_manifest_request", "export_stage", "extract_stage", "extraction_complete",
    "extraction_note", "library_versions", "load_base", "load_vlm", "mixed_tables", "plot_stage",
    "prepare_manifest", "prepare_manifest_ranked", "read_pairs", "record_twin", "report_stage", "run_study",
    "store_attributes", "study_headlines", "update_study_file", "weights_problem", "write_study_file",
]
