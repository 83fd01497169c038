"""One look for every figure: the Okabe-Ito palette, axis wording with units, a shared layout.

Why: the figures are read side by side in the report, so a colour means the same thing in
each of them, and every colour is told apart by readers with any common colour-vision
deficiency (Okabe & Ito 2008). The report's red regression line is drawn in Okabe-Ito
vermillion, the palette's red.
"""

from __future__ import annotations

import plotly.graph_objects as go

# Okabe-Ito (https://jfly.uni-koeln.de/color/), named by what they show here.
BLUE = "#0072B2"  # the headline reduction's layer mean; text-preferring neurons
VERMILLION = "#D55E00"  # the regression line; image-preferring neurons
GREEN = "#009E73"  # the comparison reduction (matched_max)
ORANGE = "#E69F00"  # t-values in Figure 1
SKY = "#56B4E9"
PURPLE = "#CC79A7"  # the sign-flip null band
YELLOW = "#F0E442"
BLACK = "#000000"
GREY = "#999999"

# (text-preferring, image-preferring) per reduction, in the order reductions are drawn.
DIRECTION_PAIRS = [(BLUE, VERMILLION), (SKY, ORANGE), (GREEN, PURPLE), (GREY, YELLOW), (BLACK, "#882255")]

LAYER_AXIS = "decoder layer (0 = first)"
# What one unit of Δ is, per reduction over tokens.
UNITS = {"frac_active": "share of tokens > 0"}


def rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def delta_axis(stat: str = "max", what: str = "mean Δ", contrast: str = "text − image", name_stat: bool = True) -> str:
    """Axis title of a Δ, e.g. 'mean Δ (text − image)<br>activation units, max over tokens'."""
    unit = UNITS.get(stat, "activation units")
    return f"{what} ({contrast})<br>{unit}" + (f", {stat} over tokens" if name_stat else "")


def contrast_label(contrast: str | None) -> str:
    """'text - image' (as summary.json writes it) -> 'text − image'."""
    return (contrast or "text - image").replace(" - ", " − ")


def apply_layout(fig: go.Figure, title: str, height: int = 500, **layout: object) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0, xref="paper", xanchor="left", font=dict(size=16)),
        template="plotly_white",
        height=height,
        font=dict(family="Liberation Sans, Arial, Helvetica, sans-serif", size=13),
        hoverlabel=dict(font_size=13),
        **layout,
    )
    return fig
