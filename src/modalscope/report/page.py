"""DIR/report.html: the study on one page, offline, plotly.js embedded once.

Design choices:

* One file to open or send: plotly.js (~4.6 MB) sits once in the page's head and every
  figure is a div plus the call that draws it (`include_plotlyjs=False`), so the page
  needs no network and no other file; links to the tables and figure files are relative,
  so the folder can move.
* The figures are the ones `modalscope plot` writes (figures/assemble.py), for the
  headline reduction; the numbers beside them come straight from the tables.
* Every value from the study is HTML-escaped: captions and paths are user data.
"""

from __future__ import annotations

import html
import math
import numbers
import time
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from modalscope.cards.card import CARD_CSS, report_cards
from modalscope.figures.alignment import figure_alignment
from modalscope.figures.assemble import (
    ALIGNMENT_FIGURE, VS_BASE, StudyTables, comparison, figure2_vs_base, headline_figures,
)
from modalscope.figures.export import HTML_CONFIG, atomic_write, plotlyjs_bytes
from modalscope.figures.histograms import figure1_static
from modalscope.figures.trend import token_counts, token_lengths
from modalscope.ablation.report import ablation_section
from modalscope.figures.style import (
    BLUE, COLOUR_NAMES, GREEN, PURPLE, TWIN_GREY, VERMILLION, contrast_sides, direction_names, format_p,
    no_preference,
    permutation_floor,
    preferring,
)
from modalscope.report.facts import (
    NEURON_COLUMNS, SIGNIFICANT_Q, TOP_K, Forgetting, Provenance, figure_files, forgetting, partial_study,
    provenance, random_weights, random_weights_title, significant_counts, table_files, top_neurons, trend_rows, twin_alignment_rows,
    twin_rows,
)
from modalscope.figures.xmodal import SHARE_FIGURE
from modalscope.report.headline import MATCHED, NAMES, RAW, headline

SHUFFLED_P = "shuffled-pairing p"  # the alignment's permutation p (over layers, at the peak)
P_COLUMNS = ("p", "q", "p_perm", "sign-flip p", SHUFFLED_P)  # cells written by format_p, as the legends are
PERMUTATION_COLUMNS = ("p_perm", "sign-flip p", SHUFFLED_P)  # permutation p: at its floor 1/(P+1) it reads "≤ ..."

REPORT = "report.html"
SKIPPED_SHOWN = 50

CSS = """
body { font-family: "Liberation Sans", Arial, Helvetica, sans-serif; margin: 0; color: #222; }
main { max-width: 1250px; margin: 0 auto; padding: 0 24px 48px; }
header { background: #f3f5f7; border-bottom: 1px solid #d8dde3; padding: 18px 24px; }
header > div { max-width: 1250px; margin: 0 auto; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header p { margin: 2px 0; color: #555; }
nav a { margin-right: 14px; }
h2 { border-bottom: 2px solid #0072B2; padding-bottom: 4px; margin-top: 40px; }
h3 { margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #d8dde3; padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: #f3f5f7; }
td.l, th.l { text-align: left; }
tr.ns td { color: #888; }
table.compact { font-size: 12px; }
table.compact th, table.compact td { padding: 2px 5px; }
.kv td:first-child { text-align: left; color: #555; }
.kv td:last-child { text-align: left; font-family: monospace; word-break: break-all; }
.grid { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.note { color: #555; font-size: 14px; max-width: 980px; }
.figure { border: 1px solid #e3e7eb; margin: 8px 0; }
pre { background: #f6f8fa; padding: 8px; white-space: pre-wrap; font-size: 12px; }
.banner { background: #fff4e0; border-left: 4px solid #E69F00; padding: 8px 12px; margin: 16px 0 0; }
ul.headline li { margin: 4px 0; max-width: 1100px; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: object, column: str = "", p_floor: float | None = None) -> str:
    """A cell: integers with separators, floats to 4 significant digits, p and q as `format_p`
    writes them (as in the figures' legends; a permutation p at `p_floor` as '≤ ...')."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if not isinstance(value, numbers.Real):
        return "—" if value is None else str(value)
    value = float(value)
    if math.isnan(value):
        return "—"
    if column in P_COLUMNS:
        return format_p(value, p_floor if column in PERMUTATION_COLUMNS else None)
    return f"{value:.4g}"


def _p_floor(tables: StudyTables) -> float | None:
    """The permutation p's floor 1/(P+1) of this study's sign-flip and per-neuron permutations."""
    return permutation_floor(next(iter(tables.summary.values()), {}).get("n_perm"))


def _table(frame: pd.DataFrame, index: str | None = None, row_class=None, cls: str = "",
           p_floor: float | None = None) -> str:
    head = ([f'<th class="l">{_esc(index)}</th>'] if index else []) + [f"<th>{_esc(c)}</th>" for c in frame.columns]
    body = []
    for key, row in frame.iterrows():
        row_attr = f' class="{row_class(row)}"' if row_class and row_class(row) else ""
        cells = ([f'<td class="l">{_esc(key)}</td>'] if index else []) + [
            f"<td>{_esc(_num(v, c, p_floor))}</td>" for c, v in row.items()]
        body.append(f"<tr{row_attr}>{''.join(cells)}</tr>")
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{cells}</table>'


def _figure(fig: go.Figure, name: str) -> str:
    height = fig.layout.height or 500
    div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}", config=HTML_CONFIG,
                      default_width="100%", default_height=f"{height}px")
    return f'<div class="figure">{div}</div>'


