"""From the store to Table 3, the layer summary and the trend, streaming layer by layer.

Why: this is the report's section 2.4-2.5 in code, plus the controls the report lacks (see
docs/method.md). For each site, layer and reduction the loop reads one block of inputs at a
time, forms Δ = text - image per input and neuron, and hands the slab to every statistic of
stats/neuron/ (the t-test, its sign-flip p, the sign test, the activation peaks) and to the
per-input layer means (the input-level unit of the interval, the bootstrap of the trend and
its permutation null). The [input, layer, neuron] array is never in memory; FDR q-values are
taken over all neurons of a site once its p-values are known. This module owns the I/O; the
statistics are pure (stats/).

Memory: what is kept across inputs is the [input, layer] per-input means (per reduction) and
the sign flips (a code per input, a number per permutation) and each neuron's
sign-flip cells ([2^k, neuron], stats/sign_group.py); every other temporary is one block of
inputs, so peak memory barely grows with the number of inputs.

Column names: see stats/columns.py (the report's names for max, suffixed for the others;
`contrast` says what was subtracted from what: `n_text_preferring` / `n_image_preferring`
count Δ > 0 / Δ < 0 of that contrast).

The base-LLM contrast: when the store recorded `text_base` (the VLM's text inputs through
`--base-model`) and the study's contrast is not already text - text_base, the same analysis
runs a second time for Δ_base = text - text_base: its Table 3 columns join the study's with
the suffix `_vs_base` (FDR over the site's neurons, as for the main contrast), and its layer
summary, per-input layer means and trend are kept beside the main ones (`Analysis.vs_base`,
`summary[site]["vs_base"]`). Without `text_base` nothing changes.

Randomness: `settings.seed` is the study's `--seed`; the sign flips and the bootstrap take
their own streams of it (see seeds.py), so they are independent of each other and of the
shuffle that ordered the inputs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from modalscope.streams import BASE_STREAM
from modalscope.stats import controls
from modalscope.stats.columns import (
    FDR_COLUMNS, FDR_TESTS, HIER_COLUMNS, KEYS, UNSUFFIXED_STAT, VS_BASE, column, kept, table3_order,
    vs_base_columns,
)
from modalscope.stats.fdr import fdr, plan
from modalscope.stats.input_means import InputLayerMeans
from modalscope.stats.layer_summary import contrast_name, layer_table, trend_entry
from modalscope.stats.site_analysis import SiteAnalysis
from modalscope.stats.neuron import accumulators
from modalscope.stats.protocol import AnalysisSettings, Context, Slab
from modalscope.stats.xmodal_layers import xmodal_summary
from modalscope.store import ActivationStore

BASE_CONTRAST = ("text", BASE_STREAM)  # Δ_base: the VLM's text input minus the base LLM's


@dataclass
class Analysis:
    neurons: pd.DataFrame  # Table 3
    layers: pd.DataFrame  # layer summary with controls
    summary: dict[str, dict]  # per site: the trend with its input-level uncertainty
    input_means: pd.DataFrame  # site, stat, input_index, layer, mean_delta
    vs_base: "Analysis | None" = None  # Δ_base = text - text_base, when the store has text_base
    fdr_families: pd.DataFrame | None = None  # one row per FDR family: its role in the plan (fdr_plan)


def read_values(store: ActivationStore, site: str, condition: str, stat: str, layer: int, start: int,
                stop: int) -> np.ndarray:
    """[inputs, neurons] of one layer as stored: float16 stays float16 (each use widens it
    exactly, and float16 -> float64 is numpy's fast conversion, float16 -> float32 not: 6 ms a
    block of 256 x 11,008), float32 stays float32. Blocks with rows derived.py left as holes, and
    other dtypes (bfloat16), go through `read_layer`, which fills the holes (float32)."""
    values = None
    if not store.holes(f"{site}/{condition}/{stat}", start, stop).any():
        values = store.array(site, condition, stat)[start:stop, layer, :]  # what read_layer reads, checksum included
    if values is None or values.dtype not in (np.float16, np.float32):
        values = store.read_layer(site, condition, stat, layer, start, stop)
    return values


def slabs(store: ActivationStore, site: str, layer: int, stat: str, contrast: tuple[str, str]) -> Iterator[Slab]:
    """One layer of one reduction, a block of inputs at a time: Δ in float64 (the difference of
    two float16 or float32 values, exact in float64), the two conditions as stored (`read_values`),
    and whether Δ is complete (no NaN: one sum tells) and the values float16 numbers, so that the
    statistics can skip what these make needless (protocol.Slab)."""
    first, second = contrast
    for start, stop in store.input_blocks():
        a = read_values(store, site, first, stat, layer, start, stop)
        b = read_values(store, site, second, stat, layer, start, stop)
        delta = np.subtract(a, b, dtype=np.float64)
        half = a.dtype == np.float16 and b.dtype == np.float16
        yield Slab(start, stop, delta, {first: a, second: b}, complete=bool(np.isfinite(delta.sum())), half=half)


def analyze_layer(store: ActivationStore, ctx: Context,
                  outputs: dict[str, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every statistic of one (site, layer, reduction): its Table 3 columns (suffixed) and the
    [input] per-input layer means; `outputs`, when given, receives what the statistics'
    `layer_outputs()` give beyond Table 3 (e.g. the cross-modal r's bootstrap replicates)."""
    stats = accumulators(ctx)
    means = InputLayerMeans(ctx)
    for slab in slabs(store, ctx.site, ctx.layer, ctx.stat, ctx.settings.contrast):
        for statistic in stats.values():
            statistic.add(slab)
        means.add(slab)
    columns = {column(name, ctx.stat): values
               for statistic in stats.values() for name, values in statistic.columns().items()
               if kept(name, ctx.stat)}
    if outputs is not None:
        for statistic in stats.values():
            outputs.update(statistic.layer_outputs())
    return columns, means.means


