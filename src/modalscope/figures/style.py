"""One look for every figure: the Okabe-Ito palette, axis wording with units, a shared layout.

Why: the figures are read side by side in the report, so a colour means the same thing in
each of them, and every colour is told apart by readers with any common colour-vision
deficiency (Okabe & Ito 2008). The report's red regression line is drawn in Okabe-Ito
vermillion, the palette's red.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go

# Okabe-Ito (https://jfly.uni-koeln.de/color/), named by what they show here.
BLUE = "#0072B2"  # the headline reduction's layer mean; text-preferring neurons
VERMILLION = "#D55E00"  # the regression line; image-preferring neurons
GREEN = "#009E73"  # the comparison reduction (matched_max)
ORANGE = "#E69F00"  # t-values in Figure 1
SKY = "#56B4E9"
PURPLE = "#CC79A7"  # the sign-flip null band (Okabe-Ito "reddish purple"; pink as drawn, at 22% opacity)
YELLOW = "#F0E442"
BLACK = "#000000"
GREY = "#999999"
TWIN_GREY = "#555555"  # the random twin (--control random-twin): dark grey, dashed, beside every result

# (text-preferring, image-preferring) per reduction, in the order reductions are drawn.
DIRECTION_PAIRS = [(BLUE, VERMILLION), (SKY, ORANGE), (GREEN, PURPLE), (GREY, YELLOW), (BLACK, "#882255")]

# What a reader sees each colour as, where a note names it ("grey: the spread over neurons"): the
# null band is PURPLE at 22% opacity on white, which reads as pink, not purple.
COLOUR_NAMES = {BLUE: "blue", GREEN: "green", VERMILLION: "vermillion", ORANGE: "orange", PURPLE: "pink",
                GREY: "grey", TWIN_GREY: "dark grey"}

LAYER_AXIS = "decoder layer (0 = first)"
# What one unit of Δ is, per reduction over tokens.
UNITS = {"frac_active": "share of tokens > 0"}


def layer_ticks(n_layers: int) -> dict[str, object]:
    """Axis settings that label layers with whole numbers only: a tick every layer up to 16
    layers, else every ceil(n/16)-th, from layer 0; never a fractional tick when zoomed."""
    return {"tick0": 0, "dtick": max(1, math.ceil(n_layers / 16)), "tickformat": "d"}


def format_p(p: object, floor: float | None = None) -> str:
    """A p or q value as every table, legend and sentence writes it: three significant digits
    (0.00498, 0.0312, 1), e-notation below 1e-4 (3.21e-05); '—' when undefined. A permutation p
    at its floor 1/(P+1) (`floor`) reads '≤ 0.001' (P = 1,000; '≤ 0.005' for P = 200): all it
    says is that no permutation of P did as well, so writing it as '= 0.000999' would claim a
    precision it does not have; the floor is rounded up to one significant digit (`round_up`),
    a bound that is still true and reads as the resolution it is.

    Why one function: the same number must read the same in the report's tables, a figure's
    legend and the headline sentence."""
    try:
        value = float(p)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "—"
    if math.isnan(value):
        return "—"
    if floor is not None and value <= floor * (1 + 1e-9):
        return f"≤ {round_up(floor):.3g}"
    return f"{value:.3g}"


def round_up(value: float) -> float:
    """`value` > 0 rounded up to one significant digit: 0.000999 -> 0.001, 0.004975 -> 0.005,
    0.0099 -> 0.01 (a value already at one digit stays: 0.002 -> 0.002)."""
    step = 10.0 ** math.floor(math.log10(value))
    digits = math.ceil(value / step * (1 - 1e-12))
    return float(f"{digits * step:.1g}")


def permutation_floor(n_perm: object) -> float | None:
    """The smallest permutation p of P permutations, 1/(P+1); None when P is unknown."""
    try:
        count = int(n_perm)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return 1.0 / (count + 1) if count > 0 else None


def rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def delta_axis(stat: str = "max", what: str = "mean Δ", contrast: str = "text − image", name_stat: bool = True) -> str:
    """Axis title of a Δ, e.g. 'mean Δ (text − image)<br>activation units, max over tokens'."""
    unit = UNITS.get(stat, "activation units")
    return f"{what} ({contrast})<br>{unit}" + (f", {stat} over tokens" if name_stat else "")


DEFAULT_CONTRAST = "text − image"


def contrast_label(contrast: str | None) -> str:
    """'text - image' (as summary.json writes it) -> 'text − image'."""
    return (contrast or "text - image").replace(" - ", " − ")


def contrast_sides(contrast: str = DEFAULT_CONTRAST) -> tuple[str, str]:
    """'image_text_caption − text' -> ('image_text_caption', 'text'): Δ = first − second."""
    first, _, second = contrast_label(contrast).partition(" − ")
    return first, second


def direction_names(contrast: str = DEFAULT_CONTRAST) -> tuple[str, str]:
    """Short names of Δ > 0 and Δ < 0: ('text', 'image') for the report's contrast, else
    ('A > B', 'B > A'), so a count is never called text or image when it is not.

    Why: the tables keep the columns `n_text_preferring` / `n_image_preferring` (a
    contract), but under `--contrast image_text_caption-text` they count
    image_text_caption > text and the reverse; every label says that instead."""
    first, second = contrast_sides(contrast)
    if (first, second) == ("text", "image"):
        return first, second
    return f"{first} > {second}", f"{second} > {first}"


def preferring(contrast: str = DEFAULT_CONTRAST) -> tuple[str, str]:
    """Long names of Δ > 0 and Δ < 0: ('text-preferring', 'image-preferring') for the
    report's contrast, else ('A > B', 'B > A')."""
    up, down = direction_names(contrast)
    if contrast_sides(contrast) == ("text", "image"):
        return f"{up}-preferring", f"{down}-preferring"
    return up, down


def no_preference(contrast: str = DEFAULT_CONTRAST) -> str:
    """What the sign-flip null stands for, in the contrast's words."""
    if contrast_sides(contrast) == ("text", "image"):
        return "no preferred modality"
    first, second = contrast_sides(contrast)
    return f"no preference between {first} and {second}"


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