def _glance_reductions(tables: StudyTables, stat: str) -> list[str]:
    """The length-matched max first, the raw max beside it, then the headline reduction if other."""
    shown = [x for x in (MATCHED, RAW) if x in tables.stats]
    return shown + ([stat] if stat not in shown else [])


def _glance(tables: StudyTables, stat: str) -> str:
    """Per site the headline sentence (raw and length-matched max trends with their intervals),
    then one row per site and reduction: the trend and how many neurons prefer each side."""
    rows = []
    for site in tables.sites:
        up, down = preferring(tables.contrast(site))
        for shown in _glance_reductions(tables, stat):
            trend = tables.trend(site, shown)
            counts = tables.counts[(tables.counts["site"] == site) & (tables.counts["stat"] == shown)]
            ci = (f"{trend['slope_ci_low']:.3g} to {trend['slope_ci_high']:.3g}" if "slope_ci_low" in trend else "—")
            rows.append({"site": site, "reduction": f"{NAMES.get(shown, shown)} ({shown})" if shown in NAMES
                         else shown, "slope /layer": trend["slope"], "bootstrap 95% CI": ci,
                         "sign-flip p": trend.get("slope_p_perm"), "R²": trend["r2"],
                         up: int(counts["n_text_preferring"].sum()),
                         down: int(counts["n_image_preferring"].sum()),
                         "neurons": int(counts["n_neurons"].sum())})
    frame = pd.DataFrame(rows).set_index("site")
    from modalscope.concepts import glance_sentence

    sentences = "".join(f"<li>{_esc(tables.summary[site].get('headline') or headline(site, tables.summary[site]))}"
                        "</li>" for site in tables.sites)
    sentences += "".join(f"<li>{_esc(glance_sentence(site, tables.summary[site]['concepts']))}</li>"
                         for site in tables.sites if tables.summary[site].get("concepts"))
    note = ("Per site, the trend over decoder layers of the layer mean of Δ, length-matched max first: the raw "
            "max compares the peak over a few caption tokens with the peak over hundreds of image tokens, so it is "
            "biased towards the longer input (docs/method.md §3); the length-matched max compares peaks over the "
            "same number of tokens. A direction (falls, rises) is named only where the bootstrap 95% CI over inputs "
            "excludes 0 and leaving out any one layer keeps the slope's sign; R² says how linear it is. Neuron "
            f"counts: q &lt; {SIGNIFICANT_Q} each way, over all layers.")
    return (f'<section id="glance"><h2>At a glance</h2><ul class="headline">{sentences}</ul>'
            f'<p class="note">{note}</p>' + _table(frame, index="site", p_floor=_p_floor(tables)) + "</section>")


TWIN_NOTE = (
    "The random twin is this model with its weights re-initialised: the same config and architecture, "
    "transformers' own initialisation (<code>type(model)._from_config(config)</code>), seeded from the study's "
    "seed, run on the same pairs, batches and token scopes (<code>--control random-twin</code>; its study folder "
    "is control/random-twin/). Whatever the twin shows, the architecture and the token counts give without any "
    "training: only what exceeds it says something about what this model learned. A layer slope exceeds the "
    "twin's when it is larger in size and the twin's slope lies outside this model's bootstrap 95% CI over "
    "inputs; a share or a count when it is larger. In the figures the twin is the dark grey dashed line "
    "(Figures 2 and 3, the cross-modal share per layer) and the grey column of the concept figures.")


def _twin_section(tables: StudyTables) -> str:
    """The study beside its random twin: one row per site and effect ('' without a twin)."""
    rows = twin_rows(tables)
    if rows is None:
        return ""
    return (f'<section id="twin"><h2>Against the random twin</h2><p class="note">{TWIN_NOTE}</p>'
            + _table(rows, index="site") + "</section>")