def analyze_site(store: ActivationStore, site: str, settings: AnalysisSettings, progress: bool = False,
                 what: str = "analyze") -> SiteAnalysis:
    """Every statistic of one site, a layer at a time (a progress bar per site when `progress`)."""
    n_inputs, width, stats = store.n_done, store.width(site), store.stats
    signs = controls.SignFlips(n_inputs, settings.n_perm, settings.seed)  # [perm, input], as a subgroup's codes
    input_means = {s: np.full((n_inputs, store.n_layers), np.nan) for s in stats}
    frames = []
    outputs: dict[str, list[dict[str, np.ndarray]]] = {s: [] for s in stats}  # per stat, per layer
    pair_k = np.stack(list(store.token_counts().values())).min(axis=0)  # matched_max's k (xmodal partials it out)
    for layer in tqdm(range(store.n_layers), desc=f"{what} {site}", unit="layer", disable=not progress,
                      leave=False, file=sys.stderr):
        frame: dict[str, object] = {"site": site, "layer": layer, "neuron": np.arange(width)}
        for stat in stats:
            ctx = Context(site, layer, stat, width, n_inputs, settings, signs, pair_k)
            outputs[stat].append({})
            columns, input_means[stat][:, layer] = analyze_layer(store, ctx, outputs[stat][-1])
            frame.update(columns)
        frames.append(pd.DataFrame(frame))
    table = pd.concat(frames, ignore_index=True)
    for stat in stats:
        for p_name, q_name in FDR_COLUMNS.items():
            if column(p_name, stat) in table:
                table[column(q_name, stat)] = fdr(table[column(p_name, stat)].to_numpy(), settings.fdr)
    table["contrast"] = contrast_name(settings.contrast)
    nulls = {s: controls.trend_null(input_means[s], signs) for s in stats}
    return SiteAnalysis(table[table3_order(table.columns, stats)], input_means, nulls, outputs)


def base_contrast(store: ActivationStore, contrast: tuple[str, str]) -> tuple[str, str] | None:
    """text - text_base when the store recorded the base LLM's stream and the study's own
    contrast is not already that one; else None."""
    if BASE_CONTRAST[1] not in store.conditions or tuple(contrast) == BASE_CONTRAST:
        return None
    return BASE_CONTRAST


def _join_vs_base(neurons: pd.DataFrame, base: pd.DataFrame, stats: list[str]) -> pd.DataFrame:
    """Table 3 with Δ_base's columns appended as `{column}_vs_base`, and its contrast as
    `contrast_vs_base`; rows are matched on site, layer and neuron."""
    keys = list(KEYS)
    names = vs_base_columns(base.columns, stats) + ["contrast"]
    extra = base[keys + names].rename(columns={c: c + VS_BASE for c in names})
    joined = neurons.merge(extra, on=keys, how="left", validate="one_to_one")
    if len(joined) != len(neurons):
        raise AssertionError("Table 3 rows of the base contrast do not match the study's")
    return joined


