"""From the store to Table 3, the layer summary and the trend, streaming layer by layer.

Why: this is the report's section 2.4-2.5 in code. For each site and layer we read one
chunk of inputs at a time, form Δ = text - image per input and neuron (for the max
reduction, the report's Δ, and for the mean reduction), and fold it into running moments;
the [input, layer, neuron] array is never in memory. BH q-values are taken over all
neurons of a site once its p-values are known.

Column names for the max statistic are the report's (`mean_diff`, `t_value`, ...); the
same columns for another reduction carry its name as a suffix (`mean_diff_mean`, ...).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from modalscope.stats.layers import layer_mean_ci, layer_trend
from modalscope.stats.moments import RunningMoments
from modalscope.stats.tests import benjamini_hochberg, one_sample_t
from modalscope.store import ActivationStore

CONTRAST = ("text", "image")  # Δ = text - image, as in the report
PRIMARY_STAT = "max"
STATS = ("max", "mean")
TEST_COLUMNS = ["n", "mean_diff", "sd_diff", "t_value", "p_value", "q_value", "cohen_d"]


def column(name: str, stat: str) -> str:
    """The report's column name for the max statistic, suffixed for any other reduction."""
    return name if stat == PRIMARY_STAT else f"{name}_{stat}"


def layer_moments(store: ActivationStore, site: str, layer: int, stat: str) -> RunningMoments:
    """Moments over inputs of Δ for one site, layer and reduction, one input chunk at a time."""
    moments = RunningMoments()
    first, second = CONTRAST
    for start, stop in store.input_blocks():
        a = store.read_layer(site, first, stat, layer, start, stop).astype(np.float64)
        b = store.read_layer(site, second, stat, layer, start, stop).astype(np.float64)
        moments.add(a - b)  # [inputs, neurons]
    return moments


def neuron_table(store: ActivationStore, site: str) -> pd.DataFrame:
    """Table 3 rows for one site: one row per (layer, neuron)."""
    width = store.width(site)
    frames = []
    for layer in range(store.n_layers):
        frame = {"site": site, "layer": layer, "neuron": np.arange(width)}
        for stat in STATS:
            tests = one_sample_t(layer_moments(store, site, layer, stat))
            for name in TEST_COLUMNS:
                if name == "n" and stat != PRIMARY_STAT:
                    continue  # the same inputs for every reduction
                if name != "q_value":
                    frame[column(name, stat)] = getattr(tests, name)
        frames.append(pd.DataFrame(frame))
    table = pd.concat(frames, ignore_index=True)
    for stat in STATS:
        table[column("q_value", stat)] = benjamini_hochberg(table[column("p_value", stat)].to_numpy())
    ordered = ["site", "layer", "neuron"] + [
        column(n, s) for s in STATS for n in TEST_COLUMNS if n != "n" or s == PRIMARY_STAT
    ]
    return table[ordered]


def layer_table(neurons: pd.DataFrame) -> pd.DataFrame:
    """Per layer: mean over neurons of neuron mean Δ, its 95% CI over neurons, neuron count."""
    rows = []
    for (site, layer), group in neurons.groupby(["site", "layer"], sort=False):
        row: dict[str, object] = {"site": site, "layer": layer}
        for stat in STATS:
            mean, low, high, n = layer_mean_ci(group[column("mean_diff", stat)].to_numpy())
            row.update(
                {
                    column("mean_diff", stat): mean,
                    column("ci_low", stat): low,
                    column("ci_high", stat): high,
                }
            )
            if stat == PRIMARY_STAT:
                row["n_neurons"] = n
        rows.append(row)
    table = pd.DataFrame(rows)
    first = ["site", "layer", "mean_diff", "ci_low", "ci_high", "n_neurons"]
    return table[first + [c for c in table.columns if c not in first]]


def trend_summary(layers: pd.DataFrame, n_inputs: int) -> dict[str, dict]:
    """Per site the regression of layer mean Δ on layer index (report's Figure 2)."""
    summary: dict[str, dict] = {}
    for site, group in layers.groupby("site", sort=False):
        entry: dict[str, object] = layer_trend(group["layer"], group["mean_diff"])
        entry["n_inputs"] = n_inputs
        entry["contrast"] = "text - image"
        entry["by_stat"] = {
            stat: layer_trend(group["layer"], group[column("mean_diff", stat)])
            for stat in STATS
            if stat != PRIMARY_STAT
        }
        summary[str(site)] = entry
    return summary


def analyze(store: ActivationStore) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict]]:
    """(table3, layers, summary) for every site of the store."""
    if store.n_done < 2:
        raise ValueError(f"{store.path}: {store.n_done} finished inputs; a t-test needs at least 2")
    neurons = pd.concat([neuron_table(store, site) for site in store.sites], ignore_index=True)
    layers = layer_table(neurons)
    return neurons, layers, trend_summary(layers, store.n_done)
