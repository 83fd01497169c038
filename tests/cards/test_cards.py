"""Neuron cards (issue 15, part 3): tables/top_pairs.parquet of a real study equals a brute-force
top-k over the store; `modalscope neuron` writes a card with the neuron's strongest captions and
its t from Table 3, and refuses a neuron, layer or site that is not there in one line; the report
embeds the cards of its top neurons and stays under its size budget (README, Outputs)."""

from __future__ import annotations

import base64
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from cli_run import modalscope
from modalscope.store import STORE, ActivationStore
from modalscope.data.manifest import MANIFEST

K = 8
REPORT_BUDGET = 6_000_000  # bytes of report.html (README: Outputs)
CARD_BUDGET = 24_000  # bytes per embedded card


def brute_top(store: ActivationStore, site: str, layer: int, stream: str, k: int = K,
              stat: str = "max") -> dict[int, list[tuple]]:
    """{neuron: [(input_index, value), ...]}: every input's response sorted in Python."""
    values = store.read_layer(site, stream, stat, layer)  # [input, neuron], one read, holes filled
    out = {}
    for neuron in range(values.shape[1]):
        pairs = [(i, float(values[i, neuron])) for i in range(values.shape[0]) if not math.isnan(values[i, neuron])]
        out[neuron] = sorted(pairs, key=lambda p: (-p[1], p[0]))[:k]
    return out


def test_top_pairs_equals_a_brute_force_top_k_over_the_store(small_study: Path):
    store = ActivationStore.read(small_study / STORE)
    table = pd.read_parquet(small_study / "tables/top_pairs.parquet")
    assert list(table.columns) == ["site", "layer", "neuron", "modality", "rank", "input_index", "pair_id", "value",
                                   "stat"]
    assert set(table["stat"].astype(str)) == {"max"} and set(table["modality"].astype(str)) == {"text", "image"}
    ids = store.pair_ids()
    want = []
    for site in store.sites:
        for layer in range(store.n_layers):
            tops = {m: brute_top(store, site, layer, m) for m in ("text", "image")}
            for neuron in range(store.width(site)):
                for m in ("text", "image"):
                    want += [(site, layer, neuron, m, r, i, ids[i], v) for r, (i, v) in enumerate(tops[m][neuron])]
    got = list(table.drop(columns="stat").astype({"site": str, "modality": str, "pair_id": str})
               .itertuples(index=False, name=None))
    assert len(got) == len(want) == 4 * (64 + 176) * 2 * K  # layers x neurons x streams x k
    assert got == want  # the same order too: site, layer, neuron, stream, rank


def test_top_pairs_of_a_reduction_with_holes_are_its_filled_values(small_study: Path, tmp_path: Path):
    """text/matched_max is left as holes where the caption is the shortest stream (derived.py):
    `--stat matched_max` ranks the values read_layer fills in, not the holes (it found no text rows)."""
    from modalscope.cards.table import write_top_pairs

    store = ActivationStore.read(small_study / STORE)
    assert store.holes("mlp/text/matched_max", 0, store.n_done).any()
    table = pd.read_parquet(write_top_pairs(store, tmp_path / "top.parquet", "matched_max", ("text", "image")))
    for layer in (0, store.n_layers - 1):
        rows = table[(table["site"] == "mlp") & (table["layer"] == layer) & (table["modality"] == "text")]
        want = brute_top(store, "mlp", layer, "text", stat="matched_max")
        for neuron in (0, 57, store.width("mlp") - 1):
            got = rows[rows["neuron"] == neuron].sort_values("rank")
            assert list(zip(got["input_index"], got["value"])) == [(i, pytest.approx(v)) for i, v in want[neuron]]


