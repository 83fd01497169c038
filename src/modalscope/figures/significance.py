"""Counts of FDR-significant neurons per layer and direction.

Why: a layer mean can hide two opposite populations; counting neurons with q < 0.05 that
prefer text (Δ > 0, drawn up) and image (Δ < 0, drawn down) shows whether a layer is
mixed or one-sided. Each reduction is a colour pair, so max and matched_max sit side by side.
Under another `--contrast` A − B, the directions are named "A > B" (up) and "B > A" (down).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from modalscope.figures.style import (
    DEFAULT_CONTRAST, DIRECTION_PAIRS, LAYER_AXIS, apply_layout, layer_ticks, preferring,
)

# Okabe-Ito, safe for colour-blind readers: (text, image) per reduction.
COLOURS = DIRECTION_PAIRS
# A hatch per reduction, so the reductions differ in more than colour.
PATTERNS = ["", "/", ".", "x", "-"]


def figure_significant(
    counts: pd.DataFrame, site: str, stats: list[str], contrast: str = DEFAULT_CONTRAST
) -> go.Figure:
    """`counts` is significant_neurons.parquet: site, stat, layer, n_text_preferring, ...;
    `contrast` ('text − image') names the directions: Δ > 0 up, Δ < 0 down."""
    rows = counts[counts["site"] == site]
    up, down = preferring(contrast)
    fig = go.Figure()
    for k, ((text_colour, image_colour), stat) in enumerate(zip(COLOURS, stats)):
        part = rows[rows["stat"] == stat].sort_values("layer")
        total = part["n_neurons"].to_numpy(float) if "n_neurons" in part else np.full(len(part), np.nan)
        for column, name, sign, colour in (("n_text_preferring", up, 1, text_colour),
                                           ("n_image_preferring", down, -1, image_colour)):
            n = part[column].to_numpy()
            fig.add_bar(
                x=part["layer"], y=sign * n, name=f"{name} ({stat})",
                marker=dict(color=colour, pattern_shape=PATTERNS[k % len(PATTERNS)]), offsetgroup=stat,
                customdata=np.column_stack([n, 100 * n / total, total]),
                hovertemplate=(f"<b>layer %{{x}}</b> ({stat})<br>{name}: %{{customdata[0]}} "
                               "neurons with q < 0.05<br>= %{customdata[1]:.1f}% of %{customdata[2]:.0f}"
                               "<extra></extra>"),
            )
    apply_layout(
        fig, f"{site}: neurons with q < 0.05 per layer (up: {up}, down: {down})",
        barmode="relative",
        xaxis_title=LAYER_AXIS, yaxis_title=f"neurons with q < 0.05 (count)<br>↑ {up}, ↓ {down}",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0), margin=dict(t=100),
    )
    fig.update_xaxes(**layer_ticks(rows["layer"].nunique()))
    top = rows[rows["stat"].isin(stats)][["n_text_preferring", "n_image_preferring"]].to_numpy()
    ticks = count_ticks(int(top.max(initial=0)))
    fig.update_yaxes(tickvals=ticks, ticktext=[f"{abs(t):,}" for t in ticks], zeroline=True,
                     zerolinecolor="black")
    return fig


def count_ticks(largest: int, n: int = 4) -> list[int]:
    """Ticks from -largest to +largest at a round step, labelled without sign (counts down are counts)."""
    raw = max(1.0, largest / n)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = int(next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw))
    k = math.ceil(largest / step) if largest else 1
    return [i * step for i in range(-k, k + 1)]
