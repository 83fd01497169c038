"""Concepts: the neurons selective for a concept from the caption, from the image, and from both.

Why: Table 3 says whether a neuron prefers text or images, not what it responds to. When the
pairs carry concept labels (manifest column `concepts`: the drawn world's colour, shape and
count from its `instances_demo.json`, COCO's object categories from `--instances`, a JSONL
line's `concepts` list), this stage asks per neuron, modality and concept whether the neuron's
response separates the pairs with the concept from those without it (AUROC, Mann-Whitney p, BH
q; stats/concepts.py), and which neurons do so for the same concept in the same direction from
the caption alone and from the image alone: the "imagery neurons", concept by concept, counted
against the same count under shuffled concept labels.

Outputs (`concept_stage`, called by the analyze stage):

* tables/concepts.parquet: one row per site, reduction, layer, neuron and tested concept:
  auroc_text, p_text, q_text, auroc_image, p_image, q_image, agree, n_with, n_without (above
  ROW_LIMIT rows only the rows with q < 0.05 in either modality are kept; summary.json says so);
* summary.json, per site, `concepts`: for the reduction `max` (and under `by_stat` the
  length-matched max), per concept the selective and imagery neuron counts, the imagery neurons
  named (layer, neuron; strongest first) and the shuffled-label null; the same for all concepts.

A study whose manifest has no concept labels (or no concept with MIN_GROUP pairs on both sides)
gets none of it: the table and the summary entries of an earlier analysis are removed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from modalscope.stats.concepts import (
    ALPHA, MIN_GROUP, ConceptLabels, Ranked, ShuffledNull, agreeing, concept_labels, null_summary, overlap_null,
    overlap_summary, q_values,
)
from modalscope.outputs import CONCEPTS  # the table's name; its one home: outputs.py

STATS = ("max", "matched_max")  # the reductions tested, those the store recorded; the first leads
MODALITIES = ("text", "image")  # the caption alone, the image alone
N_SHUFFLES = 100  # shuffled-label permutations of the null (fewer for large studies: n_shuffles)
NULL_CELLS = 2_000_000  # neuron x concept cells of a site up to which the null takes N_SHUFFLES
MIN_SHUFFLES = 20
ROW_LIMIT = 5_000_000  # rows of concepts.parquet beyond which only selective rows are kept
TOP_NEURONS = 10  # imagery neurons named per concept in summary.json
# The null's random stream: child 64 of SeedSequence(seed), outside seeds.STREAMS (children 0-5),
# so it draws independently of the shuffle, the sign flips and the bootstraps.
NULL_SPAWN_KEY = 64
COLUMNS = ["site", "stat", "layer", "neuron", "concept", "auroc_text", "p_text", "q_text", "auroc_image", "p_image",
           "q_image", "agree", "n_with", "n_without"]


def n_shuffles(n_layers: int, width: int, n_concepts: int) -> int:
    """Permutations of the null: N_SHUFFLES, fewer (at least MIN_SHUFFLES) when a site's neuron x
    concept cells pass NULL_CELLS, so the null costs about as much as NULL_CELLS cells would."""
    cells = n_layers * width * n_concepts
    return N_SHUFFLES if cells <= NULL_CELLS else max(MIN_SHUFFLES, int(N_SHUFFLES * NULL_CELLS / cells))


def null_generator(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(NULL_SPAWN_KEY,)))


def site_concepts(store, site: str, stat: str, labels: ConceptLabels, seed: int,
                  shuffles: int | None = None, selective_only: bool = False) -> tuple[pd.DataFrame, dict]:
    """(rows of concepts.parquet, summary entry) of one site and reduction: every layer ranked
    once per modality, tested for every concept, then q over the site's neurons per concept.
    `selective_only`: only the rows with q < ALPHA in either modality."""
    k, width, n_layers = len(labels.names), store.width(site), store.n_layers
    shuffles = n_shuffles(n_layers, width, k) if shuffles is None else shuffles
    null = ShuffledNull(labels.matrix, shuffles, null_generator(seed))
    auroc = {m: np.empty((n_layers, width, k)) for m in MODALITIES}
    p = {m: np.empty((n_layers, width, k)) for m in MODALITIES}
    n_with = np.empty((n_layers, k), dtype=np.int64)
    kept_rows = np.empty(n_layers, dtype=np.int64)  # labelled pairs tested per layer
    for layer in range(n_layers):
        values = {m: store.read_layer(site, m, stat, layer)[labels.rows] for m in MODALITIES}
        # a pair without any response in a modality (all NaN) is left out of this layer in both
        kept = np.logical_and.reduce([~np.isnan(v).all(axis=1) for v in values.values()])
        every = bool(kept.all())
        ranked = {m: Ranked.of(v if every else v[kept]) for m, v in values.items()}
        matrix = labels.matrix if every else labels.matrix[kept]
        n_with[layer], kept_rows[layer] = matrix.sum(axis=0), len(matrix)
        for m in MODALITIES:
            auroc[m][layer], p[m][layer] = ranked[m].test(matrix)
        null.add(ranked, None if every else kept)
    q = {m: np.stack([q_values(p[m][..., c].ravel()) for c in range(k)], axis=-1).reshape(n_layers, width, k)
         for m in MODALITIES}
    agree = agreeing(auroc["text"], q["text"], auroc["image"], q["image"])
    rows = np.ones(agree.size, dtype=bool) if not selective_only else (
        (q["text"] < ALPHA) | (q["image"] < ALPHA)).ravel()
    layer, neuron, concept = (a.ravel()[rows] for a in np.meshgrid(np.arange(n_layers), np.arange(width),
                                                                      np.arange(k), indexing="ij"))
    frame = pd.DataFrame({
        "site": site, "stat": stat, "layer": layer.astype(np.int64), "neuron": neuron.astype(np.int64),
        "concept": np.asarray(labels.names, dtype=object)[concept],
        **{f"{name}_{m}": values[m].ravel()[rows] for m in MODALITIES for name, values in
           (("auroc", auroc), ("p", p), ("q", q))},
        "agree": agree.ravel()[rows],
        "n_with": n_with[layer, concept], "n_without": kept_rows[layer] - n_with[layer, concept],
    })[COLUMNS]
    return frame, _entry(labels, auroc, q, agree, null.counts(), shuffles)


def _entry(labels: ConceptLabels, auroc: dict, q: dict, agree: np.ndarray, null: np.ndarray, shuffles: int) -> dict:
    """summary.json's `concepts` of one site and reduction."""
    by_concept = {}
    strength = np.minimum(np.abs(auroc["text"] - 0.5), np.abs(auroc["image"] - 0.5))
    # [layer, concept, direction (up, down)] selective neurons per modality, for the overlap null
    selective = {m: np.stack([((q[m] < ALPHA) & (auroc[m] > 0.5)).sum(axis=1),
                              ((q[m] < ALPHA) & (auroc[m] < 0.5)).sum(axis=1)], axis=-1) for m in q}
    tested = np.isfinite(auroc["text"][..., 0]).sum(axis=1)  # [layer]
    total_pmf = np.ones(1)
    for c, name in enumerate(labels.names):
        found = np.argwhere(agree[..., c])  # (layer, neuron)
        order = np.argsort(-strength[found[:, 0], found[:, 1], c], kind="stable") if len(found) else []
        observed = int(len(found))
        pmf = overlap_null(selective["text"][:, c], selective["image"][:, c], tested)
        total_pmf = np.convolve(total_pmf, pmf)
        by_concept[name] = {
            "n_with": int(labels.n_with[c]), "n_without": int(labels.n_without[c]),
            "n_text": int(np.count_nonzero(q["text"][..., c] < ALPHA)),
            "n_image": int(np.count_nonzero(q["image"][..., c] < ALPHA)),
            "n_imagery": observed,
            "n_imagery_up": int(np.count_nonzero(agree[..., c] & (auroc["text"][..., c] > 0.5))),
            **null_summary(observed, null[:, c]), **overlap_summary(observed, pmf),
            "imagery_neurons": [[int(a), int(b)] for a, b in found[order][:TOP_NEURONS]],
        }
    total = int(agree.sum())
    shuffled = [name for name, e in by_concept.items() if e["p_null"] < ALPHA]
    overlap = [name for name, e in by_concept.items() if e["p_overlap"] < ALPHA]
    above = [name for name in shuffled if name in overlap]
    return {"n_labelled": int(len(labels.rows)), "n_concepts": len(labels.names), "alpha": ALPHA,
            "min_group": MIN_GROUP, "n_shuffles": shuffles, "null_seed_spawn_key": [NULL_SPAWN_KEY],
            "n_imagery_total": total, **null_summary(total, null.sum(axis=1)), **overlap_summary(total, total_pmf),
            "n_imagery_neurons": int(agree.any(axis=-1).sum()),
            "concepts_above_shuffled_null": shuffled, "concepts_above_overlap_null": overlap,
            "n_concepts_above_null": len(above), "concepts_above_null": above, "by_concept": by_concept}


