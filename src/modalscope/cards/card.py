"""One neuron's card: the captions and the images that excite it most, beside its Table 3 numbers.

Why: Δ and t say which modality drives a neuron harder on average, not what drives it. The card
shows the pairs with its highest responses in each contrasted stream (from
tables/top_pairs.parquet), its Δ, t, q, d_z and, when the analysis measured it, the cross-modal
correlation xmodal_r, and marks the pairs that are in both top sets: a neuron whose strongest
captions and strongest images are the same pairs may answer to the scene rather than to the
modality (a hint for a few pairs; the cross-modal correlation over all pairs is the measure).

The same HTML fragment stands alone (`modalscope neuron`, `card_page`) and sits in the report
(`report_cards`). Every value from the study is HTML-escaped; images are embedded thumbnails.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from modalscope.cards.table import (
    TOP_PAIRS, layer_rows, layer_top, neuron_top_pairs, sites_top_pairs,
)
from modalscope.cards.thumbnails import REPORT_SIZE, Thumbnails
from modalscope.concepts import concepts_sentence, neuron_concepts
from modalscope.figures.style import contrast_label, format_p, preferring
from modalscope.stats.columns import column
from modalscope.stats.fdr import ALPHA as SIGNIFICANT_Q
from modalscope.stats.top_pairs import DEFAULT_K
from modalscope.tables import TABLE3, read_provenance

CARDS_PER_KIND = 3  # per kind and site in the report
# The card's numbers: (Table 3 column, as the card names it); the reduction's suffix is added.
NUMBERS = (("mean_diff", "Δ"), ("t_value", "t"), ("q_value", "q"), ("cohen_d", "d_z"), ("xmodal_r", "xmodal_r"))

CARD_CSS = """
.card { border: 1px solid #d8dde3; border-radius: 4px; padding: 8px 12px; margin: 10px 0; max-width: 1180px; }
.card h4 { margin: 2px 0 6px; }
.card .numbers td, .card .numbers th { padding: 2px 8px; }
.card .sets { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.card .captions { max-width: 560px; }
.card .captions td.l { text-align: left; }
.card .images { display: flex; flex-wrap: wrap; gap: 6px; max-width: 560px; }
.card figure { margin: 0; width: 100px; font-size: 11px; text-align: center; }
.card figure img { display: block; margin: 0 auto; border: 2px solid transparent; }
.card .both { background: #fff4e0; }
.card figure.both img { border-color: #E69F00; }
.card .missing { display: block; width: 64px; height: 48px; margin: 0 auto; background: #eee; color: #888;
  font-size: 10px; line-height: 48px; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(value: object, name: str) -> str:
    try:
        value = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "—"
    if math.isnan(value):
        return "—"
    return format_p(value) if name in ("q_value", "p_value") else f"{value:.4g}"


@dataclass(frozen=True)
class TopPair:
    """One row of a card's top set: the pair, its rank in the stream and the neuron's response."""

    rank: int  # 0: the highest response
    input_index: int
    pair_id: str
    value: float
    caption: str
    image_path: str


@dataclass
class NeuronCard:
    site: str
    layer: int
    neuron: int
    stat: str  # the reduction over tokens that ranked the pairs and whose Table 3 columns are shown
    contrast: str  # 'text − image'
    numbers: dict[str, float | None]  # Table 3 name (unsuffixed) -> value; None: not in Table 3
    top: dict[str, list[TopPair]]  # stream -> its top set, rank 0 first
    model: str = ""  # the study's model and folder: a card saved on its own still says where it is from
    study: str = ""
    concepts: dict = field(default_factory=dict)  # concepts.neuron_concepts: its top concepts per modality
    ablations: list[str] = field(default_factory=list)  # ablation.report.card_lines: the ablated sets it is in

    @property
    def overlap(self) -> list[int]:
        """Input indices in the top sets of both streams (the first two), in the first's rank order."""
        sets = list(self.top.values())
        if len(sets) < 2:
            return []
        second = {p.input_index for p in sets[1]}
        return [p.input_index for p in sets[0] if p.input_index in second]


class Pairs:
    """The manifest's caption and image file per input index, looked up without pandas per row."""

    def __init__(self, manifest: pd.DataFrame) -> None:
        self.captions = dict(zip(manifest["input_index"].tolist(), manifest["caption"].tolist()))
        self.images = dict(zip(manifest["input_index"].tolist(), manifest["image_path"].tolist()))


def card_from(row: pd.Series, stat: str, contrast: str, top: list[dict], pairs: Pairs) -> NeuronCard:
    """A card from the neuron's Table 3 row, its rows of top_pairs and the manifest's pairs."""
    numbers = {name: (row[column(name, stat)] if column(name, stat) in row.index else None) for name, _ in NUMBERS}
    sets: dict[str, list[TopPair]] = {}
    for r in top:
        index = int(r["input_index"])
        sets.setdefault(str(r["modality"]), []).append(TopPair(
            int(r["rank"]), index, str(r["pair_id"]), float(r["value"]), str(pairs.captions.get(index, "")),
            str(pairs.images.get(index) or "")))
    return NeuronCard(str(row["site"]), int(row["layer"]), int(row["neuron"]), stat, contrast_label(contrast),
                      numbers, sets)


def render_card(card: NeuronCard, thumbs: Thumbnails, heading: str = "", explain: bool = True) -> str:
    """The card as an HTML fragment (a div), thumbnails from `thumbs`; `explain`: with the sentence
    saying what its numbers are (the report says it once for all its cards)."""
    both = set(card.overlap)
    numbers = "".join(f"<th>{_esc(label)}</th>" for _, label in NUMBERS)
    values = "".join(f"<td>{_esc(_number(card.numbers[name], name))}</td>" for name, _ in NUMBERS)
    parts = [f'<div class="card" id="card-{_esc(card.site)}-{card.layer}-{card.neuron}">',
             f"<h4>{_esc(heading + ': ' if heading else '')}site {_esc(card.site)}, layer {card.layer}, "
             f"neuron {card.neuron}</h4>",
             f'<table class="numbers"><thead><tr>{numbers}</tr></thead><tbody><tr>{values}</tr></tbody></table>',
             f'<p class="note">{_explanation(card) + " " if explain else ""}{_overlap_sentence(card)}</p>',
             *([f'<p class="note concepts">{_esc(concepts_sentence(card.concepts))}</p>'] if card.concepts else []),
             *(f'<p class="note ablation">{_esc(line)}</p>' for line in card.ablations),
             '<div class="sets">']
    for stream, rows in card.top.items():
        parts.append(_image_set(stream, rows, both, thumbs) if "image" in stream else _caption_set(stream, rows, both))
    parts.append("</div></div>")
    return "\n".join(parts)


def _explanation(card: NeuronCard) -> str:
    return (f"Δ = {_esc(card.contrast)} and its t, q (FDR over the site) and d_z, reduction {_esc(card.stat)}; "
            "xmodal_r: the correlation over pairs of the neuron's text and image responses (— where the analysis "
            "did not measure it).")


def _overlap_sentence(card: NeuronCard) -> str:
    streams = list(card.top)
    if len(streams) < 2:
        return ""
    shared = card.overlap
    if not shared:
        return f"No pair is in both top sets ({_esc(streams[0])}, {_esc(streams[1])})."
    ids = ", ".join(_esc(p.pair_id) for p in card.top[streams[0]] if p.input_index in set(shared))
    return (f"{len(shared)} pair{'s are' if len(shared) > 1 else ' is'} in both top sets, marked: {ids}.")


def _caption_set(stream: str, rows: list[TopPair], both: set[int]) -> str:
    body = "".join(
        f'<tr{_both(r.input_index, both)}><td>{r.rank + 1}</td><td>{_esc(_number(r.value, ""))}'
        f'</td><td class="l">{_esc(r.pair_id)}</td><td class="l">{_esc(r.caption)}'
        f'{" ●" if r.input_index in both else ""}</td></tr>' for r in rows)
    return (f'<div class="captions"><b>{_esc(_title(stream))}</b><table class="compact"><thead><tr><th>rank</th>'
            f'<th>response</th><th class="l">pair</th><th class="l">caption</th></tr></thead><tbody>{body}'
            "</tbody></table></div>")


def _image_set(stream: str, rows: list[TopPair], both: set[int], thumbs: Thumbnails) -> str:
    figures = []
    for r in rows:
        uri = thumbs(r.image_path)
        what = f"pair {r.pair_id}: {r.caption}"
        image = (f'<img src="{uri}" alt="{_esc(what)}" title="{_esc(what)}">' if uri
                 else f'<span class="missing" title="{_esc(r.image_path)}">no image</span>')
        mark = " ●" if r.input_index in both else ""
        figures.append(f'<figure{_both(r.input_index, both)}>{image}<figcaption>#{r.rank + 1} '
                       f"{_esc(_number(r.value, ''))}<br>pair {_esc(r.pair_id)}{mark}</figcaption></figure>")
    return (f'<div><b>{_esc(_title(stream))}</b><div class="images">{"".join(figures)}</div></div>')


def _both(index: int, both: set[int]) -> str:
    return ' class="both"' if index in both else ""


def _title(stream: str) -> str:
    what = "captions" if stream == "text" else "images" if stream == "image" else f"{stream} inputs"
    return f"The {what} that excite it most ({stream} response, highest first)"


def card_page(card: NeuronCard, thumbs: Thumbnails) -> str:
    """A whole offline HTML page holding one card."""
    title = f"modalscope neuron card: site {card.site}, layer {card.layer}, neuron {card.neuron}"
    origin = "; ".join(x for x in ((f"model {card.model}" if card.model else ""),
                                    (f"study {card.study}" if card.study else "")) if x)
    return "\n".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">', f"<title>{_esc(title)}</title>",
        '<style>body { font-family: "Liberation Sans", Arial, Helvetica, sans-serif; margin: 16px; color: #222; }'
        "table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }"
        "th, td { border: 1px solid #d8dde3; padding: 3px 8px; text-align: right; vertical-align: top; }"
        "th { background: #f3f5f7; } th.l { text-align: left; } .note { color: #555; font-size: 13px; }"
        f"{CARD_CSS}</style></head><body>",
        *([f'<p class="note" id="origin">{_esc(origin)}</p>'] if origin else []),
        render_card(card, thumbs), "</body></html>",
    ])


# The card of one neuron from a study folder (`modalscope neuron`) ----------------------------
def neuron_card(out_dir: Path, site: str, layer: int, neuron: int, top: int | None = None) -> NeuronCard:
    """The card of (site, layer, neuron) of the study in `out_dir`: `top` pairs per stream (default
    the table's k). A neuron Table 3 does not have is a one-line ValueError naming the valid range;
    more pairs than top_pairs.parquet holds are read from the store."""
    from modalscope.data.manifest import load_manifest

    if top is not None and top < 1:
        raise ValueError(f"--top {top}: must be at least 1")
    out_dir = Path(out_dir)
    from modalscope import outputs  # the tables at their catalogue paths

    table3 = outputs.table(TABLE3).at(out_dir)
    if not table3.exists():
        raise FileNotFoundError(f"{out_dir}: no {outputs.table(TABLE3).path}; run `modalscope analyze {out_dir}` first")
    row = _table3_row(table3, site, layer, neuron)
    path = outputs.table(TOP_PAIRS).at(out_dir)
    meta = read_provenance(path).get("top_pairs", {}) if path.exists() else {}
    stat, k = meta.get("stat", "max"), int(meta.get("k", 0))
    contrast = str(row.get("contrast", "text - image"))
    streams = meta.get("modalities") or [s.strip() for s in contrast.split(" - ")]
    rows = neuron_top_pairs(path, site, layer, neuron) if path.exists() else None
    if rows is None or (top is not None and top > k):
        rows = _from_store(out_dir, site, layer, neuron, stat, streams, top or DEFAULT_K)
    elif top is not None:
        rows = [r for r in rows if r["rank"] < top]
    from dataclasses import replace

    from modalscope.report.facts import study_model

    card = card_from(row, stat, contrast, rows, Pairs(load_manifest(out_dir)[0]))
    from modalscope.ablation.report import card_lines

    return replace(card, model=study_model(out_dir), study=str(out_dir.resolve()),
                   concepts=neuron_concepts(out_dir, site, layer, neuron, stat),
                   ablations=card_lines(out_dir, site, layer, neuron))


def _table3_row(path: Path, site: str, layer: int, neuron: int) -> pd.Series:
    keys = pq.read_table(path, columns=["site", "layer", "neuron"]).to_pandas()
    sites = list(dict.fromkeys(keys["site"].astype(str)))
    if site not in sites:
        raise ValueError(f"--site {site}: the study recorded {', '.join(sites)}")
    here = keys[keys["site"].astype(str) == site]
    n_layers, width = int(here["layer"].max()) + 1, int(here["neuron"].max()) + 1
    if not 0 <= layer < n_layers:
        raise ValueError(f"--layer {layer}: the model has layers 0-{n_layers - 1}")
    if not 0 <= neuron < width:
        raise ValueError(f"--neuron {neuron}: site {site} has neurons 0-{width - 1}")
    frame = pq.read_table(path, filters=[("site", "==", site), ("layer", "==", layer),
                                         ("neuron", "==", neuron)]).to_pandas()
    return frame.iloc[0]


def _from_store(out_dir: Path, site: str, layer: int, neuron: int, stat: str, streams: list[str],
                k: int) -> list[dict]:
    import numpy as np
    import pyarrow as pa

    from modalscope.folder import study_store

    store = study_store(out_dir)
    tops = {c: layer_top(store, site, layer, c, stat, k, neurons=[neuron]) for c in streams}
    return layer_rows(site, layer, tops, np.asarray([neuron]), pa.array(store.pair_ids()), stat).to_pylist()


# The report's cards ---------------------------------------------------------------------------
def chosen_neurons(neurons: pd.DataFrame, stat: str, contrast: str,
                   per_kind: int = CARDS_PER_KIND) -> list[tuple[str, pd.DataFrame]]:
    """(kind, Table 3 rows) of one site: the largest t with q < 0.05 (Δ > 0), the smallest t with
    q < 0.05 (Δ < 0), and, when Table 3 has xmodal_r, the largest xmodal_r with xmodal_q < 0.05."""
    t, q = column("t_value", stat), column("q_value", stat)
    significant = neurons[neurons[q] < SIGNIFICANT_Q]
    up, down = preferring(contrast_label(contrast))
    kinds = [(up, significant[significant[t] > 0].nlargest(per_kind, t)),
             (down, significant[significant[t] < 0].nsmallest(per_kind, t))]
    r, rq = column("xmodal_r", stat), column("xmodal_q", stat)
    if r in neurons.columns and rq in neurons.columns:
        crossing = neurons[neurons[rq] < SIGNIFICANT_Q]
        kinds.append(("most cross-modal", crossing.nlargest(per_kind, r)))
    return kinds


def report_cards(out_dir: Path, neurons: pd.DataFrame, sites: list[str], per_kind: int = CARDS_PER_KIND) -> str:
    """The report's section of neuron cards ('' when the analysis wrote no top_pairs.parquet)."""
    from modalscope.ablation.report import card_lines

    from modalscope.data.manifest import load_manifest

    from modalscope import outputs  # the table at its catalogue path

    out_dir = Path(out_dir)
    path = outputs.table(TOP_PAIRS).at(out_dir)
    if not path.exists():
        return ""
    stat = read_provenance(path).get("top_pairs", {}).get("stat", "max")
    pairs = Pairs(load_manifest(out_dir)[0])
    thumbs = Thumbnails(REPORT_SIZE)
    parts = ['<section id="cards"><h2>Neuron cards</h2>',
             f'<p class="note">Per site, the {per_kind} neurons of each kind with q &lt; {SIGNIFICANT_Q} (reduction '
             f"{_esc(stat)}): the pairs with their highest responses in each stream, ranked by the analysis "
             "(tables/top_pairs.parquet), pairs in both top sets marked ●. Each card: Δ (the study's contrast) with "
             "its t, q (FDR over the site) and d_z; xmodal_r, the correlation over pairs of the neuron's text and "
             "image responses (— where the analysis did not measure it). `modalscope neuron DIR --site S --layer L "
             "--neuron N` writes the card of any neuron.</p>"]
    for site in sites:
        here = neurons[neurons["site"].astype(str) == site]
        contrast = str(here["contrast"].iloc[0]) if "contrast" in here.columns and len(here) else "text - image"
        parts.append(f'<h3 id="cards-{_esc(site)}">Site {_esc(site)}</h3>')
        kinds = chosen_neurons(here, stat, contrast, per_kind)
        chosen = pd.concat([rows for _, rows in kinds])
        top = sites_top_pairs(path, site, chosen["layer"].tolist(), chosen["neuron"].tolist())
        for kind, rows in kinds:
            if rows.empty:
                parts.append(f'<p class="note">{_esc(kind)}: no neuron with q &lt; {SIGNIFICANT_Q}.</p>')
            for _, row in rows.iterrows():
                mine = top.get((int(row["layer"]), int(row["neuron"])), [])
                card = card_from(row, stat, contrast, mine, pairs)
                card.concepts = neuron_concepts(out_dir, site, int(row["layer"]), int(row["neuron"]), stat)
                card.ablations = card_lines(out_dir, site, int(row["layer"]), int(row["neuron"]))
                parts.append(render_card(card, thumbs, heading=kind, explain=False))
    parts.append("</section>")
    return "\n".join(parts)
