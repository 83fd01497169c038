"""Every figure of a study, built from DIR/tables and named by the file it is written to.

Why: `modalscope plot` writes them one file each and the report draws the headline ones in
one page; both take them from here, so a figure in the report is the figure in figures/.
Names (the file stems) are a contract with users: `figure1_{site}`, `figure2_{site}` for
the headline reduction, `figure{1,2}_{site}_{stat}` for each other one, `significant_{site}`,
and, when the study recorded the base LLM's text stream, `figure2_{site}_vs_base`: Figure 2 of
Δ_base = text − text_base (tables/layers_vs_base.parquet, summary.json's `vs_base`); when
Table 3 has the cross-modal columns, `xmodal_r_{site}` (r per layer) and `xmodal_scatter_{site}`
(cohen_d vs xmodal_r per layer) for the headline reduction; `figure3_alignment_{site}`: the
layer alignment of the two modalities (tables/alignment.parquet); `concepts_{site}`: the neurons
selective for each concept from the caption, the image and both, per layer (tables/concepts.parquet,
when the pairs carry concept labels; figures/concepts.py). With the random twin (`--control
random-twin`, twin.py) the figures keep their names and gain its lines (Figures 2 and 3) and its
imagery column (`concepts_{site}`), and `xmodal_share_{site}` draws the cross-modal share per layer
beside the twin's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from modalscope.figures.alignment import figure_alignment
from modalscope.figures.concepts import concept_figures
from modalscope.figures.histograms import figure1
from modalscope.figures.significance import figure_significant
from modalscope.figures.style import contrast_label
from modalscope.figures.trend import figure2
from modalscope.figures.xmodal import (
    SHARE_FIGURE, figure_xmodal_r, figure_xmodal_scatter, figure_xmodal_share, has_xmodal,
)
from modalscope import outputs
from modalscope.outputs import ALIGNMENT_FIGURE, CONCEPTS  # + site: the layer alignment's file stem
from modalscope.stats.columns import VS_BASE, column  # VS_BASE: also the stem suffix of Δ_base's figures
from modalscope.store import STORE
from modalscope.tables import ALIGNMENT, LAYERS, LAYERS_VS_BASE, SIGNIFICANT, SUMMARY, TABLE3, read_summary
from modalscope.top_neurons import unsuffixed

# What StudyTables reads, by attribute, each at its catalogue path (outputs.table): those in NEEDED
# and summary.json must be there, the others are None when absent (an older analysis had no alignment).
READS = {"neurons": TABLE3, "layers": LAYERS, "counts": SIGNIFICANT, "layers_vs_base": LAYERS_VS_BASE,
         "alignment": ALIGNMENT, "concepts": CONCEPTS}
NEEDED = (TABLE3, LAYERS, SIGNIFICANT, SUMMARY)


@dataclass
class StudyTables:
    """What the figures and the report read from DIR/tables."""

    neurons: pd.DataFrame  # Table 3, one row per site x layer x neuron
    layers: pd.DataFrame  # one row per site x layer
    counts: pd.DataFrame  # significant_neurons: site, stat, layer, n_text_preferring, ...
    summary: dict  # summary.json: per site, the layer trend
    layers_vs_base: pd.DataFrame | None = None  # layers_vs_base: Δ_base = text − text_base, if analysed
    alignment: pd.DataFrame | None = None  # alignment.parquet: text vs image per site x layer x measure
    concepts: pd.DataFrame | None = None  # concepts.parquet (concepts.py), when the pairs carry concept labels
    twin: "StudyTables | None" = None  # the random twin's tables (DIR/control/random-twin), when compared

    @classmethod
    def read(cls, out_dir: Path) -> "StudyTables":
        out_dir = Path(out_dir)
        tables = out_dir / outputs.TABLES
        missing = [n for n in NEEDED if not outputs.table(n).at(out_dir).exists()]
        if missing and not (out_dir / STORE).exists():
            raise FileNotFoundError(f"{out_dir}: no study here (no tables, no {STORE}); make one with "
                                    f"`modalscope run --out {out_dir} ...`")
        if missing:
            raise FileNotFoundError(f"{tables}: no {', '.join(missing)}; run `modalscope analyze {out_dir}` first")
        frames = {name: pd.read_parquet(path) if (path := outputs.table(file).at(out_dir)).exists() else None
                  for name, file in READS.items()}
        concepts = frames.pop("concepts")
        read = cls(**frames, summary=read_summary(outputs.table(SUMMARY).at(out_dir)))
        read.check_names(out_dir)
        read.concepts = concepts
        read.twin = cls._twin(out_dir, read.summary)
        return read

    @classmethod
    def _twin(cls, out_dir: Path, summary: dict) -> "StudyTables | None":
        """The random twin's tables, when this analysis compared the study with it (summary.json's
        `twin`) and they are there (`--control random-twin`; twin.py); else None."""
        from modalscope.twin import twin_dir

        if not any(isinstance(entry, dict) and "twin" in entry for entry in summary.values()):
            return None
        try:
            return cls.read(twin_dir(out_dir))
        except FileNotFoundError:
            return None

    def check_names(self, out_dir: Path) -> None:
        """Every site and reduction name the figures turn into file names (and the report into
        links) must be a plain name the store recorded (paths.py): a crafted table naming a site
        `../../tmp/pwn` is refused in one line, before anything is written."""
        from modalscope.models.adapter import SITES
        from modalscope.paths import check_names
        from modalscope.record.reductions import ALL_STATS

        sites, stats = list(SITES), list(ALL_STATS)
        if (out_dir / STORE).exists():
            from modalscope.folder import study_store

            store = study_store(out_dir)
            sites, stats = store.sites, store.stats
        tables = out_dir / outputs.TABLES
        named = [(TABLE3, self.neurons), (LAYERS, self.layers), (SIGNIFICANT, self.counts),
                 (LAYERS_VS_BASE, self.layers_vs_base), (ALIGNMENT, self.alignment)]
        for name, frame in named:
            if frame is not None and "site" in frame.columns:
                check_names(frame["site"].unique().tolist(), "site", sites, tables / name, out_dir)
        check_names(list(self.summary), "site", sites, tables / SUMMARY, out_dir)
        for name, frame in ((SIGNIFICANT, self.counts), (ALIGNMENT, self.alignment)):
            if frame is not None and "stat" in frame.columns:
                check_names(frame["stat"].unique().tolist(), "reduction", stats, tables / name, out_dir)
        for entry in self.summary.values():
            by_stat = entry.get("by_stat") if isinstance(entry, dict) else None
            if isinstance(by_stat, dict):
                check_names(list(by_stat), "reduction", stats, tables / SUMMARY, out_dir)

    @property
    def sites(self) -> list[str]:
        return [str(s) for s in self.neurons["site"].unique()]

    @property
    def stats(self) -> list[str]:
        return [str(s) for s in self.counts["stat"].unique()]

    def check_stat(self, stat: str, out_dir: Path) -> None:
        if stat not in self.stats:
            raise ValueError(f"--stat {stat}: {out_dir} has {', '.join(self.stats)}")

    def neurons_as(self, site: str, stat: str) -> pd.DataFrame:
        """Table 3 of `site` with `stat`'s columns under the report's names (mean_diff, t_value, ...)."""
        return unsuffixed(self.neurons[self.neurons["site"] == site], stat)

    def trend(self, site: str, stat: str) -> dict:
        entry = self.summary[site]
        return entry if stat == "max" else entry["by_stat"][stat]

    def contrast(self, site: str) -> str:
        """'text − image' (or the study's --contrast): the label every figure and the report use."""
        return contrast_label(self.summary[site].get("contrast"))

    def has_vs_base(self, site: str) -> bool:
        """Whether the analysis also measured Δ_base = text − text_base at `site`."""
        return (self.layers_vs_base is not None and "vs_base" in self.summary.get(site, {})
                and site in set(self.layers_vs_base["site"].astype(str)))

    def trend_vs_base(self, site: str, stat: str) -> dict:
        entry = self.summary[site]["vs_base"]
        return entry if stat == "max" else entry["by_stat"][stat]

    def contrast_vs_base(self, site: str) -> str:
        """'text − text_base', as summary.json's `vs_base` entry names it."""
        return contrast_label(self.summary[site]["vs_base"].get("contrast", "text - text_base"))

    def twin_alignment(self, site: str) -> pd.DataFrame | None:
        """The random twin's alignment.parquet, or None."""
        return self.twin.alignment if self.has_twin(site) else None

    def has_twin(self, site: str) -> bool:
        """Whether the random twin was compared at `site` (summary.json's `twin`) and its tables read."""
        return self.twin is not None and "twin" in self.summary.get(site, {}) and site in self.twin.summary

    def twin_layers(self, site: str) -> pd.DataFrame | None:
        """The random twin's layers table (tables/layers.parquet of its folder), or None."""
        return self.twin.layers if self.has_twin(site) else None

    def twin_trends(self, site: str) -> dict[str, dict]:
        """The random twin's trend per reduction at `site` ({} without a twin)."""
        if not self.has_twin(site):
            return {}
        entry = self.twin.summary[site]
        return {"max": entry, **(entry.get("by_stat") or {})}

    def has_alignment(self, site: str) -> bool:
        """Whether the analysis measured the layer alignment at `site` (an older one did not)."""
        return self.alignment is not None and site in set(self.alignment["site"].astype(str))


def comparison(stats: list[str], shown: str) -> str | None:
    """The reduction drawn beside `shown` in the headline Figure 2: max <-> matched_max."""
    pair = [s for s in ("max", "matched_max") if s in stats and s != shown]
    return pair[0] if pair else None


def headline_figures(tables: StudyTables, site: str, stat: str) -> dict[str, go.Figure]:
    """Figure 2 (with its controls), Figure 1 and the significant counts of one site."""
    compare = comparison(tables.stats, stat)
    contrast = tables.contrast(site)
    return {**xmodal_figures(tables, site, stat), 
        f"figure2_{site}": figure2(tables.layers, tables.trend(site, stat), site, stat, compare,
                                   tables.trend(site, compare) if compare else None, contrast,
                                   tables.twin_layers(site), tables.twin_trends(site)),
        f"figure1_{site}": figure1(tables.neurons_as(site, stat), site, stat=stat, contrast=contrast),
        f"significant_{site}": figure_significant(
            tables.counts, site, [s for s in ("max", "matched_max") if s in tables.stats] or tables.stats[:1],
            contrast),
    }


def xmodal_figures(tables: StudyTables, site: str, stat: str) -> dict[str, go.Figure]:
    """The cross-modal figures of one site for reduction `stat` ({} for a study analysed before
    Table 3 had xmodal_r)."""
    neurons = tables.neurons_as(site, stat)
    if not has_xmodal(neurons):
        return {}
    figures = {f"xmodal_r_{site}": figure_xmodal_r(neurons, site, stat, tables.contrast(site)),
               f"xmodal_scatter_{site}": figure_xmodal_scatter(neurons, site, stat, tables.contrast(site))}
    twin = tables.twin_layers(site)  # with the random twin: the share per layer beside the twin's
    if twin is not None and column("xmodal_share", stat) in tables.layers.columns:
        figures[f"{SHARE_FIGURE}{site}"] = figure_xmodal_share(tables.layers, site, stat, twin, tables.contrast(site))
    return figures


def figure2_vs_base(tables: StudyTables, site: str, stat: str) -> go.Figure:
    """Figure 2 of Δ_base = text − text_base at `site`, reduction `stat`: layer mean with its
    bands, the sign-flip null and the regression, labelled by that contrast."""
    return figure2(tables.layers_vs_base, tables.trend_vs_base(site, stat), site, stat, None, None,
                   tables.contrast_vs_base(site))


def study_figures(tables: StudyTables, stat: str = "max") -> dict[str, go.Figure]:
    """All figures of the study by file stem; `stat` leads the unsuffixed ones."""
    figures: dict[str, go.Figure] = {}
    for site in tables.sites:
        headline = headline_figures(tables, site, stat)
        contrast = tables.contrast(site)
        for shown in tables.stats:
            if shown == stat:
                figures[f"figure1_{site}"] = headline[f"figure1_{site}"]
                figures[f"figure2_{site}"] = headline[f"figure2_{site}"]
                continue
            figures[f"figure1_{site}_{shown}"] = figure1(tables.neurons_as(site, shown), site, stat=shown,
                                                         contrast=contrast)
            figures[f"figure2_{site}_{shown}"] = figure2(tables.layers, tables.trend(site, shown), site, shown,
                                                         None, None, contrast, tables.twin_layers(site),
                                                         tables.twin_trends(site))
        figures[f"significant_{site}"] = headline[f"significant_{site}"]
        figures.update({name: fig for name, fig in headline.items() if name.startswith("xmodal_")})
        if tables.has_vs_base(site):
            figures[f"figure2_{site}{VS_BASE}"] = figure2_vs_base(tables, site, stat)
        if tables.has_alignment(site):
            figures[f"{ALIGNMENT_FIGURE}{site}"] = figure_alignment(tables.alignment, site, tables.twin_alignment(site))
    twin = tables.twin
    figures.update(concept_figures(tables.concepts, tables.summary, tables.sites, stat,  # {} without concepts
                                   twin.concepts if twin is not None else None,
                                   twin.summary if twin is not None else None))
    return figures