def _provenance_section(prov: Provenance) -> str:
    parts = ['<section id="provenance"><h2>What was run</h2><div class="grid">', "<div>", _kv(prov.study), "</div>"]
    side = []
    if prov.timings:
        total = sum(s for _, s in prov.timings)
        rows = [(stage, f"{sec:,.1f} s") for stage, sec in prov.timings] + [("total", f"{total:,.1f} s")]
        side.append("<h3>Wall time</h3>" + _kv(rows))
    if prov.versions:
        frame = pd.DataFrame(prov.versions, columns=["library", "recording", "analysis"]).set_index("library")
        side.append("<h3>Versions</h3>" + _table(frame, index="library"))
    parts += ["<div>", *side, "</div></div>"]
    if prov.prompts:
        parts.append("<h3>Prompts</h3>" + _kv([(k, v) for k, v in prov.prompts.items()]))
    if prov.chat_template:
        parts.append(f"<details><summary>chat template</summary><pre>{_esc(prov.chat_template)}</pre></details>")
    parts.append(_skipped(prov.skipped))
    parts.append("</section>")
    return "\n".join(parts)


def _skipped(skipped: pd.DataFrame) -> str:
    if skipped.empty:
        return "<h3>Skipped pairs</h3><p>None: every pair in the manifest was used.</p>"
    reason = skipped["reason"] if "reason" in skipped.columns else pd.Series("not recorded", index=skipped.index)
    reasons = reason.value_counts().rename("pairs").to_frame()
    columns = [c for c in ("pair_id", "image_path", "caption", "reason") if c in skipped.columns]
    shown = skipped[columns].head(SKIPPED_SHOWN).astype(str)
    rows = "".join("<tr>" + "".join(f'<td class="l">{_esc(v)}</td>' for v in r) + "</tr>"
                   for r in shown.itertuples(index=False))
    more = f" (first {SKIPPED_SHOWN})" if len(skipped) > SKIPPED_SHOWN else ""
    return (f"<h3>Skipped pairs: {len(skipped):,}</h3>" + _table(reasons, index="reason")
            + f"<details><summary>the pairs{more}; all in skipped.parquet</summary><table><thead><tr>"
            + "".join(f'<th class="l">{c}</th>' for c in shown.columns) + f"</tr></thead><tbody>{rows}</tbody>"
            + "</table></details>")


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


def _files_section(out_dir: Path, sites: list[str], stat: str) -> str:
    rows = []
    for f in table_files(out_dir):
        n_rows = f"{f.rows:,}" if f.rows is not None else ""
        rows.append(f'<tr><td class="l"><a href="{_esc(f.href)}">{_esc(f.href)}</a></td>'
                    f'<td class="l">{_esc(f.what)}</td><td>{n_rows}</td><td>{f.size / 1e6:,.2f}</td></tr>')
    figures = []
    for stem, links in figure_files(out_dir).items():
        cells = "".join(f'<td class="l"><a href="{_esc(links[k])}">{k}</a></td>' if k in links else "<td></td>"
                        for k in ("html", "png", "svg"))
        what = _esc(_figure_what(stem, sites, stat))
        figures.append(f'<tr><td class="l">{_esc(stem)}</td><td class="l">{what}</td>{cells}</tr>')
    return "\n".join([
        '<section id="files"><h2>Tables and files</h2>',
        '<table><thead><tr><th class="l">file</th><th class="l">what</th><th>rows</th><th>MB</th></tr></thead>',
        f"<tbody>{''.join(rows)}</tbody></table>",
        '<h3 id="figure-files">Figures</h3><p class="note">Every figure of the study, one file each (the HTML '
        "files read figures/plotly.min.js beside them; PNG and SVG when Chromium was found).</p>",
        '<table><thead><tr><th class="l">figure</th><th class="l">what</th><th class="l" colspan="3">files</th>'
        f"</tr></thead><tbody>{''.join(figures)}</tbody></table></section>",
    ])