def study_labels(manifest: pd.DataFrame, n_inputs: int) -> ConceptLabels | None:
    """The concept labels of the first `n_inputs` pairs (the recorded ones), or None when the
    manifest has none (an older manifest has no `concepts` column) or no concept can be tested."""
    if "concepts" not in manifest.columns:
        return None
    labels = concept_labels(manifest["concepts"].tolist()[:n_inputs])
    return labels if labels.names else None


def run_concepts(store, labels: ConceptLabels, seed: int) -> tuple[pd.DataFrame, dict[str, dict]]:
    """(concepts.parquet, {site: summary entry}) of every site for STATS the store recorded."""
    stats = [s for s in STATS if s in store.stats]
    cells = sum(store.n_layers * store.width(site) for site in store.sites) * len(labels.names) * len(stats)
    selective_only = cells > ROW_LIMIT
    frames, summary = [], {}
    for site in store.sites:
        entries = {}
        for stat in stats:
            frame, entries[stat] = site_concepts(store, site, stat, labels, seed, selective_only=selective_only)
            frames.append(frame)
        lead, *others = stats
        summary[site] = {"stat": lead, **entries[lead], "by_stat": {s: entries[s] for s in others}}
    frame = pd.concat(frames, ignore_index=True)
    rows = "all"
    if selective_only:
        rows = f"selective only (q < {ALPHA:g} in either modality; all rows would be {cells:,}, over {ROW_LIMIT:,})"
    for entry in summary.values():
        entry["table_rows"] = rows
    return frame, summary