def _input_frame(site: str, input_means: dict[str, np.ndarray], contrast: str) -> list[pd.DataFrame]:
    frames = []
    for stat, means in input_means.items():  # [input, layer]
        inputs, layer_index = np.indices(means.shape)
        frames.append(pd.DataFrame({
            "site": site, "stat": stat, "input_index": inputs.ravel(),
            "layer": layer_index.ravel(), "mean_delta": means.ravel(), "contrast": contrast,
        }))
    return frames


def _site_summary(store: ActivationStore, layers: pd.DataFrame, site: SiteAnalysis,
                  settings: AnalysisSettings) -> dict:
    entry = trend_entry(layers, site, UNSUFFIXED_STAT, settings)
    entry.update({"n_inputs": store.n_done, "contrast": contrast_name(settings.contrast),
                  "fdr": settings.fdr, "n_perm": settings.n_perm, "n_boot": settings.n_boot})
    entry["by_stat"] = {stat: trend_entry(layers, site, stat, settings)
                        for stat in store.stats if stat != UNSUFFIXED_STAT}
    entry["xmodal"] = xmodal_summary(site, store.stats)
    return entry


def run_analysis(store: ActivationStore, settings: AnalysisSettings | None = None,
                 vs_base: bool = True, _plan: bool = True, progress: bool = False) -> Analysis:
    """Every table of the analysis for every site of the store; with `vs_base` and a store
    that recorded `text_base`, also Δ_base = text - text_base (see the module docstring); then
    the study's multiplicity plan over all of it (`fdr_plan`)."""
    settings = settings or AnalysisSettings(seed=int(store.attrs.get("seed", 0)))
    if store.n_done < 2:
        raise ValueError(f"{store.path}: {store.n_done} finished inputs; a t-test needs at least 2")
    neuron_frames, layer_frames, input_frames, summary = [], [], [], {}
    for name in store.sites:
        site = analyze_site(store, name, settings, progress, "analyze" if vs_base else "analyze (vs base)")
        layers = layer_table(site, store.stats)
        summary[name] = _site_summary(store, layers, site, settings)
        neuron_frames.append(site.neurons)
        layer_frames.append(layers)
        input_frames += _input_frame(name, site.input_means, contrast_name(settings.contrast))
    result = Analysis(
        pd.concat(neuron_frames, ignore_index=True),
        pd.concat(layer_frames, ignore_index=True),
        summary,
        pd.concat(input_frames, ignore_index=True),
    )
    second = base_contrast(store, settings.contrast) if vs_base else None
    if second is not None:  # the same machinery, the same seed (so the same sign flips), Δ_base
        base = run_analysis(store, replace(settings, contrast=second), vs_base=False, _plan=False, progress=progress)
        result.neurons = _join_vs_base(result.neurons, base.neurons, store.stats)
        for name in store.sites:
            summary[name]["vs_base"] = base.summary[name]
        result.vs_base = base
    if _plan:
        fdr_plan(result, store.sites, store.stats, settings, second)
    return result


# The study's multiplicity plan (docs/method.md §4, "One primary family") ---------------------
DEFAULT_PRIMARY = ("mlp", "matched_max")  # site, reduction; the contrast is the study's own


def family_name(site: str, stat: str, contrast: tuple[str, str] | str, test: str = "delta") -> str:
    """'mlp:matched_max:text-image:delta': one family of tests (site, reduction, contrast, test;
    test `delta` is the per-neuron test of Δ behind q_value, `xmodal` the cross-modal r's)."""
    if not isinstance(contrast, str):
        contrast = "-".join(contrast)
    return f"{site}:{stat}:{contrast.replace(' ', '')}:{test}"


def primary_family(primary: str | None, sites, stats, contrast: tuple[str, str]) -> str:
    """The family named by the `primary` setting, "SITE:REDUCTION[:A-B[:TEST]]" (contrast: the
    study's; test: delta). None: mlp's matched_max (the length-matched control of the raw max,
    at the per-neuron site), or the first site / the raw max when the store lacks them."""
    if primary is None:
        site = DEFAULT_PRIMARY[0] if DEFAULT_PRIMARY[0] in sites else list(sites)[0]
        stat = DEFAULT_PRIMARY[1] if DEFAULT_PRIMARY[1] in stats else UNSUFFIXED_STAT
        return family_name(site, stat, contrast)
    parts = [p.strip() for p in str(primary).split(":")]
    if len(parts) < 2 or len(parts) > 4 or not all(parts):
        raise ValueError(f"--primary {primary!r}: give SITE:REDUCTION, e.g. mlp:matched_max")
    site, stat = parts[0], parts[1]
    if site not in sites:
        raise ValueError(f"--primary {primary!r}: site {site!r} not recorded (sites: {', '.join(sites)})")
    if stat not in stats:
        raise ValueError(f"--primary {primary!r}: reduction {stat!r} not recorded (reductions: {', '.join(stats)})")
    return family_name(site, stat, parts[2] if len(parts) > 2 else contrast, parts[3] if len(parts) > 3 else "delta")


