"""The report's section of each site: Figure 2 with its controls, Figure 1, the significant counts,
the strongest neurons, the cross-modal figures, Figure 3 and Δ_base, with the notes that say how
to read each.

Why apart from the page: these are the results, one site at a time; the page (page.py) puts the
sites between the glance and what was run.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from modalscope.figures.alignment import figure_alignment
from modalscope.figures.assemble import StudyTables, comparison, figure2_vs_base, headline_figures
from modalscope.figures.histograms import figure1_static
from modalscope.figures.trend import token_lengths
from modalscope.figures.style import (
    BLUE, COLOUR_NAMES, GREEN, PURPLE, TWIN_GREY, VERMILLION, contrast_sides, direction_names, format_p, no_preference,
    permutation_floor, preferring,
)
from modalscope.figures.xmodal import SHARE_FIGURE
from modalscope.outputs import ALIGNMENT_FIGURE
from modalscope.report.facts import (
    NEURON_COLUMNS, SIGNIFICANT_Q, TOP_K, Forgetting, significant_counts, top_neurons, trend_rows, twin_alignment_rows,
)
from modalscope.report.html import SHUFFLED_P, _esc, _figure, _num, _p_floor, _table
from modalscope.stats.columns import VS_BASE


def _figure2_note(stat: str, compare: str | None, contrast: str, tokens: dict | None = None,
                  twin: bool = False) -> str:
    note = (f"The layer mean of the neurons' mean Δ ({_esc(contrast)}; reduction {_esc(stat)}, "
            f"{COLOUR_NAMES[BLUE]}) with its 95% CI over inputs; grey: the spread over neurons (the report's band); "
            f"{COLOUR_NAMES[PURPLE]} with a dotted edge: where layer means fall under the sign-flip null "
            f"({_esc(no_preference(contrast))}); {COLOUR_NAMES[VERMILLION]}, dashed: the least-squares line.")
    if compare:
        note += (f" Right: the same for {_esc(compare)} ({COLOUR_NAMES[GREEN]})"
                 + (", which removes the length bias of a max over "
                    + _esc(token_lengths(tokens or {}, contrast) or "fewer tokens on one side than the other")
                    + " in this study." if compare == "matched_max" else "."))
    if twin:
        note += (f" {COLOUR_NAMES[TWIN_GREY].capitalize()}, dashed: the same layer means of the random twin (this "
                 "model re-initialised, the same inputs), its slope in the legend: what the architecture and the "
                 "token counts give without training.")
    return note + " Hover a point for its numbers."


FIGURE1_NOTE = ("A row per decoder layer, binned over its own range of the neurons' mean Δ (left) and t (right): "
                "its 1st to 99th percentile, widened a little, so one extreme neuron cannot squash the rest; the "
                "cells set apart at a row's ends count the neurons beyond. Colour: how many of the layer's neurons "
                "fall in the bin. Dashed lines in the t panel: the FDR threshold, "
                f"beyond which neurons have q &lt; {SIGNIFICANT_Q}.")
def _xmodal_notes(contrast: str) -> tuple[str, str]:
    """The notes of the two cross-modal figures, in the contrast's words."""
    first, second = (_esc(side) for side in contrast_sides(contrast))
    up, _ = (_esc(d) for d in preferring(contrast))
    r_note = (f"Whether a neuron's {first} and {second} responses rank the pairs alike (Spearman r over pairs, "
              "docs/method.md §10): a row per decoder layer, colour: how many of its neurons have r in the bin; "
              "diamonds: the layer's median r; dashed: the |r| beyond which xmodal_q &lt; "
              f"{SIGNIFICANT_Q} (one null for every neuron, so the FDR cut is a line). Mass right of the "
              "dashed line is the layer's cross-modal neurons; a layer centred on 0 has none.")
    scatter_note = (f"One layer at a time (move the slider): how much a neuron prefers one side (cohen_d, x) "
                    "against whether its two responses agree on which pairs excite it (xmodal_r, y). "
                    f"Top right: {up} and still cross-modal; near x = 0, high y: one code for both. Named: the "
                    "layer's top neurons each way (circles) and the top by xmodal_r (diamonds, whatever their q); "
                    f"black points and black outlines have xmodal_q &lt; {SIGNIFICANT_Q}, and nothing else is black. "
                    "The share of cross-modal neurons per layer is in layers.parquet (`xmodal_share`), its trend in "
                    "summary.json (`xmodal`).")
    return r_note, scatter_note