def concept_stage(out_dir: Path, csv: bool = False, provenance: dict | None = None) -> list[Path]:
    """tables/concepts.parquet and summary.json's per-site `concepts` of the study in `out_dir`
    (after the analysis wrote summary.json); [] and nothing left of an earlier analysis's when
    its pairs carry no concept labels. Returns the paths written."""
    from modalscope.tables import SUMMARY, read_summary, remove_table, write_frame, write_json

    from modalscope import outputs
    from modalscope.folder import study_manifest, study_store

    out_dir = Path(out_dir)
    tables = out_dir / outputs.TABLES

    store = study_store(out_dir)  # the command's own reads (folder.py)
    manifest, _ = study_manifest(out_dir)
    labels = study_labels(manifest, store.n_done)
    if labels is not None and not all(m in store.conditions for m in MODALITIES):
        labels = None
    summary_path = tables / SUMMARY
    summary = read_summary(summary_path) if summary_path.exists() else {}
    if labels is None:
        remove_table(tables / CONCEPTS)
        if any(isinstance(e, dict) and "concepts" in e for e in summary.values()):
            for entry in summary.values():
                entry.pop("concepts", None)
            write_json(summary, summary_path)
        return []
    frame, entries = run_concepts(store, labels, int(store.attrs.get("seed", 0)))
    paths = [write_frame(frame, outputs.table(CONCEPTS).at(out_dir), csv, provenance)]
    for site, entry in entries.items():
        summary.setdefault(site, {})["concepts"] = entry
    write_json(summary, summary_path)  # already among the analysis's outputs
    return paths


