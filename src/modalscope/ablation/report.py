"""The ablation's figure and its report section, from tables/ablation.parquet alone.

Why: an effect means something only beside its control, so every set is drawn with the band
of its R random sets (2.5% to 97.5% of their effects, with their mean) and its own 95% CI over
pairs; one panel per readout, sets along x, methods side by side. The section states the design
in a sentence (what was ablated to what, which pairs were scored, what the p is against) and
shows the table; `ablation_section(DIR)` returns it as an HTML fragment (None without the
table), for the report page to place where it likes.
"""

from __future__ import annotations

import functools

import html
import math
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

READOUT_TITLES = {"image": "log p(caption | image), nats", "text": "log p(caption), text-only input, nats",
                  "image_concept": "log p(concept words | image), nats",
                  "text_concept": "log p(concept words), text-only input, nats",
                  **{f"generated_{f}_acc": f"accuracy of the {f} word of the generated caption"
                     for f in ("colour", "shape", "count", "size")}}
METHOD_COLORS = {"mean": "#1f77b4", "zero": "#d62728"}


def _labels(frame: pd.DataFrame) -> pd.Series:
    return frame["set"].astype(str) + " · " + frame["site"].astype(str) + " · " + frame["layer_band"].astype(str) \
        + " · k=" + frame["k"].astype(str)


def figure_ablation(frame: pd.DataFrame) -> go.Figure:
    """Effect of each set (CI over pairs) against the band of its random sets, per readout."""
    readouts = list(dict.fromkeys(frame["readout"].astype(str)))
    fig = make_subplots(rows=len(readouts), cols=1, shared_xaxes=False, vertical_spacing=0.18,
                        subplot_titles=[READOUT_TITLES.get(r, r) for r in readouts])
    methods = list(dict.fromkeys(frame["method"].astype(str)))
    for row, readout in enumerate(readouts, start=1):
        part = frame[frame["readout"] == readout]
        for method in methods:
            sub = part[part["method"] == method]
            x = [list(_labels(sub)), [method] * len(sub)]
            first = row == 1
            fig.add_trace(go.Bar(x=x, base=sub["random_low"], y=sub["random_high"] - sub["random_low"],
                                 marker_color="rgba(150,150,150,0.35)", name="random sets, 95% band",
                                 legendgroup="random", showlegend=first and method == methods[0],
                                 hovertemplate="random 2.5%%-97.5%%: %{base:.4g} to %{customdata:.4g}<extra></extra>",
                                 customdata=sub["random_high"]), row=row, col=1)
            fig.add_trace(go.Scatter(x=x, y=sub["random_mean"], mode="markers", marker_symbol="line-ew-open",
                                     marker={"size": 18, "color": "grey"}, name="random sets, mean",
                                     legendgroup="random_mean", showlegend=first and method == methods[0]),
                          row=row, col=1)
            fig.add_trace(go.Scatter(
                x=x, y=sub["effect"], mode="markers", marker={"size": 9, "color": METHOD_COLORS.get(method)},
                error_y={"type": "data", "symmetric": False, "array": sub["ci_high"] - sub["effect"],
                         "arrayminus": sub["effect"] - sub["ci_low"]},
                name=f"{method} ablation (95% CI over pairs)", legendgroup=method, showlegend=first,
                customdata=sub[["p_random", "n_pairs", "n_random"]].to_numpy(),
                hovertemplate="effect %{y:.4g}<br>p vs random %{customdata[0]:.3g}<br>%{customdata[1]} pairs, "
                              "%{customdata[2]} random sets<extra></extra>"), row=row, col=1)
        fig.add_hline(y=0, line_color="black", line_width=1, row=row, col=1)
        fig.update_yaxes(title_text="Δ readout (ablated − intact)", row=row, col=1)
    fig.update_layout(title="Ablating the neurons the statistics select, against random sets of the same "
                            "site, layers and size", barmode="overlay", height=380 * len(readouts) + 120,
                      template="plotly_white")
    return fig


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def ablation_section(out_dir: Path) -> str | None:
    """The report's ablation section (an HTML fragment: heading, design, figure, table), or None
    when the study has no tables/ablation.parquet. The page must load plotly.js (the report does)."""
    from modalscope import outputs
    from modalscope.tables import read_provenance

    path = outputs.table(outputs.ABLATION).at(out_dir)
    if not path.exists():
        return None
    frame = pd.read_parquet(path)
    meta = read_provenance(path).get("ablation", {})
    means = meta.get("means_from_inputs", ["?", "?"])
    scored = meta.get("scored_inputs", ["?", "?"])
    n_random = int(frame["n_random"].max()) if len(frame) else 0
    if means:
        how = (f"set to 0 (zero ablation) or to their mean over inputs {means[0]}-{int(means[1]) - 1} of the manifest "
               "(mean ablation; the store's mean reduction, in the readout's condition), at every position,")
        where = f"on the other pairs (inputs {scored[0]}-{int(scored[1]) - 1})"
    else:
        how = "set to 0 at every position,"
        where = f"on inputs {scored[0]}-{int(scored[1]) - 1} of the manifest"
    readouts = set(frame["readout"].astype(str))
    what = "the caption's teacher-forced log-likelihood" if readouts - {r for r in readouts
                                                                        if r.startswith("generated_")} else ""
    if any(r.startswith("generated_") for r in readouts):
        what += (" and " if what else "") + (
            f"the accuracy of the colour, shape, count and size words of the caption the model generated greedily "
            f"from the image alone (at most {meta.get('new_tokens', 24)} tokens; 1 right, 0 wrong or unstated)")
    design = (
        f"Each set's neurons were {how} and {what} was measured {where}. Effect: the mean change over those "
        f"pairs, with its 95% t-interval; p: against {n_random} random sets of the same site, layers and size "
        f"(floor {1 / (1 + n_random):.3g}).")
    div = figure_ablation(frame).to_html(full_html=False, include_plotlyjs=False, div_id="fig-ablation",
                                         default_width="100%")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return (f'<section id="ablation"><h2>Ablation: do the selected neurons matter?</h2>'
            f"<p>{html.escape(design)}</p><div class=\"figure\">{div}</div>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>")


