"""What the report says, gathered from a study folder: provenance, skipped pairs, the
significant counts, the strongest neurons each way and the files to link.

Why apart from the page: these are plain data (lists of rows, DataFrames) a test can check
without parsing HTML, and the page only lays them out. Everything is read, nothing written:
the store's attributes are opened read-only, and a stage that has not run (no study.json,
no skipped.parquet, no store) leaves its facts out instead of failing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from modalscope.data.manifest import MANIFEST, SKIPPED, TRUNCATED, load_skipped
from modalscope.figures.assemble import StudyTables
from modalscope.figures.style import direction_names
from modalscope.stats.fdr import ALPHA as SIGNIFICANT_Q  # the one level of every call
from modalscope.outputs import FIGURES, STUDY_JSON, STUDY_TOML, TABLES, TWIN, describe
from modalscope.tables import SUMMARY
from modalscope.store import STORE
from modalscope.top_neurons import COLUMNS, TOP_K, strongest

# Table 3 columns of the top-neuron tables, as the report names them.
NEURON_COLUMNS = dict(zip(COLUMNS, ("layer", "neuron", "mean Δ", "sd Δ", "t", "p", "q", "d_z", "p_perm", "max |act|",
                                     "outlier")))


@dataclass
class Provenance:
    study: list[tuple[str, str]]  # (what, value), in reading order
    prompts: dict[str, str] = field(default_factory=dict)
    chat_template: str | None = None
    versions: list[tuple[str, str, str]] = field(default_factory=list)  # library, recording, analysis
    timings: list[tuple[str, float]] = field(default_factory=list)  # stage, seconds
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["pair_id", "image_path",
                                                                                 "caption", "reason"]))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def store_attrs(out_dir: Path) -> dict:
    """The store's provenance attributes, read-only ({} when there is no store)."""
    path = Path(out_dir) / STORE
    if not path.exists():
        return {}
    from modalscope.folder import read_store

    return read_store(path).attrs