def card_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_the_neuron_command_writes_a_card_with_its_top_captions_and_its_t(small_study: Path, tmp_path: Path,
                                                                         tiny_model_dir: Path):
    import html

    store = ActivationStore.read(small_study / STORE)
    manifest = pd.read_parquet(small_study / MANIFEST).set_index("input_index")
    t3 = pd.read_parquet(small_study / "tables/table3_neurons.parquet")
    row = t3[(t3["site"] == "mlp") & (t3["layer"] == 2) & (t3["neuron"] == 17)].iloc[0]
    out = tmp_path / "card.html"
    done = modalscope("neuron", small_study, "--site", "mlp", "--layer", "2", "--neuron", "17", "--out", out)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"  card    {out}\n", "")
    page = card_text(out)
    text_top = [i for i, _ in brute_top(store, "mlp", 2, "text")[17]]
    image_top = [i for i, _ in brute_top(store, "mlp", 2, "image")[17]]
    captions = [html.escape(manifest.loc[i, "caption"]) for i in text_top]
    positions = [page.index(c) for c in captions]  # every top caption, in rank order
    assert positions == sorted(positions)
    numbers = re.search(r'<table class="numbers">.*?<tbody><tr>(.*?)</tr>', page, re.S)[1]
    cells = re.findall(r"<td>(.*?)</td>", numbers)
    assert cells == [f"{row['mean_diff']:.4g}", f"{row['t_value']:.4g}", f"{row['q_value']:.3g}",
                     f"{row['cohen_d']:.4g}", f"{row['xmodal_r']:.4g}"]
    images = re.findall(r'<img src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(images) == len(image_top) == K
    assert all(base64.b64decode(b)[:2] == b"\xff\xd8" for b in images)  # JPEGs
    shared = [i for i in text_top if i in set(image_top)]
    assert page.count('class="both"') == 2 * len(shared)  # marked in both sets
    assert "http" not in page.replace("http-equiv", "")  # offline: no link out
    # a card saved on its own names its model and study
    assert f'<p class="note" id="origin">model {tiny_model_dir}; study {small_study.resolve()}</p>' in page
    study = tmp_path / "study"  # the default place, DIR/cards/, in a copy of the study's tables
    (study / "tables").mkdir(parents=True)
    for name in ("tables/table3_neurons.parquet", "tables/top_pairs.parquet", "manifest.parquet"):
        shutil.copy(small_study / name, study / name)
    (study / STORE).symlink_to(small_study / STORE)
    more = modalscope("neuron", study, "--site", "mlp", "--layer", "2", "--neuron", "17", "--top", "10")
    card = study / "cards/mlp_layer2_neuron17.html"
    assert (more.returncode, more.stdout) == (0, f"  card    {card}\n")
    ten = [html.escape(manifest.loc[i, "caption"]) for i, _ in brute_top(store, "mlp", 2, "text", 10)[17]]
    assert all(c in card_text(card) for c in ten)  # more than the table ranked: read from the store
    assert len(re.findall(r"<img ", card_text(card))) == 10


@pytest.mark.parametrize("args, message", [
    (("--site", "mlp", "--layer", "1", "--neuron", "176"), "--neuron 176: site mlp has neurons 0-175"),
    (("--site", "residual", "--layer", "0", "--neuron", "64"), "--neuron 64: site residual has neurons 0-63"),
    (("--site", "mlp", "--layer", "4", "--neuron", "0"), "--layer 4: the model has layers 0-3"),
    (("--site", "attn", "--layer", "0", "--neuron", "0"), "--site attn: the study recorded residual, mlp"),
    (("--site", "mlp", "--layer", "0", "--neuron", "0", "--top", "0"), "--top 0: must be at least 1"),
])
def test_a_neuron_that_is_not_there_is_one_line_naming_the_valid_range(small_study: Path, args, message):
    done = modalscope("neuron", small_study, *args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"modalscope: error: {message}\n")
    assert not (small_study / "cards").exists()


def test_the_report_embeds_the_cards_of_its_top_neurons_under_the_size_budget(small_study: Path):
    page = (small_study / "report.html").read_text(encoding="utf-8")
    t3 = pd.read_parquet(small_study / "tables/table3_neurons.parquet")
    section = page[page.index('<section id="cards">'):]
    section = section[:section.index("</section>")]
    want = []
    for site in ("residual", "mlp"):
        rows = t3[(t3["site"] == site) & (t3["q_value"] < 0.05)]
        want += [rows[rows["t_value"] > 0].sort_values("t_value", ascending=False).head(3),
                 rows[rows["t_value"] < 0].sort_values("t_value").head(3)]
    ids = [f'card-{r.site}-{r.layer}-{r.neuron}' for frame in want for r in frame.itertuples()]
    assert ids and re.findall(r'<div class="card" id="([^"]+)"', section) == ids
    assert '<a href="#cards">neuron cards</a>' in page
    assert len(page.encode("utf-8")) < REPORT_BUDGET
    assert len(section.encode("utf-8")) < CARD_BUDGET * len(ids)
    thumbs = re.findall(r'<img src="data:image/jpeg;base64,([^"]+)"', section)
    assert len(thumbs) == K * len(ids)
    from io import BytesIO

    from PIL import Image

    assert max(max(Image.open(BytesIO(base64.b64decode(b))).size) for b in thumbs) == 64
    rows = pq.read_table(small_study / "tables/top_pairs.parquet").num_rows
    assert "top_pairs.parquet</a></td><td class=\"l\">per neuron and stream" in page and rows == 4 * 240 * 2 * K


def test_the_report_picks_each_kind_by_t_and_q_and_the_cross_modal_ones_by_xmodal_r_when_there():
    from modalscope.cards.card import Pairs, card_from, chosen_neurons, render_card
    from modalscope.cards.thumbnails import Thumbnails

    t3 = pd.DataFrame({"site": "mlp", "layer": 0, "neuron": range(8),
                       "t_value": [5.0, 9.0, -7.0, 3.0, -2.0, 8.0, -9.5, 1.0],
                       "q_value": [0.01, 0.2, 0.01, 0.04, 0.03, 0.001, 0.5, 0.01],
                       "xmodal_r": [0.9, 0.95, 0.1, 0.5, 0.7, 0.2, 0.99, 0.6],
                       "xmodal_q": [0.01, 0.06, 0.01, 0.01, 0.01, 0.01, 0.2, 0.01],
                       "mean_diff": 1.0, "cohen_d": 0.5})
    kinds = {kind: rows["neuron"].tolist() for kind, rows in chosen_neurons(t3, "max", "text - image", 2)}
    assert kinds == {"text-preferring": [5, 0], "image-preferring": [2, 4], "most cross-modal": [0, 4]}
    without = chosen_neurons(t3.drop(columns=["xmodal_r", "xmodal_q"]), "max", "text - image", 2)
    assert [kind for kind, _ in without] == ["text-preferring", "image-preferring"]
    card = card_from(t3.iloc[0], "max", "text - image", [], Pairs(pd.DataFrame(
        {"input_index": [], "caption": [], "image_path": []})))
    assert "<td>0.9</td>" in render_card(card, Thumbnails())  # xmodal_r shown when Table 3 has it