def _figure_what(stem: str, sites: list[str], stat: str) -> str:
    """'figure2_mlp_matched_max' -> 'Figure 2 (layer trend), site mlp, reduction matched_max'."""
    if stem.startswith(ALIGNMENT_FIGURE):  # 'figure3_alignment_mlp'
        site = stem.removeprefix(ALIGNMENT_FIGURE)
        return f"Figure 3 (layer alignment of the two modalities), site {site}" if site in sites else ""
    kind, _, rest = stem.partition("_")
    if kind == "figure2" and rest.endswith(VS_BASE):  # 'figure2_mlp_vs_base'
        site = rest.removesuffix(VS_BASE)
        return f"Figure 2 (layer trend) of Δ_base = text − text_base, site {site}, reduction {stat}" \
            if site in sites else ""
    if kind == "xmodal":  # 'xmodal_r_mlp', 'xmodal_scatter_mlp'
        which, _, site = rest.partition("_")
        what = {"r": "cross-modal r per layer", "scatter": "cohen_d vs cross-modal r per layer",
                "share": "share of cross-modal neurons per layer beside the random twin's"}.get(which)
        return f"{what}, site {site}, reduction {stat}" if what and site in sites else ""
    name = {"figure1": "Figure 1 (distributions per layer)", "figure2": "Figure 2 (layer trend)",
            "significant": "significant neurons per layer"}.get(kind)
    site = next((s for s in sorted(sites, key=len, reverse=True) if rest == s or rest.startswith(f"{s}_")), None)
    if name is None or site is None:
        return ""
    shown = rest[len(site) + 1:] or (stat if kind != "significant" else "")
    return f"{name}, site {site}" + (f", reduction {shown}" if shown else "")


def _delta_meaning(contrast: str) -> str:
    """'text − image' -> 'Δ = text − image (positive: more to the text, negative: more to the image)'."""
    first, second = contrast_sides(contrast)
    return f"Δ = {contrast} (positive: the neuron responds more to the {first}, negative: more to the {second})"


def _question(contrast: str) -> str:
    """The page's question: 'Text or image?' for the report's contrast, else 'A or B?'."""
    first, second = contrast_sides(contrast)
    return f"{first[:1].upper()}{first[1:]} or {second}?"


def render_report(out_dir: Path, stat: str = "max") -> str:
    """The report's HTML for the study in `out_dir`, led by reduction `stat`."""
    out_dir = Path(out_dir)
    tables = StudyTables.read(out_dir)
    tables.check_stat(stat, out_dir)
    prov = provenance(out_dir, tables)
    model = dict(prov.study).get("model", "")
    note = random_weights_title(out_dir)  # the demo's or a `modalscope shrink` checkpoint's
    demo = f" ({note})" if note else ""
    partial = partial_study(out_dir, tables)
    banner = f'<p class="banner" id="partial">{_esc(partial)}</p>' if partial else ""
    cards = report_cards(out_dir, tables.neurons, tables.sites)  # '' without tables/top_pairs.parquet
    ablation = ablation_section(out_dir)  # None without tables/ablation.parquet (`modalscope ablate`)
    twin = _twin_section(tables)  # '' without a random twin (--control random-twin)
    # Results first (the glance, then each site, then the cards), provenance last: a reader opens
    # the report for the answer; what was run is for checking it.
    nav = " ".join(['<a href="#glance">at a glance</a>'] + (['<a href="#twin">random twin</a>'] if twin else [])
                   + [f'<a href="#site-{_esc(s)}">site {_esc(s)}</a>' for s in tables.sites]
                   + (['<a href="#cards">neuron cards</a>'] if cards else [])
                   + (['<a href="#ablation">ablation</a>'] if ablation else [])
                   + ['<a href="#provenance">what was run</a>', '<a href="#files">tables and files</a>'])
    tokens = token_counts(out_dir)  # {stream: [input]}: Figure 2's note names the study's own lengths
    body = [*(_site_section(tables, s, stat, forgetting(out_dir, tables, s, stat), model, tokens)
              for s in tables.sites),
            cards, ablation or "", _provenance_section(prov), _files_section(out_dir, tables.sites, stat)]
    return "\n".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f"<title>modalscope report: {_esc(Path(model).name or model)}{' (random weights)' if demo and random_weights(out_dir) else ''}</title>",
        f"<style>{CSS}{CARD_CSS}</style>",
        '<script type="text/javascript">', plotlyjs_bytes().decode("utf-8"), "</script></head><body>",
        f"<header><div><h1>{_esc(_question(tables.contrast(tables.sites[0])))} Neuron by neuron: {_esc(model)}"
        f"{_esc(demo)}</h1>",
        f"<p>Study folder {_esc(out_dir.resolve())}; headline reduction over tokens: {_esc(stat)}; "
        f"{_esc(_delta_meaning(tables.contrast(tables.sites[0])))}; layers and neurons 0-indexed. "
        f"Written {time.strftime('%Y-%m-%d %H:%M')}.</p>",
        f"<nav>{nav}</nav></div></header><main>", banner, _glance(tables, stat), twin, *body, "</main></body></html>",
    ])


def write_report(out_dir: Path, stat: str = "max") -> Path:
    """Write DIR/report.html (atomically) and return its path."""
    return atomic_write(Path(out_dir) / REPORT, render_report(out_dir, stat).encode("utf-8"))
