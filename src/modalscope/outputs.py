"""The catalogue of a study folder's outputs: every file DIR holds, the stage that writes it, one
line on what it is, and the function that builds it.

Why: DIR is the interface between the stages (`extract` writes what `analyze` reads, `analyze` what
`plot` and `report` read), and its layout used to be spelled out by hand in each of them, so a new
table touched every module that listed, linked, described, removed or read tables. Now an output is
its builder plus one entry here, and everything that needs to know the folder's contents derives it:

* the stages write to `at(DIR, ...)` of their entries (`check_inside`: never outside DIR);
* the report's file list describes each file by its entry (`describe`);
* `plot` owns, and so may remove, exactly the figure files of the entries of stage `plot`
  (`owned`), and `analyze` removes the tables of an earlier analysis that it did not write now
  (`stale`);
* `StudyTables.read`, `StudyResult` and the neuron cards read the tables at their entries' paths;
* tests/test_outputs_catalogue.py checks that a real study writes nothing uncatalogued and every
  entry a study always writes.

A path is relative to DIR and may hold fields: `{site}`, `{stat}` (a reduction), `{name}` (an
export's --name suffix), `{layer}`, `{neuron}`. A folder entry (`folder=True`) owns every file
under it (the zarr store, the random twin's own study folder). The names of the tables and the
store stay with the light modules that have always exported them (`tables.TABLE3`,
`data.manifest.MANIFEST`, `store.STORE`, ...), imported here; the others are spelled here once and
their old homes import them (`twin.TWIN_FOLDER`, `lock.LOCK_NAME`, `record.extract.NONFINITE`,
`ablation.run.TABLE`, ...: still importable there, a contract with users' scripts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from modalscope.cards.table import TOP_PAIRS
from modalscope.data.manifest import MANIFEST, SKIPPED, TRUNCATED
from modalscope.paths import check_inside
from modalscope.stats.columns import VS_BASE
from modalscope.store import STORE
from modalscope.tables import (
    ALIGNMENT, INPUT_LAYERS, INPUT_LAYERS_VS_BASE, LAYERS, LAYERS_VS_BASE, SIGNIFICANT, SUMMARY, TABLE1, TABLE2,
    TABLE3,
)

TABLES, FIGURES, CARDS = "tables", "figures", "cards"  # DIR's folders of outputs
STUDY_JSON, STUDY_TOML, REPORT = "study.json", "study.toml", "report.html"
CONCEPTS = "concepts.parquet"  # also concepts.CONCEPTS
TWIN = "control/random-twin"  # also twin.TWIN_FOLDER (a Path)
NONFINITE = "nonfinite.parquet"  # also record.extract.NONFINITE
SHARDS = "shards"  # also record.distributed.SHARDS
ABLATION, ABLATION_SETS, ABLATION_FIGURE = "ablation.parquet", "ablation_sets.parquet", "ablation"  # also ablation.run TABLE, MEMBERS, FIGURE
ABLATION_PROGRESS = "ablation/progress.npz"  # also ablation.progress.PROGRESS (a Path)
LOCK = ".modalscope.lock"  # also lock.LOCK_NAME
PLOTLYJS = "plotly.min.js"  # also figures.export.PLOTLYJS
# Figure file stems (+ site): the figures' names, as plot writes them and the report links them.
ALIGNMENT_FIGURE = "figure3_alignment_"
SHARE_FIGURE = "xmodal_share_"  # also figures.xmodal.SHARE_FIGURE
CSV, IMAGES = (".csv",), (".png", ".svg")  # the copies beside a table (--csv), a figure (a browser)


@dataclass(frozen=True)
class Output:
    """One output of DIR (see the module's docstring)."""

    path: str  # relative to DIR, with {fields}
    stage: str  # the command that writes it: extract, analyze, plot, report, export, neuron, ablate, run
    what: str  # one line, as the report's file list says it ({fields} filled in)
    builder: str  # "module:function": what builds it
    when: str = ""  # "": every study writes it; else when it does
    copies: tuple[str, ...] = ()  # suffixes of the copies written beside it
    folder: bool = False  # owns every file under it
    source: str = ""  # a table computed from another one, `builder(frame, stats)`: that table's name

    def build(self):
        """The builder function itself (imported when asked for: the catalogue stays light)."""
        from importlib import import_module

        module, _, name = self.builder.partition(":")
        found = import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
        return found

    @property
    def always(self) -> bool:
        """Whether every study (`modalscope run` with its defaults) writes it."""
        return not self.when

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def at(self, out_dir: Path | str, **fields: object) -> Path:
        """Its path in the study folder `out_dir` (refused when it would resolve outside DIR)."""
        return check_inside(Path(out_dir) / self.path.format(**fields), out_dir)

    def fields(self, relative: str) -> dict[str, str] | None:
        """The fields of `relative` (a path relative to DIR) when it is this output or one of its
        copies, else None."""
        if self.folder:
            return {} if relative == self.path or relative.startswith(self.path + "/") else None
        for suffix in ("", *self.copies):
            stem = self.path.rsplit(".", 1)[0] if suffix else self.path
            if suffix and not relative.endswith(suffix):
                continue
            found = _pattern(stem + suffix).fullmatch(relative)
            if found:
                return found.groupdict()
        return None


FIELDS = {"site": r"[A-Za-z0-9_]+?", "stat": r"[A-Za-z0-9_]+", "name": r"[A-Za-z0-9_.-]*", "layer": r"\d+",
          "neuron": r"\d+"}


def _pattern(path: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", path)
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{FIELDS[p]})" for i, p in enumerate(parts)))


def _table(name: str, what: str, builder: str, when: str = "", stage: str = "analyze", source: str = "") -> Output:
    return Output(f"{TABLES}/{name}", stage, what, builder, when, CSV, source=source)


def _figure(stem: str, what: str, builder: str, when: str = "") -> Output:
    return Output(f"{FIGURES}/{stem}.html", "plot", what, builder, when, IMAGES)


BASE, LONG = "with --base-model (the text_base stream)", "when --long-tables allows (auto: up to 50 M rows)"
LABELS, WITH_TWIN = "when the pairs carry concept labels", "with --control random-twin"
A = "modalscope.figures.assemble"
CATALOGUE: tuple[Output, ...] = (
    # The pairs and the recording (`extract`; `run` starts with it)
    Output(MANIFEST, "extract", "the shuffled pairs (row i is input i)", "modalscope.data.manifest:save_manifest"),
    Output(SKIPPED, "extract", "pairs left out, with the reason", "modalscope.data.manifest:save_skipped"),
    Output(TRUNCATED, "extract", "captions cut to fit the model's context",
           "modalscope.record.inputs:PromptBuilder.truncations"),
    Output(STORE, "extract", "every neuron's reduced activations per input (zarr)",
           "modalscope.stages.recording:Recording.run", folder=True),
    Output(NONFINITE, "extract", "inputs whose activations were NaN/inf (the extraction stopped)",
           "modalscope.record.extract:extract", "only when a forward gave NaN/inf"),
    Output(SHARDS, "extract", "each rank's part of the store before the merge",
           "modalscope.stages.recording:Recording.run_sharded", "under torchrun", folder=True),
    Output(TWIN, "extract", "the random twin's own study folder: its manifest, store and tables",
           "modalscope.stages.extract:record_twin", WITH_TWIN, folder=True),
    Output(STUDY_TOML, "extract", "every setting: `modalscope run --config study.toml --out NEW` repeats the study",
           "modalscope.stages.settings:write_study_file"),
    Output(STUDY_JSON, "extract", "config, versions and wall time of each stage", "modalscope.provenance:record_stage"),
    Output(LOCK, "run", "who holds the folder now (removed when the command ends)", "modalscope.lock:study_lock",
           "while a command runs"),
    # The statistics (`analyze`)
    _table(TABLE3, "Table 3: per neuron n, mean Δ, sd, t, p, q, d_z, p_perm (every reduction)",
           "modalscope.analysis:run_analysis"),
    _table(LAYERS, "per site × layer: mean Δ, 95% CIs over neurons and inputs, null band, counts",
           "modalscope.analysis:run_analysis"),
    _table(INPUT_LAYERS, "per input: the layer mean of Δ (the input-level unit)", "modalscope.analysis:run_analysis"),
    _table(SIGNIFICANT, "FDR-significant neurons per site × reduction × layer × direction",
           "modalscope.stats.layer_summary:significance_table"),
    _table(ALIGNMENT, "per site × layer × measure: CKA, mutual k-NN, retrieval of text vs image, CI, null band, p",
           "modalscope.layer_alignment:run_alignment"),
    _table(TOP_PAIRS, "per neuron and stream: the 8 pairs with the highest response (the neuron cards)",
           "modalscope.cards.table:write_top_pairs"),
    _table("top_neurons.parquet", "per site × reduction × direction: the 20 neurons with the largest |t| (the "
           "report's lists)", "modalscope.top_neurons:top_neurons_table", source=TABLE3),
    _table(LAYERS_VS_BASE, "per site × layer: the same for Δ_base = text − text_base (the base LLM)",
           "modalscope.analysis:run_analysis", BASE),
    _table(INPUT_LAYERS_VS_BASE, "per input: the layer mean of Δ_base = text − text_base",
           "modalscope.analysis:run_analysis", BASE),
    _table(CONCEPTS, "per site × layer × neuron × concept: AUROC of caption and image, q",
           "modalscope.concepts:concept_stage", LABELS),
    _table(TABLE1, "Table 1: one row per input × modality × site × layer × neuron",
           "modalscope.tables:write_long_tables", LONG),
    _table(TABLE2, "Table 2: Δ per input × site × layer × neuron", "modalscope.tables:write_long_tables", LONG),
    Output(f"{TABLES}/{SUMMARY}", "analyze", "per site: the layer trend with bootstrap CI and sign-flip p",
           "modalscope.analysis:run_analysis"),
    # The figures (`plot`) and the report (`report`; `plot` ends with it)
    Output(f"{FIGURES}/{PLOTLYJS}", "plot", "plotly.js, read by every figure's HTML beside it",
           "modalscope.figures.export:write_plotlyjs"),
    _figure("figure1_{site}", "Figure 1 (distributions per layer), site {site}, reduction {stat}", f"{A}:figure1"),
    _figure("figure1_{site}_{stat}", "Figure 1 (distributions per layer), site {site}, reduction {stat}",
            f"{A}:figure1"),
    _figure("figure2_{site}", "Figure 2 (layer trend), site {site}, reduction {stat}", f"{A}:figure2"),
    _figure(f"figure2_{{site}}{VS_BASE}", "Figure 2 (layer trend) of Δ_base = text − text_base, site {site}, "
            "reduction {stat}", f"{A}:figure2_vs_base", BASE),
    _figure("figure2_{site}_{stat}", "Figure 2 (layer trend), site {site}, reduction {stat}", f"{A}:figure2"),
    _figure("significant_{site}", "significant neurons per layer, site {site}", f"{A}:figure_significant"),
    _figure("xmodal_r_{site}", "cross-modal r per layer, site {site}, reduction {stat}", f"{A}:figure_xmodal_r"),
    _figure("xmodal_scatter_{site}", "cohen_d vs cross-modal r per layer, site {site}, reduction {stat}",
            f"{A}:figure_xmodal_scatter"),
    _figure(SHARE_FIGURE + "{site}", "share of cross-modal neurons per layer beside the random twin's, site {site}, "
            "reduction {stat}", f"{A}:figure_xmodal_share", WITH_TWIN),
    _figure(ALIGNMENT_FIGURE + "{site}", "Figure 3 (layer alignment of the two modalities), site {site}",
            f"{A}:figure_alignment"),
    _figure("concepts_{site}", "neurons selective for each concept per layer, site {site}, reduction {stat}",
            "modalscope.figures.concepts:concept_figures", LABELS),
    Output(REPORT, "report", "the study on one offline page", "modalscope.report.page:write_report"),
    # On request
    _table("table1_activations{name}.parquet", "Table 1 of chosen sites, layers and neurons",
           "modalscope.tables:write_long_tables", "`modalscope export`", "export"),
    _table("table2_differences{name}.parquet", "Table 2 of chosen sites, layers and neurons",
           "modalscope.tables:write_long_tables", "`modalscope export`", "export"),
    Output(f"{CARDS}/{{site}}_layer{{layer}}_neuron{{neuron}}.html", "neuron", "one neuron's card",
           "modalscope.cards.card:card_page", "`modalscope neuron`"),
    _table(ABLATION, "per neuron set × readout: the effect of ablating it, against random sets",
           "modalscope.ablation.run:run_ablation", "`modalscope ablate` (or [ablation])", "ablate"),
    _table(ABLATION_SETS, "the ablated sets' neurons (usable as --sets FILE)", "modalscope.ablation.run:run_ablation",
           "`modalscope ablate` (or [ablation])", "ablate"),
    Output(f"{FIGURES}/{ABLATION_FIGURE}.html", "ablate", "the ablation's effects against random sets",
           "modalscope.ablation.run:run_ablation", "`modalscope ablate` (or [ablation])", IMAGES),
    Output(ABLATION_PROGRESS, "ablate", "the ablation's readouts so far (resume)", "modalscope.ablation.progress:save",
           "while `modalscope ablate` runs"),
)
_BY_PATH = {entry.path: entry for entry in CATALOGUE}


def entry(path: str) -> Output:
    """The catalogue's entry of `path` (relative to DIR, fields unfilled: 'tables/layers.parquet')."""
    return _BY_PATH[path]


def table(name: str) -> Output:
    """The entry of tables/`name`."""
    return _BY_PATH[f"{TABLES}/{name}"]


def matches(relative: str) -> list[tuple[Output, dict[str, str]]]:
    """Every (entry, its fields) that a path relative to DIR ('figures/figure2_mlp_mean.html')
    can be, in catalogue order ([] for a file no stage writes): 'figure1_mlp_mean' is Figure 1 of
    site mlp_mean or of site mlp, reduction mean; the sites of the study decide (`describe`)."""
    return [(e, f) for e in CATALOGUE if (f := e.fields(relative)) is not None]


def match(relative: str) -> tuple[Output, dict[str, str]] | None:
    """The first of `matches(relative)`, or None."""
    found = matches(relative)
    return found[0] if found else None


def describe(relative: str, sites: list[str] | None = None, stat: str = "max") -> str:
    """The report's line on a file of DIR ('' when not catalogued or of a site not in `sites`);
    a copy is a 'CSV copy', a file of the random twin's folder says so."""
    if relative.startswith(TWIN + "/"):
        inner = describe(relative.removeprefix(TWIN + "/"), sites, stat)
        return f"random twin: {inner}" if inner and inner != "CSV copy" else inner
    for output, fields in matches(relative):
        if sites is not None and "site" in fields and fields["site"] not in sites:
            continue
        if relative.endswith(".csv") and not output.path.endswith(".csv"):
            return "CSV copy"
        return output.what.format(**{"stat": stat, **fields})
    return ""


def derived(source: str) -> list[Output]:
    """The tables computed from table `source` (`Output.source`), which `analyze` writes after it."""
    return [e for e in CATALOGUE if e.source == source]


def owned(out_dir: Path, stage: str, folder: str) -> list[Path]:
    """The files of DIR/`folder` that `stage` writes (its entries and their copies), so that a rerun
    of the stage can remove those it did not write again; anything else there is never touched."""
    where = Path(out_dir) / folder
    if not where.is_dir():
        return []
    entries = [e for e in CATALOGUE if e.stage == stage and not e.folder]
    return sorted(p for p in where.iterdir() if p.is_file() and not p.name.startswith(".")
                  and any(e.fields(f"{folder}/{p.name}") is not None for e in entries))


def stale(out_dir: Path, stage: str, folder: str, written: list[Path]) -> list[Path]:
    """The files of `stage` in DIR/`folder` that it did not write now (nor their copies)."""
    kept = {Path(p).with_suffix("") for p in written}
    return [p for p in owned(out_dir, stage, folder) if p.with_suffix("") not in kept]
