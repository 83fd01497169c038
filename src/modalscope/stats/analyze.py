"""From the store to Table 3, the layer summary and the trend, streaming layer by layer.

Why: this is the report's section 2.4-2.5 in code, plus the controls the report lacks
(see docs/method.md). For each site, layer and reduction we read one chunk of inputs at a
time, form Δ = text - image per input and neuron, and fold it into running moments (the
t-test), a sign-flip permutation accumulator (a p-value that does not lean on normality)
and per-input layer means (the inputs are the sampled units: their layer means give the
input-level interval, the bootstrap of the trend and its permutation null). The
[input, layer, neuron] array is never in memory; FDR q-values are taken over all neurons
of a site once its p-values are known.

Memory: what is kept across inputs is the [input, layer] per-input means (per reduction)
and the sign flips as bits ([perm, input] / 8 bytes); every other temporary is one chunk
of inputs or a fixed-size block, so peak memory barely grows with the number of inputs.

Column names for the max reduction are the report's (`mean_diff`, `t_value`, ...); the
same columns for another reduction carry its name as a suffix (`mean_diff_matched_max`).
Every table holding a Δ also has a `contrast` column ("text - image", or what `--contrast`
chose), so a table read on its own says what was subtracted from what: the names
`n_text_preferring` / `n_image_preferring` are kept for scripts, and count Δ > 0 / Δ < 0
of that contrast.

The base-LLM contrast: when the store recorded `text_base` (the VLM's text inputs through
`--base-model`) and the study's contrast is not already text - text_base, the same analysis
runs a second time for Δ_base = text - text_base (`base_contrast`, `run_analysis`): its
Table 3 columns join the study's with the suffix `_vs_base` (`mean_diff_vs_base`,
`t_value_mean_vs_base`, ...; FDR over the site's neurons, as for the main contrast), and its
layer summary, per-input layer means and trend are kept beside the main ones
(`Analysis.vs_base`, `summary[site]["vs_base"]`). Without `text_base` nothing changes.

Randomness: `settings.seed` is the study's `--seed`; the sign flips and the bootstrap take
their own streams of it (see seeds.py), so they are independent of each other and of the
shuffle that ordered the inputs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from modalscope.stats import controls
from modalscope.stats.layers import layer_mean_ci, layer_trend
from modalscope.stats.tests import one_sample_t
from modalscope.store import ActivationStore

CONTRAST = ("text", "image")  # Δ = text - image, as in the report
BASE_CONTRAST = ("text", "text_base")  # Δ_base: the VLM's text input minus the base LLM's
VS_BASE = "_vs_base"  # suffix of Δ_base's Table 3 columns, after the usual name
PRIMARY_STAT = "max"
TEST_COLUMNS = ["n", "mean_diff", "sd_diff", "t_value", "p_value", "q_value", "cohen_d", "p_perm"]
ALPHA = 0.05


@dataclass(frozen=True)
class AnalysisSettings:
    contrast: tuple[str, str] = CONTRAST  # Δ = first - second
    fdr: str = "bh"
    n_perm: int = 1000
    n_boot: int = 1000
    outlier_factor: float = 100.0
    seed: int = 0


@dataclass
class SiteAnalysis:
    neurons: pd.DataFrame  # Table 3 rows of the site
    input_means: dict[str, np.ndarray]  # stat -> [input, layer] per-input layer mean Δ
    nulls: dict[str, dict] = field(default_factory=dict)  # stat -> sign-flip null of the trend


def contrast_name(contrast: tuple[str, str]) -> str:
    """'text - image': how summary.json and the tables' `contrast` column name Δ = first - second."""
    return " - ".join(contrast)


def column(name: str, stat: str) -> str:
    """The report's column name for the max reduction, suffixed for any other."""
    return name if stat == PRIMARY_STAT else f"{name}_{stat}"


def _delta_blocks(
    store: ActivationStore, site: str, layer: int, stat: str, contrast: tuple[str, str] = CONTRAST
):
    first, second = contrast
    for start, stop in store.input_blocks():
        a = store.read_layer(site, first, stat, layer, start, stop).astype(np.float64)
        b = store.read_layer(site, second, stat, layer, start, stop).astype(np.float64)
        yield start, stop, a, b  # [inputs, neurons] each


