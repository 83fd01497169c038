"""`modalscope ablate DIR`: ablate the neurons a study selects and measure what the model loses.

Why this shape:
- **Means from one half, scores on the other.** The manifest is in shuffled order (seeded), so
  its first half is a random half: mean ablation sets a neuron to its mean over the first
  half's inputs (the store's `mean` reduction, averaged over pairs, in the condition of the
  readout: `image_text` for the image readout when the study recorded it, else `image`; `text`
  for the text readout; `image` for generated captions, whose prompt is the image alone), and
  only pairs of the second half are scored (`--pairs N`: its first N). Zero ablation scores the
  same pairs, so the two methods compare; zero ablation alone needs no means, so it scores every
  pair. The sets themselves come from Table 3, which used every pair: see docs/method.md for
  what that leaves.
- **One forward holds many sets.** Rows are (set, pair): the intact model, every target set
  and its R random twins, for each method, are stacked `--batch-size` rows at a time and each
  row gets its own ablation (hooks.py), so R = 100 costs forwards, not Python loops.
- **Resume.** After each batch of pairs the readouts so far go to DIR/ablation/progress.npz
  with a key of everything that determines them; a rerun with the same settings continues, any
  other setting starts over.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from modalscope.ablation.effects import as_table, effect_row
from modalscope.ablation.generated import (
    NEW_TOKENS,
    field_readout,
    fields_of,
    manifest_truths,
)
from modalscope.ablation.generated import READOUT as GENERATED
from modalscope.ablation.progress import PROGRESS, key_of, resume, save
from modalscope.ablation.sets import (
    KINDS,
    NeuronSet,
    concept_sets,
    random_sets,
    table_sets,
    user_sets,
)
# the table, its sets' members (usable as --sets FILE) and the figure's stem; their home: outputs.py
from modalscope import outputs
from modalscope.outputs import ABLATION as TABLE, ABLATION_FIGURE as FIGURE, ABLATION_SETS as MEMBERS

METHODS = ("mean", "zero")
SAVE_EVERY_S = 30.0  # progress.npz is rewritten at most this often within a batch of pairs


@dataclass
class AblationSettings:
    k: int = 10  # neurons per set (fewer when fewer pass)
    sets: tuple[str, ...] = KINDS  # kinds, or paths of (site, layer, neuron) tables
    methods: tuple[str, ...] = ("mean",)
    n_random: int = 100
    n_pairs: int | None = None  # scored pairs (default: all of the scoring half)
    n_bands: int = 1  # 1: the whole model; N > 1: also N bands of consecutive layers
    readouts: tuple[str, ...] | None = None  # default: image and text (text alone without vision)
    concept_words: tuple[str, ...] | None = None  # the concept readouts' words (default: each pair's labels)
    sites: tuple[str, ...] | None = None
    stat: str = "max"  # the Table 3 reduction whose columns select
    batch_size: int = 32  # rows (set x pair) per forward
    device: str = "auto"
    dtype: str | None = None  # default: the study's
    seed: int = 0
    progress: bool = True
    new_tokens: int = NEW_TOKENS  # greedy tokens per generated caption (the caption_words readout)


@dataclass
class AblationResult:
    table: Path
    figure: Path | None
    frame: object
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rows_per_second: float = 0.0  # set-pair rows scored per second (this run's, resumed rows not counted)
    rows: int = 0  # set-pair rows scored by this run (0: everything came from DIR/ablation/progress.npz)


@dataclass
class Spec:
    """One row kind of the forward: neurons {(site, layer): indices}, a method, and which target
    it belongs to (-1: the intact model; `random` False for the target itself)."""

    neurons: dict[tuple[str, int], np.ndarray]
    method: str
    target: int = -1
    random: bool = False


def _specs(targets: list[NeuronSet], methods, n_random: int, widths: dict[str, int], seed: int) -> list[Spec]:
    specs = [Spec({}, "zero")]
    for t, target in enumerate(targets):
        rng = np.random.default_rng([seed, t])
        draws = random_sets(target, widths[target.site], n_random, rng)
        own = {(target.site, layer): idx for layer, idx in target.neurons.items()}
        for method in methods:
            specs.append(Spec(own, method, t))
            specs.extend(Spec({(target.site, layer): idx for layer, idx in d.items()}, method, t, True) for d in draws)
    return specs


def _means(store, keys: set[tuple[str, int]], condition: str, stop: int) -> dict[tuple[str, int], torch.Tensor]:
    """Each (site, layer)'s per-neuron mean of the store's `mean` reduction over inputs [0, stop)."""
    out = {}
    for site, layer in sorted(keys):
        values = store.read_layer(site, condition, "mean", layer, 0, stop)
        finite = np.isfinite(values)  # a pair whose stream had no value is left out; no value at all: 0
        count, total = finite.sum(axis=0), np.where(finite, values, 0).sum(axis=0, dtype=np.float64)
        out[(site, layer)] = torch.from_numpy((total / np.maximum(count, 1)).astype(np.float32))
    return out


def mean_condition(readout: str, conditions: list[str]) -> str:
    """The stream whose per-neuron mean a mean ablation uses for `readout`: the recorded input
    closest to the readout's (generated captions start from the image alone)."""
    if readout.startswith("text"):
        return "text"
    if readout == GENERATED or readout.startswith("generated_"):
        return "image"
    return "image_text" if "image_text" in conditions else "image"


