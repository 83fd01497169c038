"""The study's headline in plain sentences: per site, the layer trend of the raw max beside the
length-matched max, each with its bootstrap interval and sign-flip p.

Why this sentence and no other: the raw max compares the peak over a few caption tokens with
the peak over hundreds of image tokens, so it is biased towards the longer side
(docs/method.md §3); its trend is never stated without the length-matched one beside it. A
direction is named ("falls", "rises") only when the bootstrap 95% CI over inputs excludes 0;
otherwise the slope is given as "changes by". The sentence says what the numbers show, never
why. The same sentence is written to summary.json (`summary[site]["headline"]`), printed at the
end of `modalscope run` and leads the report's "At a glance", so all three agree by construction.
"""

from __future__ import annotations

import math
import numbers

from modalscope.figures.style import contrast_label, format_p

RAW, MATCHED = "max", "matched_max"
NAMES = {RAW: "raw max", MATCHED: "length-matched max"}


def _finite(value: object) -> bool:
    """A real number that is not NaN or ±inf (summary.json's null reads back as NaN)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _n(value: float) -> str:
    return f"{value:.3g}"


def trend_clause(name: str, entry: dict) -> str:
    """'raw max falls by 1.03 per layer (bootstrap 95% CI -1.2 to -0.85, sign-flip p = 0.001)'."""
    slope = entry.get("slope")
    if not _finite(slope):
        return f"{name} has no trend (it needs 3 layers with a finite mean)"
    low, high = entry.get("slope_ci_low"), entry.get("slope_ci_high")
    has_ci = _finite(low) and _finite(high)
    if has_ci and high < 0:
        verb = f"falls by {_n(-slope)}"
    elif has_ci and low > 0:
        verb = f"rises by {_n(slope)}"
    else:
        verb = f"changes by {_n(slope)}"
    detail = [f"bootstrap 95% CI {_n(low)} to {_n(high)}"] if has_ci else []
    if _finite(entry.get("slope_p_perm")):
        detail.append(f"sign-flip p = {format_p(entry['slope_p_perm'])}")
    return f"{name} {verb} per layer" + (f" ({', '.join(detail)})" if detail else "")


def headline(site: str, entry: dict) -> str:
    """The sentence of one site from its summary.json entry (the max trend, with `by_stat`)."""
    matched = entry.get("by_stat", {}).get(MATCHED)
    parts = [trend_clause(NAMES[RAW], entry),
             trend_clause(NAMES[MATCHED], matched) if matched else f"{NAMES[MATCHED]} not recorded (see --stats)"]
    return f"{site}, layer mean of Δ = {contrast_label(entry.get('contrast'))}: {'; '.join(parts)}."
