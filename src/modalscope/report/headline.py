"""The study's headline in plain sentences: per site, the layer trend of the raw max beside the
length-matched max, each with its bootstrap interval and sign-flip p.

Why this sentence and no other: the raw max compares the peak over a few caption tokens with
the peak over hundreds of image tokens, so it is biased towards the longer side
(docs/method.md §3); its trend is never stated without the length-matched one beside it. A
direction is named ("falls", "rises") only when the trend is both significant and robust: the
bootstrap 95% CI over inputs excludes 0, and leaving out any one layer keeps the slope's sign
(the CI resamples inputs, not layers, so one layer can carry a "significant" slope). Otherwise
the slope is given as "changes by", and a significant slope that hangs on one layer is called
"not monotone", naming that layer. R² says how linear a named trend is; layers far off the line
are named. When the reductions name opposite directions, a second sentence says so. The
sentence says what the numbers show, never why. The same sentence is written to summary.json
(`summary[site]["headline"]`), printed at the end of `modalscope run` and leads the report's
"At a glance", so all three agree by construction.
"""

from __future__ import annotations

import math
import numbers

from modalscope.figures.style import contrast_label, format_p, permutation_floor

RAW, MATCHED, MEAN = "max", "matched_max", "mean"
NAMES = {RAW: "raw max", MATCHED: "length-matched max", MEAN: "mean"}