def _xmodal_section(figs: dict[str, go.Figure], site: str, trend: dict, contrast: str) -> list[str]:
    """The cross-modal figures of a site with one note each ([] for a study without them)."""
    if f"xmodal_r_{site}" not in figs:
        return []
    r_note, scatter_note = _xmodal_notes(contrast)
    line = ""
    if trend and "slope" in trend:
        ci = (f" (bootstrap 95% CI over inputs {_num(trend.get('slope_ci_low'))} to "
              f"{_num(trend.get('slope_ci_high'))})")
        line = (f" The share of cross-modal neurons (xmodal_q &lt; {SIGNIFICANT_Q}, r &gt; 0) changes by "
                f"{_num(trend['slope'])} per layer{ci}; {_num(trend.get('n_cross_modal'))} of "
                f"{_num(trend.get('n_neurons'))} neurons are cross-modal.")
    share = []
    if f"{SHARE_FIGURE}{site}" in figs:  # --control random-twin: the share per layer beside the twin's
        share = [f'<p class="note">The share of cross-modal neurons per layer (xmodal_q &lt; {SIGNIFICANT_Q}, '
                 f"r &gt; 0) with its 95% CI over inputs, and the random twin's ({COLOUR_NAMES[TWIN_GREY]}, "
                 "dashed): the cross-modal neurons the architecture and the token counts give without "
                 "training.</p>", _figure(figs[f"{SHARE_FIGURE}{site}"], f"{SHARE_FIGURE}{site}")]
    return [f'<h3 id="xmodal-{_esc(site)}">Cross-modal neurons: text and image responses ranked alike</h3>',
            f'<p class="note">{r_note}{line}</p>',
            _figure(figs[f"xmodal_r_{site}"], f"xmodal_r_{site}"),
            f'<p class="note">{scatter_note}</p>',
            _figure(figs[f"xmodal_scatter_{site}"], f"xmodal_scatter_{site}"), *share]


# Named for what it compares (the same text through the VLM and through its base LM), not for a
# cause ("forgetting") that its own paragraph says the numbers cannot show.
FORGETTING_TITLE = "The same text through the VLM and its base LM (Δ_base = text − text_base)"
ALIGNMENT_NOTE = (
    "How alike a layer's codes of the same pairs are when they arrive as words and as pixels (1: the same), "
    "from each pair's population vector (reduction {stat}), three views from loose to strict. Left: linear CKA, "
    "the same geometry up to a rotation and a scale (debiased, Song et al. 2012; the thin dotted line is the "
    "plug-in CKA, biased upwards, for comparison). Middle: mutual k-NN, the share of a pair's 10 nearest pairs "
    "in text space that are also among its 10 nearest in image space. Right: retrieval, whether a caption's own "
    "image is its nearest image by cosine in the same neurons (top-1), and the mean of 1/its rank (MRR). "
    f"Coloured band: the debiased CKA's 95% CI over pairs (jackknife); {COLOUR_NAMES[PURPLE]} with a dotted edge: where the "
    "measure falls when captions and images are paired at random (the shuffled-pairing null); grey dashed: "
    "chance. A line above its null band is alignment that unrelated pairs do not give. Never read the plug-in CKA "
    "against 0: with many neurons and few pairs it is high even for unrelated pairs (docs/method.md).")


def _p_clause(p: object, floor: float | None) -> str:
    """'= 0.0312' or '≤ 0.001' (at the permutation floor), to follow 'p'."""
    text = format_p(p, floor)
    return text if text.startswith("≤") else f"= {text}"


