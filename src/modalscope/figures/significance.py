"""Counts of FDR-significant neurons per layer and direction.

Why: a layer mean can hide two opposite populations; counting neurons with q < 0.05 that
prefer text (Δ > 0, drawn up) and image (Δ < 0, drawn down) shows whether a layer is
mixed or one-sided. Each reduction is a colour pair, so max and matched_max sit side by side.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

# Okabe-Ito, safe for colour-blind readers: (text, image) per reduction.
COLOURS = [("#0072B2", "#D55E00"), ("#56B4E9", "#E69F00"), ("#009E73", "#CC79A7"),
           ("#999999", "#F0E442"), ("#000000", "#882255")]


def figure_significant(counts: pd.DataFrame, site: str, stats: list[str]) -> go.Figure:
    """`counts` is significant_neurons.parquet: site, stat, layer, n_text_preferring, ..."""
    rows = counts[counts["site"] == site]
    fig = go.Figure()
    for (text_colour, image_colour), stat in zip(COLOURS, stats):
        part = rows[rows["stat"] == stat].sort_values("layer")
        fig.add_bar(x=part["layer"], y=part["n_text_preferring"], name=f"text-preferring ({stat})",
                    marker_color=text_colour, offsetgroup=stat,
                    hovertemplate="layer %{x}<br>%{y} text-preferring neurons<extra>" + stat + "</extra>")
        fig.add_bar(x=part["layer"], y=-part["n_image_preferring"], name=f"image-preferring ({stat})",
                    marker_color=image_colour, offsetgroup=stat,
                    customdata=part["n_image_preferring"],
                    hovertemplate="layer %{x}<br>%{customdata} image-preferring neurons<extra>" + stat + "</extra>")
    fig.update_layout(
        barmode="relative",
        title=f"{site}: neurons with q < 0.05 per layer (up: text-preferring, down: image-preferring)",
        xaxis_title="decoder layer", yaxis_title="neurons (image-preferring drawn below 0)",
        template="plotly_white", height=500,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0), margin=dict(t=100),
    )
    return fig