def outputs_of(readout: str, fields: tuple[str, ...]) -> list[str]:
    """The table's readouts one scored readout fills: itself, or one accuracy per caption field."""
    return [field_readout(f) for f in fields] if readout == GENERATED else [readout]


def choose_sets(out_dir: Path, settings: AblationSettings, widths: dict[str, int], n_layers: int):
    import pandas as pd

    from modalscope.figures.assemble import StudyTables

    tables = StudyTables.read(out_dir)
    tables.check_stat(settings.stat, out_dir)
    sites = settings.sites or tuple(tables.sites)
    unknown = [s for s in sites if s not in tables.sites]
    if unknown:
        raise ValueError(f"--sites {','.join(unknown)}: {out_dir} analysed {', '.join(tables.sites)}")
    kinds = [s for s in settings.sets if s in KINDS]
    concept = [s for s in settings.sets if s == "concepts" or s.startswith("concept:")]
    paths = [s for s in settings.sets if s not in KINDS and s not in concept]
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(f"--sets {path}: neither a set kind ({', '.join(KINDS)}) nor a table file")
    by_site = {s: tables.neurons_as(s, settings.stat) for s in sites}
    sets, notes = table_sets(by_site, kinds, settings.k, n_layers, settings.n_bands)
    if concept:
        concepts = outputs.table(outputs.CONCEPTS)
        table = concepts.at(out_dir)
        if not table.exists():
            raise ValueError(f"--sets {concept[0]}: {out_dir} has no {concepts.path} (a study with concept "
                             "labels writes it)")
        names = None if "concepts" in concept else [c.split(":", 1)[1] for c in concept]
        more, more_notes = concept_sets(pd.read_parquet(table), names, sites, settings.stat, settings.k, n_layers,
                                        settings.n_bands)
        sets, notes = sets + more, notes + more_notes
    for path in paths:
        sets.extend(user_sets(Path(path), widths, n_layers))
    return sets, notes


