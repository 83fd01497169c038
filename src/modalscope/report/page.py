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

import time
from pathlib import Path

import pandas as pd

from modalscope.cards.card import CARD_CSS, report_cards
from modalscope.figures.assemble import (
    StudyTables,
)
from modalscope.figures.export import atomic_write, plotlyjs_bytes
from modalscope.figures.trend import token_counts
from modalscope.ablation.report import ablation_section
from modalscope.figures.style import (
    contrast_sides, preferring,
)
from modalscope.report.facts import (
    SIGNIFICANT_Q, Provenance, figure_files, forgetting, partial_study,
    provenance, random_weights, random_weights_title, table_files, twin_rows,
)
from modalscope.report.headline import MATCHED, NAMES, RAW, headline

from modalscope.report.html import CSS, SKIPPED_SHOWN, _esc, _kv, _p_floor, _table
from modalscope.report.sections import _figure2_note, _site_section  # noqa: F401 - _figure2_note: tests import it here
from modalscope.outputs import FIGURES, REPORT, describe


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
        what = _esc(describe(f"{FIGURES}/{stem}.html", sites, stat))  # the catalogue's line (outputs.py)
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
