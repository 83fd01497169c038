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
the sign flips as bits ([perm, input] / 8 bytes); every other temporary is one block of
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

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from modalscope.streams import BASE_STREAM
from modalscope.stats import controls
from modalscope.stats.columns import (
    FDR_COLUMNS, KEYS, UNSUFFIXED_STAT, VS_BASE, column, kept, table3_order, vs_base_columns,
)
from modalscope.stats.fdr import fdr
from modalscope.stats.input_means import InputLayerMeans
from modalscope.stats.layer_summary import SiteAnalysis, contrast_name, layer_table, trend_entry
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


def slabs(store: ActivationStore, site: str, layer: int, stat: str, contrast: tuple[str, str]) -> Iterator[Slab]:
    """One layer of one reduction, a block of inputs at a time, as float64."""
    first, second = contrast
    for start, stop in store.input_blocks():
        a = store.read_layer(site, first, stat, layer, start, stop).astype(np.float64)
        b = store.read_layer(site, second, stat, layer, start, stop).astype(np.float64)
        yield Slab(start, stop, a - b, {first: a, second: b})


def analyze_layer(store: ActivationStore, ctx: Context,
                  outputs: dict[str, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every statistic of one (site, layer, reduction): its Table 3 columns (suffixed) and the
    [input] per-input layer means; `outputs`, when given, receives what statistics with a
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
            outputs.update(getattr(statistic, "layer_outputs", dict)())
    return columns, means.means


def analyze_site(store: ActivationStore, site: str, settings: AnalysisSettings) -> SiteAnalysis:
    n_inputs, width, stats = store.n_done, store.width(site), store.stats
    signs = controls.SignFlips(n_inputs, settings.n_perm, settings.seed)  # [perm, input] bits
    input_means = {s: np.full((n_inputs, store.n_layers), np.nan) for s in stats}
    frames = []
    outputs: dict[str, list[dict[str, np.ndarray]]] = {s: [] for s in stats}  # per stat, per layer
    pair_k = np.stack(list(store.token_counts().values())).min(axis=0)  # matched_max's k (xmodal partials it out)
    for layer in range(store.n_layers):
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
                 vs_base: bool = True) -> Analysis:
    """Every table of the analysis for every site of the store; with `vs_base` and a store
    that recorded `text_base`, also Δ_base = text - text_base (see the module docstring)."""
    settings = settings or AnalysisSettings(seed=int(store.attrs.get("seed", 0)))
    if store.n_done < 2:
        raise ValueError(f"{store.path}: {store.n_done} finished inputs; a t-test needs at least 2")
    neuron_frames, layer_frames, input_frames, summary = [], [], [], {}
    for name in store.sites:
        site = analyze_site(store, name, settings)
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
        base = run_analysis(store, replace(settings, contrast=second), vs_base=False)
        result.neurons = _join_vs_base(result.neurons, base.neurons, store.stats)
        for name in store.sites:
            summary[name]["vs_base"] = base.summary[name]
        result.vs_base = base
    return result