def analyze_site(store: ActivationStore, site: str, settings: AnalysisSettings) -> SiteAnalysis:
    n_inputs, width, stats = store.n_done, store.width(site), store.stats
    signs = controls.SignFlips(n_inputs, settings.n_perm, settings.seed)  # [perm, input] bits
    input_means = {s: np.full((n_inputs, store.n_layers), np.nan) for s in stats}
    frames = []
    for layer in range(store.n_layers):
        peak = np.zeros(width)  # [neuron] largest |max activation| of the contrasted inputs
        frame: dict[str, object] = {"site": site, "layer": layer, "neuron": np.arange(width)}
        for stat in stats:
            perm = controls.PermutationT()  # its moments are Table 3's: one t for both
            for start, stop, a, b in _delta_blocks(store, site, layer, stat, settings.contrast):
                if stat == PRIMARY_STAT:
                    peak = np.fmax(peak, np.fmax(np.nanmax(np.abs(a), 0), np.nanmax(np.abs(b), 0)))
                delta = a - b
                perm.add(delta, signs.block(start, stop))
                with warnings.catch_warnings():  # all-NaN rows give NaN, as intended
                    warnings.simplefilter("ignore", RuntimeWarning)
                    input_means[stat][start:stop, layer] = np.nanmean(delta, axis=1)
            tests = one_sample_t(perm.moments)
            for name in TEST_COLUMNS:
                if name == "n" and stat != PRIMARY_STAT:
                    continue  # the same inputs for every reduction
                if name == "p_perm":
                    frame[column(name, stat)] = perm.p_values()
                elif name != "q_value":
                    frame[column(name, stat)] = getattr(tests, name)
        frame["max_abs_activation"] = peak
        frame["outlier"] = controls.outlier_flags(peak, settings.outlier_factor)
        frames.append(pd.DataFrame(frame))
    table = pd.concat(frames, ignore_index=True)
    for stat in stats:
        table[column("q_value", stat)] = controls.fdr(
            table[column("p_value", stat)].to_numpy(), settings.fdr
        )
    ordered = ["site", "layer", "neuron"] + [
        column(n, s) for s in stats for n in TEST_COLUMNS if n != "n" or s == PRIMARY_STAT
    ] + ["max_abs_activation", "outlier", "contrast"]
    table["contrast"] = contrast_name(settings.contrast)
    nulls = {s: controls.trend_null(input_means[s], signs) for s in stats}
    return SiteAnalysis(table[ordered], input_means, nulls)


def layer_table(site: SiteAnalysis, stats: list[str]) -> pd.DataFrame:
    """Per layer and reduction: the report's mean over neurons with its spread over neurons,
    the input-level interval, the sign-flip null band, the same mean without outlier
    neurons, and counts of FDR-significant neurons per direction."""
    neurons = site.neurons
    n_layers = int(neurons["layer"].max()) + 1
    rows: list[dict[str, object]] = [
        {"site": neurons["site"].iloc[0], "layer": layer} for layer in range(n_layers)
    ]
    for stat in stats:
        _, in_low, in_high = controls.input_layer_interval(site.input_means[stat])
        null = site.nulls[stat]
        counts = controls.significant_counts(
            neurons["layer"].to_numpy(),
            neurons[column("mean_diff", stat)].to_numpy(),
            neurons[column("q_value", stat)].to_numpy(),
            ALPHA,
        ).set_index("layer")
        for layer, row in enumerate(rows):
            group = neurons[neurons["layer"] == layer]
            mean, low, high, n = layer_mean_ci(group[column("mean_diff", stat)].to_numpy())
            clean = group[~group["outlier"]][column("mean_diff", stat)].to_numpy()
            row.update({
                column("mean_diff", stat): mean,
                column("ci_low", stat): low,
                column("ci_high", stat): high,
                column("input_ci_low", stat): in_low[layer],
                column("input_ci_high", stat): in_high[layer],
                column("null_low", stat): null["null_low"][layer],
                column("null_high", stat): null["null_high"][layer],
                column("mean_diff_no_outliers", stat): float(np.nanmean(clean)) if clean.size else np.nan,
                column("n_text_preferring", stat): int(counts.loc[layer, "n_text_preferring"]),
                column("n_image_preferring", stat): int(counts.loc[layer, "n_image_preferring"]),
            })
            if stat == PRIMARY_STAT:
                row["n_neurons"] = n
                row["n_outliers"] = int(group["outlier"].sum())
    table = pd.DataFrame(rows)
    table["contrast"] = neurons["contrast"].iloc[0]
    first = ["site", "layer", "mean_diff", "ci_low", "ci_high", "n_neurons"]
    return table[first + [c for c in table.columns if c not in first]]