def _forgetting_paragraph(facts: Forgetting, model: str, p_floor: float | None = None) -> str:
    """The numbers of Δ_base at one site, in words (HTML, escaped), without a cause."""
    up, down = (_esc(d) for d in direction_names(facts.contrast))
    base = _esc(facts.base_model or "the base language model")
    ci = (f"bootstrap 95% CI over inputs {_num(facts.slope_ci_low)} to {_num(facts.slope_ci_high)}; "
          if math.isfinite(facts.slope_ci_low) else "")
    text = [f"Δ_base = {_esc(facts.contrast)}: the same text-only inputs, with the same token ids, through "
            f"{_esc(model)} and through the language model it was trained from, {base} (reduction "
            f"{_esc(facts.stat)}). The layer mean of Δ_base changes by {_num(facts.slope)} per layer ({ci}"
            f"sign-flip p {_p_clause(facts.slope_p_perm, p_floor)})."]
    if facts.first_nonzero_layer is None:
        text.append("Δ_base is exactly 0 in every neuron of every layer.")
    elif facts.first_nonzero_layer > 0:
        last = facts.first_nonzero_layer - 1
        text.append(f"Δ_base is exactly 0 in every neuron of layer{'s 0–' if last else ' '}{last}.")
    if facts.first_layer_ci_excludes_0 is None:
        text.append("In no layer does the 95% CI over inputs of the layer mean exclude 0.")
    else:
        text.append("The first layer whose layer mean differs from 0 (its 95% CI over inputs excludes 0) is "
                    f"layer {facts.first_layer_ci_excludes_0}.")
    text.append(f"Over all layers, {facts.n_up:,} of {facts.n_neurons:,} neurons have q_vs_base &lt; "
                f"{SIGNIFICANT_Q} with Δ_base &gt; 0 ({up}) and {facts.n_down:,} with Δ_base &lt; 0 ({down}).")
    text.append("These numbers say where and by how much the two models' activations differ on identical "
                "inputs; they do not say why, nor whether the difference matters for what either model outputs.")
    return " ".join(text)


def _forgetting_section(tables: StudyTables, site: str, stat: str, facts: Forgetting, model: str) -> str:
    return "\n".join([
        f'<h3 id="forgetting-{_esc(site)}">{_esc(FORGETTING_TITLE)}</h3>',
        f'<p class="note">{_forgetting_paragraph(facts, model, _p_floor(tables))}</p>',
        _figure(figure2_vs_base(tables, site, stat), f"figure2_{site}{VS_BASE}"),
    ])


def _alignment_section(tables: StudyTables, site: str) -> str:
    """Figure 3 and, per measure, the layer where it peaks (summary.json's `alignment`)."""
    entry = tables.summary.get(site, {}).get("alignment", {})
    rows = {measure: {"peak layer": facts.get("peak_layer"), "value": facts.get("value"),
                      "95% CI": (f"{facts['ci_low']:.3g} to {facts['ci_high']:.3g}" if "ci_low" in facts else "—"),
                      SHUFFLED_P: facts.get("p_value"), "chance": facts.get("chance"),
                      "first layer above null": facts.get("first_layer_above_null")}
            for measure, facts in entry.get("measures", {}).items()}
    nulls = tables.alignment["n_null"] if tables.alignment is not None and "n_null" in tables.alignment else None
    floor = permutation_floor(int(nulls.max())) if nulls is not None and len(nulls) else None
    peaks = (_table(pd.DataFrame.from_dict(rows, orient="index"), index="measure", cls="compact", p_floor=floor)
             if rows else "")
    twin = twin_alignment_rows(tables, site)
    twin_part = [] if twin is None else [
        f"<p class=\"note\">{COLOUR_NAMES[TWIN_GREY].capitalize()}, dashed in the figure: the random twin's "
        "alignment (this model re-initialised, the same pairs). Each measure's peak over the layers, this model "
        "and its twin:</p>", _table(twin, index="measure", cls="compact")]
    return "\n".join([
        f'<h3 id="alignment-{_esc(site)}">Figure 3: where words and pixels meet (layer alignment)</h3>',
        f'<p class="note">{ALIGNMENT_NOTE.format(stat=_esc(entry.get("stat", "mean")))}</p>',
        _figure(figure_alignment(tables.alignment, site, tables.twin_alignment(site)), f"{ALIGNMENT_FIGURE}{site}"),
        '<p class="note">Per measure, the layer where it peaks (both retrieval directions, top-5 too) with a 95% CI '
        "simultaneous over the layers (debiased CKA only) and p family-wise over the layers (max-statistic over "
        "the shuffled pairings), and the first layer above its null at that family-wise 5%:</p>", peaks,
        *twin_part,
    ])