def _text(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "—"
    return str(value)


def provenance(out_dir: Path, tables: StudyTables) -> Provenance:
    out_dir = Path(out_dir)
    attrs = store_attrs(out_dir)
    study = _read_json(out_dir / STUDY_JSON)
    config = study.get("config", {})
    first = tables.summary[tables.sites[0]] if tables.sites else {}
    skipped = load_skipped(out_dir)  # empty for studies older than the skip list

    def pick(key: str) -> object:
        return attrs.get(key, config.get(key))

    weights = attrs.get("commit_hash") or attrs.get("weights_fingerprint")
    used = attrs.get("n_done", first.get("n_inputs"))
    rows = [
        ("model", pick("model")),
        *([("revision", pick("revision"))] if is_hub_model(attrs, pick("model")) else []),
        ("weights (commit or sha256 of local files)", weights),
        ("model type", attrs.get("model_type")),
        ("dtype", pick("dtype")),
        ("quantization", pick("quantization") or "none"),
        ("token scope", pick("tokens")),
        ("sites", pick("sites") or tables.sites),
        ("reductions over tokens", pick("stats") or tables.stats),
        ("recorded streams", pick("conditions")),
        ("contrast Δ", first.get("contrast", config.get("contrast"))),
        ("seed of the shuffle", pick("seed")),
        ("FDR control", {"bh": "Benjamini-Hochberg", "by": "Benjamini-Yekutieli"}.get(first.get("fdr"),
                                                                                        first.get("fdr"))),
        ("sign-flip permutations", first.get("n_perm")),
        ("bootstrap resamples", first.get("n_boot")),
        ("batch size", pick("batch_size")),
        ("pairs used", used),
        ("pairs skipped", len(skipped)),
    ]
    control = twin_control(out_dir)
    if control:  # --control random-twin: what the twin is, where its outputs are
        rows.insert(next(i for i, (k, _) in enumerate(rows) if k == "model type") + 1, ("control", control))
    if "seeds" in study:  # one stream each, spawned from the seed (seeds.py)
        rows.insert(next(i for i, (k, _) in enumerate(rows) if k == "seed of the shuffle") + 1,
                    ("random streams of the seed", f"{study['seeds'].get('derivation', '')}: "
                     + ", ".join(study["seeds"].get("streams", {}))))
    base = attrs.get("base_model")
    if isinstance(base, dict) and base.get("model"):  # --base-model: its text stream, text_base
        at = next(i for i, (k, _) in enumerate(rows) if k == "model type") + 1
        rows[at:at] = [("base model", base["model"]),
                       ("base model weights (commit or sha256 of local files)",
                        base.get("commit_hash") or base.get("weights_fingerprint") or base.get("revision"))]
    if attrs.get("widened"):  # 16-bit arrays whose first window left the dtype's range (store.widen)
        at = next(i for i, (k, _) in enumerate(rows) if k == "reductions over tokens") + 1
        rows.insert(at, ("stored as float32 (values beyond the 16-bit range)", ", ".join(attrs["widened"])))
    truncated = out_dir / TRUNCATED
    if truncated.exists():
        rows.append(("captions cut to fit the context", pq.read_metadata(truncated).num_rows))
    if attrs.get("n_inputs") not in (None, used):
        rows.append(("pairs in the manifest", attrs["n_inputs"]))
    rows += [(what, study[key]) for what, key in (("command (last stage)", "command"), ("host", "host"))
             if study.get(key)]
    if isinstance(study.get("gpu"), dict):  # the GPU the recording used
        gpu = study["gpu"]
        rows.append(("GPU of the recording", f"{gpu.get('name')} x {gpu.get('count', 1)}, CUDA {gpu.get('cuda')}, "
                                             f"driver {gpu.get('driver') or 'unknown'}"))
    recorded = attrs.get("versions", {})
    analysed = study.get("versions", {})
    versions = [(lib, recorded.get(lib, "—"), analysed.get(lib, "—")) for lib in dict.fromkeys([*recorded, *analysed])]
    timings = [(stage.removesuffix("_s"), float(sec)) for stage, sec in study.get("timings", {}).items()]
    return Provenance([(k, _text(v)) for k, v in rows], dict(attrs.get("prompts", {})),
                      attrs.get("chat_template"), versions, timings, skipped)


def twin_control(out_dir: Path) -> str | None:
    """The provenance row of the random twin ('random twin: ...'), or None without one."""
    from modalscope.twin import TWIN_FOLDER, twin_dir

    twin = store_attrs(twin_dir(out_dir)).get("control")
    if not isinstance(twin, dict):
        return None
    return (f"random twin: the same inputs through type(model)._from_config(config), transformers' own "
            f"initialisation, torch seed {twin.get('torch_seed')} (SeedSequence(seed {twin.get('seed')}), spawn key "
            f"{twin.get('spawn_key')}); its study folder {TWIN_FOLDER.as_posix()}/")


TWIN_MEASURES = {"trend": "layer slope of Δ", "xmodal_share": "share of cross-modal neurons",
                 "imagery": "imagery neuron-concept pairs"}


def twin_rows(tables: StudyTables) -> pd.DataFrame | None:
    """One row per site and effect: this model's value, the random twin's, their ratio and whether
    the model's exceeds the twin's (summary.json's `twin`); None when the study has no twin."""
    from modalscope.report.headline import NAMES

    rows = []
    for site in tables.sites:
        twin = tables.summary.get(site, {}).get("twin")
        if not isinstance(twin, dict):
            continue
        for stat, facts in (twin.get("trend") or {}).items():
            rows.append({"site": site, "effect": f"{TWIN_MEASURES['trend']} ({NAMES.get(stat, stat)})",
                         "this model": facts.get("study_slope"), "random twin": facts.get("twin_slope"),
                         "model / twin": facts.get("ratio"), "exceeds the twin": bool(facts.get("exceeds")),
                         "model's bootstrap 95% CI": _ci(facts.get("study_slope_ci_low"),
                                                          facts.get("study_slope_ci_high"))})
        for key in ("xmodal_share", "imagery"):
            facts = twin.get(key)
            if isinstance(facts, dict):
                stat = facts.get("stat", twin.get("stat", "max"))
                rows.append({"site": site, "effect": f"{TWIN_MEASURES[key]} ({stat})", "this model": facts.get("study"),
                             "random twin": facts.get("twin"), "model / twin": facts.get("ratio"),
                             "exceeds the twin": bool(facts.get("exceeds")), "model's bootstrap 95% CI": "—"})
    return pd.DataFrame(rows).set_index("site") if rows else None


def twin_alignment_rows(tables: StudyTables, site: str) -> pd.DataFrame | None:
    """Per alignment measure, the peak over layers of this model and of its random twin, or None."""
    peaks = (tables.summary.get(site, {}).get("twin") or {}).get("alignment")
    if not isinstance(peaks, dict) or not peaks:
        return None
    frame = pd.DataFrame.from_dict({m: {"model's peak": f.get("study_peak"), "its layer": f.get("study_peak_layer"),
                                        "twin's peak": f.get("twin_peak"), "twin's layer": f.get("twin_peak_layer")}
                                    for m, f in peaks.items()}, orient="index")
    frame.index.name = "measure"
    return frame


def _ci(low: object, high: object) -> str:
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in (low, high))
    return f"{low:.3g} to {high:.3g}" if ok else "—"