def run_ablation(out_dir: Path, settings: AblationSettings | None = None, loaded=None) -> AblationResult:
    """Ablate, score, compare with random sets; write tables/ablation.parquet and figures/ablation.html.
    `loaded`: a model already in memory (default: the study's, loaded with `settings.dtype` and `device`)."""
    settings = settings or AblationSettings()
    from modalscope.data.manifest import load_manifest
    from modalscope.folder import study_store
    from modalscope.study import check_manifest

    started = time.perf_counter()
    out_dir = Path(out_dir)
    check_manifest(out_dir)
    manifest = load_manifest(out_dir)[0]
    store = study_store(out_dir)  # the command's one read of the store (folder.py)
    unknown = [m for m in settings.methods if m not in METHODS]
    if unknown or not settings.methods:
        raise ValueError(f"--method {','.join(settings.methods)}: choose mean or zero")
    if "mean" in settings.methods and "mean" not in store.stats:
        raise ValueError(f"{out_dir}: the study did not record the mean reduction, which mean ablation needs; "
                         "use --method zero")
    if not 1 <= settings.n_random <= 100_000:
        raise ValueError(f"--random {settings.n_random}: give 1 to 100,000 random sets (100 or more for a p worth reading)")
    if not 1 <= settings.new_tokens <= 4096:
        raise ValueError(f"--new-tokens {settings.new_tokens}: give 1 to 4,096")
    n = store.n_done
    half = n // 2 if "mean" in settings.methods else 0  # zero ablation alone needs no means
    scored = np.arange(half, n)[: settings.n_pairs]
    if "mean" in settings.methods and (half < 1 or scored.size < 2):
        raise ValueError(f"{out_dir}: {n} recorded pairs; mean ablation needs at least 4 (half for the means, "
                         "at least 2 to score); --method zero scores every pair")
    if scored.size < 2:
        raise ValueError(f"{out_dir}: {n} recorded pairs; ablation needs at least 2 to score")
    if settings.n_pairs is not None and scored.size < settings.n_pairs:
        notes_pairs = [f"--pairs {settings.n_pairs}: the scoring half holds {scored.size} pairs; scoring those"]
    else:
        notes_pairs = []
    widths = {s: store.width(s) for s in store.sites}
    targets, notes = choose_sets(out_dir, settings, widths, store.n_layers)
    notes = notes_pairs + notes
    if not targets:
        raise ValueError(f"{out_dir}: no neuron set to ablate ({'; '.join(notes)})")
    if loaded is None:
        from modalscope.models.loading import load_model

        attrs = store.attrs
        loaded = load_model(attrs["model"], attrs.get("revision"), settings.dtype or attrs.get("dtype", "float32"),
                            settings.device)
        prov = loaded.provenance
        weights = prov["commit_hash"] or prov["weights_fingerprint"] or prov["revision"]
        if attrs.get("weights") not in (None, weights):
            raise ValueError(f"--model {attrs['model']}: its weights are no longer those {out_dir} was recorded with "
                             f"({weights} vs {attrs['weights']}); the study's neurons would be another model's")
    from modalscope.ablation.readouts import ReadoutBuilder
    from modalscope.record.inputs import PromptBuilder

    readouts_of = ReadoutBuilder(PromptBuilder.for_model(loaded, store.attrs.get("tokens", "content")))
    truths = manifest_truths(manifest)
    fields = fields_of([truths[i] for i in scored])  # the caption fields some scored pair has a truth for
    vision = "image" in readouts_of.readouts
    readouts = settings.readouts or (*readouts_of.readouts, *((GENERATED,) if vision and fields else ()))
    allowed = [*readouts_of.readouts, *(f"{r}_concept" for r in readouts_of.readouts),
               *((GENERATED,) if vision else ())]
    bad = [r for r in readouts if r not in allowed]
    if bad:
        raise ValueError(f"--readouts {','.join(bad)}: this model has {', '.join(allowed)}")
    if GENERATED in readouts and not fields:
        raise ValueError(f"--readouts {GENERATED}: no scored pair has the drawn world's concept labels (a colour, "
                         "shape and number word, e.g. --instances instances_demo.json of the synthetic set), so no "
                         "generated caption can be scored")
    words = concept_words(manifest, settings, readouts)
    specs = _specs(targets, settings.methods, settings.n_random, widths, settings.seed)
    keys = {key for spec in specs for key in spec.neurons}
    values, zeros = {}, {site: torch.zeros(width) for site, width in widths.items()}  # shared, never copied
    for readout in readouts:
        means = _means(store, keys, mean_condition(readout, store.conditions), half) if "mean" in settings.methods else {}
        values[readout] = [{key: (means[key] if spec.method == "mean" else zeros[key[0]])
                            for key in spec.neurons} for spec in specs]
    from modalscope.paths import check_inside

    check_inside(out_dir / PROGRESS, out_dir)  # nothing written outside DIR, even through a symlink
    table_readouts = [o for r in readouts for o in outputs_of(r, fields)]
    key = key_of(store, settings, targets, table_readouts, scored, loaded)
    results, done = resume(out_dir, key, table_readouts, len(specs), scored.size)
    rows = _score(loaded, readouts_of, manifest, scored, specs, values, widths, readouts, settings,
                  results, done, lambda: save(out_dir, key, results, done), words, (truths, fields))
    frame = _summarize(targets, specs, results, table_readouts)
    table, figure = _write(out_dir, frame, settings, store, table_readouts, half, scored, targets)
    seconds = time.perf_counter() - started
    return AblationResult(table, figure, frame, notes, seconds, rows / max(seconds, 1e-9), rows)