def fdr_plan(result: Analysis, sites, stats, settings: AnalysisSettings,
             base: tuple[str, str] | None = None) -> pd.DataFrame:
    """Every FDR family of Table 3 (site x reduction x contrast x test: the `q_value*` and
    `xmodal_q*` columns, each BH/BY over one site's neurons) under one plan: the primary family
    (`settings.primary`) by its own BH/BY at 0.05, every other by Benjamini-Bogomolov
    (stats/fdr.py `plan`). Adds `q_hier*` / `xmodal_q_hier*` at the end of Table 3
    (`q_hier < 0.05`: called under the plan), per site to summary.json `fdr_primary`,
    `fdr_families_selected`, `fdr_families_secondary` (M) and `fdr_families` (the site's
    families), and returns (and keeps as `result.fdr_families`) one row per family."""
    neurons = result.neurons
    contrasts = {"": tuple(settings.contrast)}
    if base is not None:
        contrasts[VS_BASE] = tuple(base)
    families, where = {}, {}
    for site in sites:
        rows = (neurons["site"] == site).to_numpy()
        for suffix, contrast in contrasts.items():
            for stat in stats:
                for p_name, q_name in FDR_COLUMNS.items():
                    p_col, q_col = column(p_name, stat) + suffix, column(q_name, stat) + suffix
                    if p_col in neurons and q_col in neurons:
                        name = family_name(site, stat, contrast, FDR_TESTS[p_name])
                        families[name] = neurons.loc[rows, p_col].to_numpy(dtype=np.float64)
                        where[name] = (site, stat, contrast, FDR_TESTS[p_name], rows, q_col,
                                       column(HIER_COLUMNS[q_name], stat) + suffix, suffix)
    primary = primary_family(settings.primary, sites, stats, tuple(settings.contrast))
    if primary not in families:
        raise ValueError(f"--primary: no family {primary} in this analysis (families: {', '.join(families)})")
    results = plan(families, primary, settings.fdr)
    hier: dict[str, np.ndarray] = {}
    records = []
    for name, fam in results.items():
        site, stat, contrast, test, rows, q_col, h_col, suffix = where[name]
        hier.setdefault(h_col, np.full(len(neurons), np.nan))[rows] = fam.q_hier
        records.append({"family": name, "suffix": suffix, "site": site, "stat": stat, "contrast": " - ".join(contrast), "test": test,
                        "q_column": q_col, "q_hier_column": h_col, "role": fam.role, "method": settings.fdr,
                        "m": fam.m, "simes_p": fam.simes_p, "family_q": fam.family_q, "selected": fam.selected,
                        "level": fam.level, "n_called_within": int(np.sum(neurons.loc[rows, q_col] < 0.05)),
                        "n_called": int(np.sum(fam.q_hier < 0.05))})
    for h_col, values in hier.items():  # appended: the columns before them keep their places (a contract)
        neurons[h_col] = values
    result.neurons = neurons
    table = pd.DataFrame.from_records(records).drop(columns="suffix")
    selected = [r["family"] for r in records if r["role"] == "secondary" and r["selected"]]
    n_secondary = sum(r["role"] == "secondary" for r in records)
    for site in sites:  # the site's entry lists its families of the study's contrast, vs_base Δ_base's
        for suffix in contrasts:
            entry = result.summary.get(site, {})
            entry = entry.get("vs_base") if suffix else entry
            if entry is None:
                continue
            entry.update({"fdr_primary": primary, "fdr_families_selected": selected,
                          "fdr_families_secondary": n_secondary,
                          "fdr_families": [{k: r[k] for k in ("family", "q_column", "q_hier_column", "role", "m",
                                                              "simes_p", "family_q", "selected", "level",
                                                              "n_called_within", "n_called")}
                                           for r in records if r["site"] == site and r["suffix"] == suffix]})
    result.fdr_families = table
    return table