def neuron_concepts(out_dir: Path, site: str, layer: int, neuron: int, stat: str = "max",
                    top: int = 3) -> dict[str, list[tuple[str, float, float]]]:
    """A neuron's strongest concepts per modality, for its card: {"text": [(concept, AUROC, q),
    ...], "image": [...], "imagery": [...]}, those with q < ALPHA, furthest from 0.5 first, at
    most `top` each ("imagery": the agreeing ones, the caption's AUROC and q); {} without
    concepts.parquet (or without rows of this neuron and reduction)."""
    import pyarrow.parquet as pq

    from modalscope import outputs

    path = outputs.table(CONCEPTS).at(out_dir)
    if not path.exists():
        return {}
    rows = pq.read_table(path, filters=[("site", "==", site), ("layer", "==", int(layer)),
                                        ("neuron", "==", int(neuron))]).to_pandas()
    stats = list(dict.fromkeys(rows["stat"].astype(str)))
    if not len(rows):
        return {}
    rows = rows[rows["stat"].astype(str) == (stat if stat in stats else stats[0])]
    out: dict[str, list[tuple[str, float, float]]] = {}
    for modality, selected in (("text", rows["q_text"] < ALPHA), ("image", rows["q_image"] < ALPHA),
                               ("imagery", rows["agree"].astype(bool))):
        column = "image" if modality == "image" else "text"
        part = rows[selected.to_numpy(bool)]
        part = part.iloc[np.argsort(-np.abs(part[f"auroc_{column}"].to_numpy() - 0.5), kind="stable")][:top]
        out[modality] = [(str(r.concept), float(getattr(r, f"auroc_{column}")), float(getattr(r, f"q_{column}")))
                         for r in part.itertuples(index=False)]
    return out


def concepts_sentence(concepts: dict[str, list[tuple[str, float, float]]]) -> str:
    """The card's line: 'Concepts (AUROC, q < 0.05): from the caption red 0.93, ...; from the image
    ...; imagery: red.' ('' without concept results)."""
    if not concepts:
        return ""
    named = {"text": "from the caption", "image": "from the image"}
    parts = [f"{what} " + (", ".join(f"{c} {a:.2f}" for c, a, _ in concepts.get(m, [])) or "none")
             for m, what in named.items()]
    imagery = ", ".join(c for c, _, _ in concepts.get("imagery", [])) or "none"
    return f"Concepts (AUROC, q < {ALPHA:g}): {'; '.join(parts)}; imagery (both, same direction): {imagery}."


def glance_sentence(site: str, entry: dict) -> str:
    """One sentence of summary.json's `concepts` of a site, for the report's "At a glance"."""
    from modalscope.figures.style import format_p

    def p(value: object, floor: float | None = None) -> str:
        text = format_p(value, floor)
        return text if text.startswith("≤") else f"= {text}"

    floor = 1.0 / (int(entry.get("n_shuffles", 0)) + 1) if entry.get("n_shuffles") else None
    above = entry.get("concepts_above_null") or []
    named = ", ".join(f"{c} ({entry['by_concept'][c]['n_imagery']})" for c in above) if above else "none"
    return (f"{site}, concepts ({entry.get('stat', 'max')}): {int(entry.get('n_imagery_total', 0)):,} imagery "
            f"neuron-concept pairs over {int(entry.get('n_concepts', 0))} concepts (selective from the caption and "
            f"from the image, same direction, q < {entry.get('alpha', ALPHA):g}); shuffled labels give "
            f"{entry.get('null_mean', float('nan')):.1f} (p {p(entry.get('p_null'), floor)}), unrelated caption and "
            f"image sets {entry.get('overlap_expected', float('nan')):.1f} (p {p(entry.get('p_overlap'))}); "
            f"concepts above both: {named}.")