def _finite(value: object) -> bool:
    """A real number that is not NaN or ±inf (summary.json's null reads back as NaN)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _n(value: float) -> str:
    return f"{value:.3g}"


def _layers(layers: list[int]) -> str:
    return ("layer " if len(layers) == 1 else "layers ") + ", ".join(str(x) for x in layers)


def direction(entry: dict) -> int:
    """+1 rises, -1 falls, 0 no direction: the CI excludes 0 and no layer left out flips the sign."""
    slope, low, high = entry.get("slope"), entry.get("slope_ci_low"), entry.get("slope_ci_high")
    if not (_finite(slope) and _finite(low) and _finite(high)) or low <= 0 <= high:
        return 0
    return 0 if entry.get("sign_flipping_layers") else (1 if low > 0 else -1)


def trend_clause(name: str, entry: dict, p_floor: float | None = None) -> str:
    """'raw max falls by 1.03 per layer (bootstrap 95% CI -1.2 to -0.85, sign-flip p ≤ 0.001; R² = 0.91)'."""
    slope = entry.get("slope")
    if not _finite(slope):
        return f"{name} has no trend (it needs 3 layers with a finite mean)"
    low, high = entry.get("slope_ci_low"), entry.get("slope_ci_high")
    has_ci = _finite(low) and _finite(high)
    flips = list(entry.get("sign_flipping_layers") or [])
    way = direction(entry)
    if way < 0:
        verb = f"falls by {_n(-slope)}"
    elif way > 0:
        verb = f"rises by {_n(slope)}"
    elif has_ci and (high < 0 or low > 0):  # significant, but one layer carries the sign
        verb = f"is not monotone over depth: it changes by {_n(slope)}"
    else:
        verb = f"changes by {_n(slope)}"
    detail = [f"bootstrap 95% CI {_n(low)} to {_n(high)}"] if has_ci else []
    if _finite(entry.get("slope_p_perm")):
        p = format_p(entry["slope_p_perm"], p_floor)
        detail.append(f"sign-flip p {p}" if p.startswith("≤") else f"sign-flip p = {p}")
    text = f"{name} {verb} per layer" + (f" ({', '.join(detail)}" if detail else "")
    if way and _finite(entry.get("r2")):
        text += f"; R² = {entry['r2']:.2g}"
    if has_ci and (high < 0 or low > 0) and flips:
        text += f"; leaving out {_layers(flips)} turns the sign"
    text += ")" if detail else ""
    standout = list(entry.get("standout_layers") or [])
    if standout:
        values = ", ".join(_n(v) for v in entry.get("standout_mean_diff") or [])
        text += f", {_layers(standout)} far off the line (layer mean Δ {values})"
    return text


def disagreement(site_entry: dict) -> str:
    """'The reductions disagree on the direction: raw max falls, length-matched max rises.', or ''."""
    named = {}
    for stat in (RAW, MATCHED, MEAN):
        entry = site_entry if stat == RAW else site_entry.get("by_stat", {}).get(stat)
        if entry and direction(entry):
            named[stat] = direction(entry)
    if len(set(named.values())) < 2:
        return ""
    return ("The reductions disagree on the direction: "
            + ", ".join(f"{NAMES[stat]} {'rises' if way > 0 else 'falls'}" for stat, way in named.items()) + ".")


def headline(site: str, entry: dict) -> str:
    """The sentence of one site from its summary.json entry (the max trend, with `by_stat`); with
    the random twin (`--control random-twin`: the entry's `twin`), whether each effect exceeds it."""
    floor = permutation_floor(entry.get("n_perm"))
    matched = entry.get("by_stat", {}).get(MATCHED)
    parts = [trend_clause(NAMES[RAW], entry, floor),
             trend_clause(NAMES[MATCHED], matched, floor) if matched
             else f"{NAMES[MATCHED]} not recorded (see --stats)"]
    sentence = f"{site}, layer mean of Δ = {contrast_label(entry.get('contrast'))}: {'; '.join(parts)}."
    twin = twin_sentence(entry["twin"]) if isinstance(entry.get("twin"), dict) else ""
    return " ".join(x for x in (sentence, disagreement(entry), twin) if x)


def _times(ratio: object) -> str | None:
    """'3.1 times' for a ratio of the same sign above 1, else None."""
    return f"{ratio:.2g} times" if _finite(ratio) and ratio > 1 else None


def twin_trend_clause(stat: str, facts: dict) -> str:
    """'the length-matched max trend (-0.12 per layer) is 12 times the random twin's (-0.01)', or
    '... exceeds the random twin's (0.02)' (the other sign), or '... does not exceed the random twin's (-0.11)'."""
    name = NAMES.get(stat, stat)
    slope, other = facts.get("study_slope"), facts.get("twin_slope")
    if not (_finite(slope) and _finite(other)):
        return f"the {name} trend has no random-twin comparison (a trend needs 3 layers with a finite mean)"
    head = f"the {name} trend ({_n(slope)} per layer)"
    if not facts.get("exceeds"):
        return f"{head} does not exceed the random twin's ({_n(other)})"
    times = _times(facts.get("ratio"))
    return f"{head} is {times} the random twin's ({_n(other)})" if times else \
        f"{head} exceeds the random twin's ({_n(other)})"


def _count_clause(what: str, stat: str, facts: dict, share: bool) -> str:
    """'the share of cross-modal neurons (matched_max: 12%) is 3 times the random twin's (4%)';
    counts are plural ('imagery neuron-concept pairs (max: 40) are ...')."""
    def shown(value: float) -> str:
        return f"{100 * value:.3g}%" if share else f"{value:,.0f}"

    study, twin = facts.get("study"), facts.get("twin")
    if not (_finite(study) and _finite(twin)):
        return ""
    head = f"{what} ({stat}: {shown(study)})"
    be, verb, do = ("is", "exceeds", "does") if share else ("are", "exceed", "do")
    if not facts.get("exceeds"):
        return f"{head} {do} not exceed the random twin's ({shown(twin)})"
    times = _times(facts.get("ratio"))
    return f"{head} {be} {times} the random twin's ({shown(twin)})" if times else \
        f"{head} {verb} the random twin's ({shown(twin)})"


def twin_sentence(twin: dict) -> str:
    """The headline's sentence on the random twin (summary.json's `twin` of a site): per reduction
    whether the layer slope exceeds the twin's (larger, and the twin's slope outside the study's
    bootstrap 95% CI), then the cross-modal share and the imagery neuron-concept pairs."""
    clauses = [twin_trend_clause(stat, facts) for stat, facts in (twin.get("trend") or {}).items()]
    if "xmodal_share" in twin:
        clauses.append(_count_clause("the share of cross-modal neurons", twin.get("stat", RAW),
                                     twin["xmodal_share"], share=True))
    if "imagery" in twin:
        clauses.append(_count_clause("imagery neuron-concept pairs", twin["imagery"].get("stat", RAW),
                                     twin["imagery"], share=False))
    clauses = [c for c in clauses if c]
    if not clauses:
        return ""
    text = "; ".join(clauses)
    return f"Against its random twin (the same architecture re-initialised, the same inputs): {text}."
