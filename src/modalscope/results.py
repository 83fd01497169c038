"""What a study hands back to Python: the paths it wrote, and the tables a notebook wants.

Why here and lazily: `run_study` returns a `StudyResult` whether or not anyone reads its
tables, and Table 3 of a 7B study is large; a table is read from DIR the first time it is
asked for, and `StudyResult.open(DIR)` gives the same object for a study made earlier (or by
the command line). `significant` is the README's "which neurons prefer text?" in one call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from modalscope.stats.columns import column
from modalscope.stats.fdr import ALPHA
from modalscope import outputs
from modalscope.tables import LAYERS, SUMMARY, TABLE3


@dataclass
class StudyResult:
    out_dir: Path
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    report: Path | None = None
    messages: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def open(cls, out_dir: str | Path) -> "StudyResult":
        """The result of the analysed study in `out_dir` (its tables must exist)."""
        out_dir = Path(out_dir)
        if not outputs.table(TABLE3).at(out_dir).exists():
            raise FileNotFoundError(f"{out_dir}: no {outputs.table(TABLE3).path}; run `modalscope analyze {out_dir}` first")
        report = out_dir / outputs.REPORT
        return cls(out_dir=out_dir, tables=sorted((out_dir / outputs.TABLES).glob("*.parquet")),
                   figures=sorted((out_dir / outputs.FIGURES).glob("*.html")), report=report if report.exists() else None)

    @cached_property
    def neurons(self) -> pd.DataFrame:
        """Table 3: one row per site, layer and neuron (read from DIR when first asked for)."""
        return pd.read_parquet(outputs.table(TABLE3).at(self.out_dir))

    @cached_property
    def layers(self) -> pd.DataFrame:
        """The layer table: one row per site and layer."""
        return pd.read_parquet(outputs.table(LAYERS).at(self.out_dir))

    @cached_property
    def summary(self) -> dict:
        """summary.json: per site the layer trends, their headline sentence, the FDR plan."""
        return json.loads(outputs.table(SUMMARY).at(self.out_dir).read_text(encoding="utf-8"))

    @cached_property
    def twin(self) -> "StudyResult | None":
        """The random twin's study (`--control random-twin`: the same inputs through the model
        re-initialised, twin.py), as a StudyResult of its own folder DIR/control/random-twin, so
        `result.twin.neurons` is its Table 3 and `result.twin.significant(...)` its calls; None
        when the study has no analysed twin."""
        folder = self.out_dir / outputs.TWIN
        return StudyResult.open(folder) if outputs.table(TABLE3).at(folder).exists() else None

    def significant(self, site: str, layer: int | None = None, direction: str | None = None,
                    stat: str = "max", q: str = "q_value") -> pd.DataFrame:
        """The neurons of `site` (and `layer`) with q < 0.05 on reduction `stat`, strongest first.

        `direction`: the contrast's first side (e.g. "text": mean Δ > 0), its second ("image":
        mean Δ < 0), or None for both (by |t|). `q`: "q_value" (BH within the family) or "q_hier"
        (the study's multiplicity plan; docs/method.md §4)."""
        rows = self.neurons[self.neurons["site"] == site]
        if rows.empty:
            raise ValueError(f"site {site!r}: the study has {', '.join(sorted(self.neurons['site'].unique()))}")
        if layer is not None:
            rows = rows[rows["layer"] == layer]
        q_col, diff, t = column(q, stat), column("mean_diff", stat), column("t_value", stat)
        if q_col not in rows:
            raise ValueError(f"{q_col}: not a column of Table 3 (stat {stat!r}, q {q!r})")
        first, second = (s.strip() for s in str(rows["contrast"].iloc[0]).split(" - ", 1)) \
            if "contrast" in rows and len(rows) else ("text", "image")
        hits = rows[rows[q_col] < ALPHA]
        if direction is None:
            return hits.reindex(hits[t].abs().sort_values(ascending=False).index)
        if direction not in (first, second):
            raise ValueError(f"direction {direction!r}: choose {first!r} (Δ > 0), {second!r} (Δ < 0) or None")
        if direction == first:
            return hits[hits[diff] > 0].sort_values(t, ascending=False)
        return hits[hits[diff] < 0].sort_values(t)
