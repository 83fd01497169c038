"""Concept neurons per layer and concept: selective from the caption, from the image, and both.

Why: the imagery neurons (concepts.py) are a count per layer and concept; three heatmaps side by
side show where in depth each concept is read from the caption, from the image, and from both
in the same direction, and the title puts the total beside what shuffled concept labels give.
File stem: `concepts_{site}` (tables/concepts.parquet, summary.json's `concepts`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from modalscope.figures.style import LAYER_AXIS, apply_layout, format_p, layer_ticks

FIGURE = "concepts_"  # + site: the file stem
PANELS = (("q_text", "from the caption (q < 0.05)"), ("q_image", "from the image (q < 0.05)"),
          ("agree", "imagery: both, same direction"))
SCALES = ("Blues", "Oranges", "Greens")


def counts(frame: pd.DataFrame, column: str, layers: list[int], concepts: list[str], alpha: float = 0.05) -> np.ndarray:
    """[layer, concept] neurons selective in `column` (a q column: q < alpha; `agree`: True)."""
    hit = frame[column] if column == "agree" else frame[column] < alpha
    table = frame[hit.to_numpy(bool)].groupby(["layer", "concept"]).size()
    return table.unstack(fill_value=0).reindex(index=layers, columns=concepts, fill_value=0).to_numpy()


TWIN_PANEL = ("agree", "imagery: random twin")  # the fourth column, with --control random-twin


def figure_concepts(frame: pd.DataFrame, entry: dict, site: str, stat: str = "max",
                    twin_frame: pd.DataFrame | None = None, twin_entry: dict | None = None) -> go.Figure:
    """`frame`: concepts.parquet rows of `site` and reduction `stat`; `entry`: summary.json's
    `concepts` of the site for that reduction (its counts and shuffled-label null). With the random
    twin's rows and entry (--control random-twin), a fourth column: its imagery neurons per layer and
    concept, on the same colour scale as the model's, its total in the title."""
    alpha = float(entry.get("alpha", 0.05))
    layers = list(range(int(frame["layer"].max()) + 1)) if len(frame) else [0]
    by_concept = entry.get("by_concept", {})
    concepts = list(by_concept) or sorted(frame["concept"].unique())
    chance = np.array([by_concept.get(c, {}).get("overlap_expected", np.nan) for c in concepts], dtype=float)
    panels, scales = PANELS, SCALES
    twin_by = (twin_entry or {}).get("by_concept", {})
    twin_chance = np.array([twin_by.get(c, {}).get("overlap_expected", np.nan) for c in concepts], dtype=float)
    if twin_frame is not None:
        panels, scales = (*PANELS, TWIN_PANEL), (*SCALES, "Greys")
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[title for _, title in panels])
    numbers = len(layers) * len(concepts) <= 400  # the counts written in the cells while they fit
    agree_max = int(counts(frame, "agree", layers, concepts, alpha).max(initial=0))
    for col, ((column, title), scale) in enumerate(zip(panels, scales), start=1):
        twin_panel = col == 4
        z = counts(twin_frame if twin_panel else frame, column, layers, concepts, alpha)
        hover = f"<b>%{{x}}</b>, layer %{{y}}<br>{title}: %{{z}} neurons"
        if column == "agree":  # the concept's chance count over all layers (overlap null)
            hover += "<br>all layers, by chance: %{customdata:.1f}"
        same = dict(zmax=max(agree_max, int(z.max(initial=0)), 1)) if column == "agree" and twin_frame is not None \
            else {}  # the model's imagery and the twin's on one scale
        fig.add_trace(go.Heatmap(
            z=z, x=concepts, y=layers, colorscale=scale, zmin=0, showscale=False, **same,
            text=z if numbers else None, texttemplate="%{text}" if numbers else None,
            customdata=np.broadcast_to(twin_chance if twin_panel else chance, z.shape),
            hovertemplate=hover + "<extra></extra>"),
            row=1, col=col)
    total = int(entry.get("n_imagery_total", 0))
    floor = 1.0 / (int(entry.get("n_shuffles", 0)) + 1) if entry.get("n_shuffles") else None
    null, chance = entry.get("null_mean", float("nan")), entry.get("overlap_expected", float("nan"))
    title = (f"{site} ({stat}): neurons selective for a concept, per layer<br><sup>imagery neurons: {total:,}; "
             f"shuffled labels give {null:.1f} (p {_p(entry.get('p_null'), floor)}); unrelated caption and image "
             f"sets give {chance:.1f} (p {_p(entry.get('p_overlap'))})"
             + (f"; the random twin has {int((twin_entry or {}).get('n_imagery_total', 0)):,}"
                if twin_frame is not None else "") + "</sup>")
    width = max(1100, 200 + len(panels) * 22 * len(concepts))  # a readable column per concept
    apply_layout(fig, title, height=max(450, 160 + 22 * len(layers)), width=width if width > 1100 else None,
                 margin=dict(t=120, b=110))
    fig.update_yaxes(title_text=LAYER_AXIS, row=1, col=1, **layer_ticks(len(layers)))
    fig.update_xaxes(tickangle=-90, tickfont=dict(size=11))
    return fig


def _p(p: object, floor: float | None = None) -> str:
    """'= 0.0312', or '≤ 0.0099' at a permutation p's floor (format_p)."""
    text = format_p(p, floor)
    return text if text.startswith("≤") else f"= {text}"


def concept_figures(concepts: pd.DataFrame | None, summary: dict, sites: list[str], stat: str = "max",
                    twin_concepts: pd.DataFrame | None = None, twin_summary: dict | None = None
                    ) -> dict[str, go.Figure]:
    """{`concepts_{site}`: figure} for the sites with concept results (reduction `stat` when
    tested, else the one summary.json leads with); {} without concepts.parquet. With the random
    twin's concepts.parquet and summary (--control random-twin), its imagery column beside them."""
    figures: dict[str, go.Figure] = {}
    if concepts is None:
        return figures
    for site in sites:
        entry = summary.get(site, {}).get("concepts") if isinstance(summary.get(site), dict) else None
        if not isinstance(entry, dict):
            continue
        shown = stat if stat in (entry.get("by_stat") or {}) else entry.get("stat", "max")
        chosen = entry if shown == entry.get("stat", "max") else entry["by_stat"][shown]
        rows = concepts[(concepts["site"].astype(str) == site) & (concepts["stat"].astype(str) == shown)]
        twin_rows, twin_entry = _twin_part(twin_concepts, twin_summary, site, shown)
        figures[f"{FIGURE}{site}"] = figure_concepts(rows, chosen, site, shown, twin_rows, twin_entry)
    return figures


def _twin_part(concepts: pd.DataFrame | None, summary: dict | None, site: str,
               stat: str) -> tuple[pd.DataFrame | None, dict | None]:
    """The random twin's concepts.parquet rows and summary entry of `site` and `stat`, or (None, None)."""
    entry = (summary or {}).get(site, {}).get("concepts") if isinstance((summary or {}).get(site), dict) else None
    if concepts is None or not isinstance(entry, dict):
        return None, None
    chosen = entry if stat == entry.get("stat", "max") else (entry.get("by_stat") or {}).get(stat)
    if chosen is None:
        return None, None
    return concepts[(concepts["site"].astype(str) == site) & (concepts["stat"].astype(str) == stat)], chosen