def trend_entry(layers: pd.DataFrame, site: SiteAnalysis, stat: str, settings: AnalysisSettings) -> dict:
    """The regression of layer mean Δ on layer index, with input-level uncertainty."""
    entry: dict[str, object] = layer_trend(layers["layer"], layers[column("mean_diff", stat)])
    boot = controls.bootstrap_trend(site.input_means[stat], settings.n_boot, settings.seed)
    null = site.nulls[stat]
    clean = layer_trend(layers["layer"], layers[column("mean_diff_no_outliers", stat)])
    entry.update({
        "slope_ci_low": boot["slope_low"], "slope_ci_high": boot["slope_high"],
        "r2_ci_low": boot["r2_low"], "r2_ci_high": boot["r2_high"],
        "slope_p_perm": null["p_value"],
        "slope_no_outliers": clean["slope"], "r2_no_outliers": clean["r2"],
    })
    return entry


@dataclass
class Analysis:
    neurons: pd.DataFrame  # Table 3
    layers: pd.DataFrame  # layer summary with controls
    summary: dict[str, dict]  # per site: the trend with its input-level uncertainty
    input_means: pd.DataFrame  # site, stat, input_index, layer, mean_delta
    vs_base: "Analysis | None" = None  # Δ_base = text - text_base, when the store has text_base


def base_contrast(store: ActivationStore, contrast: tuple[str, str]) -> tuple[str, str] | None:
    """text - text_base when the store recorded the base LLM's stream and the study's own
    contrast is not already that one; else None."""
    if BASE_CONTRAST[1] not in store.conditions or tuple(contrast) == BASE_CONTRAST:
        return None
    return BASE_CONTRAST


def vs_base_columns(stats: list[str]) -> list[str]:
    """Table 3 columns of Δ_base taken beside the main contrast's, unsuffixed (`mean_diff`,
    `t_value_mean`, ...): every test column of every reduction but `n` (the same inputs)."""
    return [column(n, s) for s in stats for n in TEST_COLUMNS if n != "n"]


def _join_vs_base(neurons: pd.DataFrame, base: pd.DataFrame, stats: list[str]) -> pd.DataFrame:
    """Table 3 with Δ_base's test columns appended as `{column}_vs_base`, and its contrast
    as `contrast_vs_base`; rows are matched on site, layer and neuron."""
    keys = ["site", "layer", "neuron"]
    names = vs_base_columns(stats) + ["contrast"]
    extra = base[keys + names].rename(columns={c: c + VS_BASE for c in names})
    joined = neurons.merge(extra, on=keys, how="left", validate="one_to_one")
    if len(joined) != len(neurons):
        raise AssertionError("Table 3 rows of the base contrast do not match the study's")
    return joined


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
        entry = trend_entry(layers, site, PRIMARY_STAT, settings)
        entry.update({"n_inputs": store.n_done, "contrast": contrast_name(settings.contrast),
                      "fdr": settings.fdr, "n_perm": settings.n_perm, "n_boot": settings.n_boot})
        entry["by_stat"] = {
            stat: trend_entry(layers, site, stat, settings)
            for stat in store.stats
            if stat != PRIMARY_STAT
        }
        neuron_frames.append(site.neurons)
        layer_frames.append(layers)
        summary[name] = entry
        for stat, means in site.input_means.items():  # [input, layer]
            inputs, layer_index = np.indices(means.shape)
            input_frames.append(pd.DataFrame({
                "site": name, "stat": stat, "input_index": inputs.ravel(),
                "layer": layer_index.ravel(), "mean_delta": means.ravel(),
                "contrast": contrast_name(settings.contrast),
            }))
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


def analyze(
    store: ActivationStore, settings: AnalysisSettings | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict]]:
    """(table3, layers, summary) for every site of the store."""
    result = run_analysis(store, settings)
    return result.neurons, result.layers, result.summary


def significance_table(layers: pd.DataFrame, stats: list[str]) -> pd.DataFrame:
    """Long form of the FDR-significant counts: site, stat, layer, per direction, and the
    contrast whose Δ > 0 (`n_text_preferring`) and Δ < 0 (`n_image_preferring`) they count."""
    frames = []
    contrast = layers["contrast"] if "contrast" in layers else contrast_name(CONTRAST)
    for stat in stats:
        frame = layers[["site", "layer", column("n_text_preferring", stat),
                        column("n_image_preferring", stat), "n_neurons"]].copy()
        frame.columns = ["site", "layer", "n_text_preferring", "n_image_preferring", "n_neurons"]
        frame.insert(1, "stat", stat)
        frame["contrast"] = contrast
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