def _score(loaded, readouts_of, manifest, scored, specs, values, widths, readouts, settings, results, done, save,
           words=None, generated=None) -> int:
    """Fill results[readout] [spec, pair] forward by forward, skipping what `done` [spec, pair]
    marks; `save()` at most every SAVE_EVERY_S seconds, after each batch of pairs and on the way
    out (Ctrl-C included: only finished forwards are marked). Returns the rows run. The
    caption_words readout (generated.py) generates one caption per row and fills one table
    readout per field; `generated` = (truth per manifest row, fields)."""
    from tqdm.auto import tqdm

    from modalscope.ablation.hooks import Ablation, build_plan
    from modalscope.ablation.readouts import caption_loglik, repeat_rows
    from modalscope.data.images import load_rgb

    truths, fields = generated or ([], ())
    per = min(settings.batch_size, scored.size)
    chunk = max(1, settings.batch_size // per)
    work = [(r, start, c) for r in readouts for start in range(0, scored.size, per)
            for c in range(0, len(specs), chunk)
            if not all(done[o][c:c + chunk, start:start + per].all() for o in outputs_of(r, fields))]
    bar = tqdm(total=len(work), unit="batch", desc="ablate", disable=not settings.progress)
    ran, saved, batch = 0, time.monotonic(), None
    try:
        for readout, start, c in work:
            if batch is None or batch[:2] != (readout, start):
                if batch is not None:
                    save()
                    saved = time.monotonic()
                rows = manifest.iloc[scored[start:start + per]]
                images = [load_rgb(p) for p in rows["image_path"]] if readout.startswith("image") \
                    or readout == GENERATED else None
                if readout == GENERATED:
                    from modalscope.ablation.generated import prompt_batch

                    batch = (readout, start, prompt_batch(readouts_of, images),
                             [truths[i] for i in scored[start:start + per]])
                else:
                    row_words = None if words is None else [words[i] for i in scored[start:start + per]]
                    batch = (readout, start, *readouts_of.batch(readout, images, rows["caption"].tolist(), row_words))
            inputs, part = batch[2], specs[c:c + chunk]
            p = inputs["input_ids"].shape[0]
            plan = build_plan([s.neurons for s in part], values[readout][c:c + chunk], widths, p)
            if readout == GENERATED:
                from modalscope.ablation.generated import generate_captions, score

                with Ablation(loaded.model, loaded.adapter, plan):
                    texts = generate_captions(loaded, repeat_rows(inputs, len(part)), settings.new_tokens)
                scores = score(texts, batch[3] * len(part), fields)
                for f in fields:
                    results[field_readout(f)][c:c + len(part), start:start + p] = scores[f].reshape(len(part), p)
                    done[field_readout(f)][c:c + len(part), start:start + p] = True
            else:
                caption = batch[3]
                with Ablation(loaded.model, loaded.adapter, plan):
                    ll = caption_loglik(loaded.model, loaded.adapter, repeat_rows(inputs, len(part)),
                                        caption.repeat(len(part), 1))
                ll = ll.view(len(part), p).numpy()
                ll[:, ~caption[:, 1:].any(1).numpy()] = np.nan  # nothing to score (no concept word): left out
                results[readout][c:c + len(part), start:start + p] = ll
                done[readout][c:c + len(part), start:start + p] = True
            ran += len(part) * p
            bar.update(1)
            if time.monotonic() - saved > SAVE_EVERY_S:
                save()
                saved = time.monotonic()
    finally:
        bar.close()
        if ran:
            save()
    return ran


def concept_words(manifest, settings: AblationSettings, readouts) -> list[list[str]] | None:
    """Per manifest row, the words the concept readouts score: --concept-words for every pair, else
    the pair's own concept labels (the manifest's `concepts`); None without a concept readout."""
    if not any(r.endswith("_concept") for r in readouts):
        return None
    if settings.concept_words:
        return [list(settings.concept_words)] * len(manifest)
    labels = manifest["concepts"] if "concepts" in manifest.columns else None
    if labels is None or labels.isna().all():
        raise ValueError("the concept readouts need concept words: the manifest has no concept labels; "
                         "give --concept-words")
    return [[] if c is None else [str(w) for w in c] for c in labels]


def _summarize(targets: list[NeuronSet], specs: list[Spec], results, readouts) -> object:
    rows = []
    for readout in readouts:
        res = results[readout]
        intact = res[0]
        for t, target in enumerate(targets):
            for method in dict.fromkeys(s.method for s in specs if s.target == t):
                own = [i for i, s in enumerate(specs) if s.target == t and s.method == method and not s.random]
                rand = [i for i, s in enumerate(specs) if s.target == t and s.method == method and s.random]
                rows.append({"set": target.name, "site": target.site, "layer_band": target.band, "k": target.k,
                             "method": method, "readout": readout,
                             **effect_row(res[own[0]], intact, res[rand])})
    return as_table(rows)


def members(targets: list[NeuronSet]):
    """One row per neuron of each target set (the neuron cards read it; `--sets` takes it back)."""
    import pandas as pd

    rows = [(t.name, t.site, t.band, t.k, layer, int(n)) for t in targets for layer, idx in sorted(t.neurons.items())
            for n in idx]
    return pd.DataFrame(rows, columns=["set", "site", "layer_band", "k", "layer", "neuron"]).astype(
        {"k": "int64", "layer": "int64", "neuron": "int64"})


def _write(out_dir: Path, frame, settings: AblationSettings, store, readouts, half: int, scored, targets):
    from modalscope.ablation.report import figure_ablation
    from modalscope.figures.export import write_html
    from modalscope.tables import write_frame

    provenance = {"ablation": {**{k: v for k, v in asdict(settings).items() if k not in ("progress",)},
                               "means_from_inputs": [0, half] if half else None,
                               "scored_inputs": [int(scored[0]), int(scored[-1]) + 1],
                               "mean_conditions": {r: mean_condition(r, store.conditions) for r in readouts},
                               "model": store.attrs.get("model"), "manifest_hash": store.attrs.get("manifest_hash")}}
    table = write_frame(frame, outputs.table(TABLE).at(out_dir), provenance=provenance)
    write_frame(members(targets), outputs.table(MEMBERS).at(out_dir), provenance=provenance)
    figure = write_html(figure_ablation(frame), outputs.entry(f"{outputs.FIGURES}/{FIGURE}.html").at(out_dir),
                        plotlyjs="directory", within=out_dir)
    return table, figure
