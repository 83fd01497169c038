"""The report's HTML pieces: escaping, number cells, tables, key-value lists and figure divs.

Why apart: every section of the page writes its numbers the same way (p and q as the figures'
legends write them, a permutation p at its floor as '≤ ...'), and every value from the study is
HTML-escaped here: captions and paths are user data.
"""

from __future__ import annotations

import html
import math
import numbers

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from modalscope.figures.assemble import StudyTables
from modalscope.figures.export import HTML_CONFIG
from modalscope.figures.style import format_p, permutation_floor


SHUFFLED_P = "shuffled-pairing p"  # the alignment's permutation p (over layers, at the peak)
P_COLUMNS = ("p", "q", "p_perm", "sign-flip p", SHUFFLED_P)  # cells written by format_p, as the legends are
PERMUTATION_COLUMNS = ("p_perm", "sign-flip p", SHUFFLED_P)  # permutation p: at its floor 1/(P+1) it reads "≤ ..."

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