@functools.lru_cache(maxsize=8)
def _read(path: Path, mtime_ns: int) -> pd.DataFrame:
    """A table read once per version of the file: the report asks for it once per card."""
    return pd.read_parquet(path)


def card_lines(out_dir: Path, site: str, layer: int, neuron: int) -> list[str]:
    """One sentence per ablated set that holds this neuron (for its neuron card), or [] when the
    study has no ablation or the neuron is in none of its sets."""
    from modalscope import outputs

    members, table = outputs.table(outputs.ABLATION_SETS).at(out_dir), outputs.table(outputs.ABLATION).at(out_dir)
    if not members.exists() or not table.exists():
        return []
    sets = _read(members, members.stat().st_mtime_ns)
    mine = sets[(sets["site"] == site) & (sets["layer"] == layer) & (sets["neuron"] == neuron)]
    if mine.empty:
        return []
    effects = _read(table, table.stat().st_mtime_ns).merge(mine[["set", "site", "layer_band"]].drop_duplicates(),
                                                     on=["set", "site", "layer_band"])
    return [f"In the ablated set {r.set} · {r.site} · layers {r.layer_band} (k={r.k}): {r.method} ablation changed "
            f"{READOUT_TITLES.get(r.readout, r.readout)} by {_fmt(r.effect)} (95% CI {_fmt(r.ci_low)} to "
            f"{_fmt(r.ci_high)}, {r.n_pairs} pairs); p against {r.n_random} random sets {_fmt(r.p_random)}."
            for r in effects.itertuples(index=False)]