def _site_section(tables: StudyTables, site: str, stat: str, base: Forgetting | None = None,
                  model: str = "", tokens: dict | None = None) -> str:
    figs = headline_figures(tables, site, stat)
    text, image = top_neurons(tables, site, stat)
    names = {c: NEURON_COLUMNS[c] for c in text.columns}

    def ns(row: pd.Series) -> str:
        return "ns" if not row["q"] < SIGNIFICANT_Q else ""

    trend = trend_rows(tables, site)
    contrast = tables.contrast(site)
    up, down = preferring(contrast)
    figure2_note = _figure2_note(stat, comparison(tables.stats, stat), contrast, tokens, tables.has_twin(site))
    return "\n".join([
        f'<section id="site-{_esc(site)}"><h2>Site: {_esc(site)}</h2>',
        f'<h3 id="figure2-{_esc(site)}">Figure 2: layer mean Δ by decoder layer, with its controls</h3>',
        f'<p class="note">{figure2_note}</p>',

        _figure(figs[f"figure2_{site}"], f"figure2_{site}"),
        "<p class=\"note\">The trend for every reduction (bootstrap 95% CI over inputs, sign-flip permutation p):</p>",
        _table(trend, index="reduction", p_floor=_p_floor(tables)),
        f'<h3 id="figure1-{_esc(site)}">Figure 1: distributions over neurons, every layer</h3>',
        f'<p class="note">{FIGURE1_NOTE}</p>',
        _figure(figure1_static(figs[f"figure1_{site}"]), f"figure1_{site}_all_layers"),
        '<p class="note">One layer at a time (move the slider): the same bins as histograms.</p>',
        _figure(figs[f"figure1_{site}"], f"figure1_{site}"),
        f'<h3 id="significant-{_esc(site)}">FDR-significant neurons (q &lt; {SIGNIFICANT_Q}) per layer and '
        "direction</h3>",
        _figure(figs[f"significant_{site}"], f"significant_{site}"),
        _table(significant_counts(tables, site), index="layer"),
        f'<h3 id="top-{_esc(site)}">Top {TOP_K} neurons each way (reduction {_esc(stat)}, by t)</h3>',
        '<p class="note">Grey rows are not significant after FDR control (q ≥ 0.05).</p><div class="grid">',
        *(f"<div><h4>{title}</h4>"
          f"{_table(top.rename(columns=names), row_class=ns, cls='compact', p_floor=_p_floor(tables))}</div>"
          for title, top in ((f"{_esc(up)} (Δ &gt; 0)", text), (f"{_esc(down)} (Δ &lt; 0)", image))),
        "</div>",
        *_xmodal_section(figs, site, _xmodal_trend(tables, site, stat), contrast),
        *([_alignment_section(tables, site)] if tables.has_alignment(site) else []),
        *([_forgetting_section(tables, site, stat, base, model)] if base is not None else []),
        "</section>",
    ])


def _xmodal_trend(tables: StudyTables, site: str, stat: str) -> dict:
    entry = tables.summary.get(site, {}).get("xmodal", {})
    return entry if stat == "max" else entry.get("by_stat", {}).get(stat, {})