def is_hub_model(attrs: dict, model: object) -> bool:
    """Whether the study's model came from the hub (a revision means something) rather than a
    local folder (where the store records "main" but the weights are the folder's fingerprint)."""
    if "weights_fingerprint" in attrs:
        return attrs["weights_fingerprint"] is None
    return model is not None and not Path(str(model)).is_dir()


def study_model(out_dir: Path) -> str:
    """The model the study in `out_dir` recorded (hub id or path), '' when unknown."""
    return str(store_attrs(out_dir).get("model")
               or _read_json(Path(out_dir) / STUDY_JSON).get("config", {}).get("model") or "")


def random_weights(out_dir: Path) -> bool:
    """Whether the study's model is the demo's, with random weights (see demo.py)."""
    from modalscope.demo import has_random_weights

    return has_random_weights(study_model(out_dir) or None)


def random_weights_title(out_dir: Path) -> str | None:
    """What the title says of a study whose model has random weights (the demo's, or one built by
    `modalscope shrink`), else None."""
    from modalscope.demo import random_weights_note

    return random_weights_note(study_model(out_dir) or None)


def partial_study(out_dir: Path, tables: StudyTables) -> str | None:
    """One sentence when the tables do not cover the whole manifest (an unfinished extraction,
    or tables older than the store), with the commands that finish the study; else None."""
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST
    if not manifest.exists() or not tables.sites:
        return None
    n_manifest = pq.read_metadata(manifest).num_rows
    analysed = tables.summary[tables.sites[0]].get("n_inputs")
    recorded = store_attrs(out_dir).get("n_done", analysed)
    if analysed is None or analysed >= n_manifest:
        return None
    text = (f"Partial study: {n_manifest:,} pairs in the manifest, {int(recorded):,} recorded, "
            f"{int(analysed):,} analysed in these tables and figures.")
    if recorded < n_manifest:
        return text + (f" Run `modalscope extract --out {out_dir} --resume` to finish the extraction, then "
                       f"`modalscope analyze {out_dir}` and `modalscope plot {out_dir}`.")
    return text + f" Run `modalscope analyze {out_dir}` and `modalscope plot {out_dir}` to analyse every pair."


def top_neurons(tables: StudyTables, site: str, stat: str, k: int = TOP_K) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(Δ > 0, Δ < 0), i.e. (text-preferring, image-preferring) for text − image: the k
    neurons with the largest |t| each way."""
    return strongest(tables.neurons_as(site, stat), k, tuple(NEURON_COLUMNS))


def significant_counts(tables: StudyTables, site: str) -> pd.DataFrame:
    """One row per layer; per reduction, the counts (q < 0.05) with Δ > 0 and Δ < 0, in
    columns named by the contrast ('max: text', 'max: image' for text − image)."""
    rows = tables.counts[tables.counts["site"] == site]
    wide = rows.pivot(index="layer", columns="stat", values=["n_text_preferring", "n_image_preferring"])
    order = [s for s in tables.stats if s in rows["stat"].unique()]
    columns = [(d, s) for s in order for d in ("n_text_preferring", "n_image_preferring")]
    wide = wide[columns]
    up, down = direction_names(tables.contrast(site))
    wide.columns = [f"{s}: {up if d == 'n_text_preferring' else down}" for d, s in columns]
    wide.insert(0, "neurons", rows.groupby("layer")["n_neurons"].first())
    wide.index = wide.index.astype(str)
    wide.loc["all layers"] = wide.sum()
    return wide.astype(int)


def trend_rows(tables: StudyTables, site: str) -> pd.DataFrame:
    """The layer trend of every reduction: slope, its bootstrap CI and sign-flip p, R²."""
    keys = {"slope": "slope /layer", "slope_ci_low": "slope CI low", "slope_ci_high": "slope CI high",
            "slope_p_perm": "sign-flip p", "r2": "R²", "r2_ci_low": "R² CI low", "r2_ci_high": "R² CI high",
            "slope_no_outliers": "slope w/o outliers"}
    rows = {stat: tables.trend(site, stat) for stat in tables.stats}
    frame = pd.DataFrame({stat: {label: entry.get(key) for key, label in keys.items()}
                          for stat, entry in rows.items()}).T
    frame.index.name = "reduction"
    return frame.dropna(axis=1, how="all")


@dataclass
class Forgetting:
    """The numbers of the report's paragraph on Δ_base = text − text_base at one site."""

    base_model: str | None  # the store's base_model["model"]
    contrast: str  # 'text − text_base'
    stat: str
    slope: float
    slope_ci_low: float  # bootstrap 95% CI over inputs
    slope_ci_high: float
    slope_p_perm: float
    first_nonzero_layer: int | None  # the first layer with a neuron whose mean Δ_base is not exactly 0
    first_layer_ci_excludes_0: int | None  # the first layer whose 95% CI over inputs of the layer mean excludes 0
    n_up: int  # neurons with q_vs_base < 0.05 and Δ_base > 0 (VLM > base), all layers
    n_down: int  # ... and Δ_base < 0 (base > VLM)
    n_neurons: int


def forgetting(out_dir: Path, tables: StudyTables, site: str, stat: str) -> Forgetting | None:
    """What the report says about Δ_base at `site`, or None when it was not analysed."""
    if not tables.has_vs_base(site):
        return None
    from modalscope.stats.columns import VS_BASE, column

    base = store_attrs(out_dir).get("base_model")
    trend = tables.trend_vs_base(site, stat)
    layers = tables.layers_vs_base[tables.layers_vs_base["site"].astype(str) == site].sort_values("layer")
    low = layers[column("input_ci_low", stat)].to_numpy(dtype=float)
    high = layers[column("input_ci_high", stat)].to_numpy(dtype=float)
    excludes = (low > 0) | (high < 0)  # NaN bounds compare False: not a difference
    neurons = tables.neurons[tables.neurons["site"].astype(str) == site]
    mean = neurons[column("mean_diff", stat) + VS_BASE].to_numpy(dtype=float)
    q = neurons[column("q_value", stat) + VS_BASE].to_numpy(dtype=float)
    nonzero = neurons["layer"].to_numpy()[np.isfinite(mean) & (mean != 0)]
    significant = q < SIGNIFICANT_Q

    def first(flags: np.ndarray) -> int | None:
        hits = layers["layer"].to_numpy()[flags]
        return int(hits[0]) if hits.size else None

    return Forgetting(
        base.get("model") if isinstance(base, dict) else None, tables.contrast_vs_base(site), stat,
        float(trend["slope"]), float(trend.get("slope_ci_low", np.nan)), float(trend.get("slope_ci_high", np.nan)),
        float(trend.get("slope_p_perm", np.nan)), int(nonzero.min()) if nonzero.size else None, first(excludes),
        int((significant & (mean > 0)).sum()), int((significant & (mean < 0)).sum()), int(np.isfinite(mean).sum()),
    )


@dataclass
class LinkedFile:
    href: str  # relative to DIR
    what: str
    size: int
    rows: int | None = None


def table_files(out_dir: Path) -> list[LinkedFile]:
    """The files to link, described by the catalogue (outputs.py): the manifest, skipped and cut
    pairs, study.json and study.toml, every file of tables/, and the random twin's tables."""
    out_dir = Path(out_dir)
    found = [out_dir / name for name in (MANIFEST, SKIPPED, TRUNCATED, STUDY_JSON, STUDY_TOML)]
    found += sorted((out_dir / TABLES).glob("*"))
    twin = out_dir / TWIN / TABLES
    if (twin / SUMMARY).is_file():  # --control random-twin: the twin's own tables
        found += sorted(twin.glob("*"))
    files = []
    for path in found:
        if not path.is_file() or path.name.startswith("."):
            continue
        href = path.relative_to(out_dir).as_posix()
        rows = pq.ParquetFile(path).metadata.num_rows if path.suffix == ".parquet" else None
        files.append(LinkedFile(href, describe(href), path.stat().st_size, rows))
    return files


def figure_files(out_dir: Path) -> dict[str, dict[str, str]]:
    """{figure stem: {"html"|"png"|"svg": href}} of DIR/figures, sorted by stem."""
    figures: dict[str, dict[str, str]] = {}
    for path in sorted((Path(out_dir) / FIGURES).glob("*")):
        if path.suffix in (".html", ".png", ".svg") and not path.name.startswith("."):
            figures.setdefault(path.stem, {})[path.suffix[1:]] = f"{FIGURES}/{path.name}"
    return figures
