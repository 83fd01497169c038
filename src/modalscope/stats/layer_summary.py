"""Per layer, from Table 3 and the per-input layer means: the layer summary (Figure 2), the
trend of layer mean Δ on depth with its input-level uncertainty (summary.json), and the long
form of the FDR-significant counts.

Why pure: these read the neuron table and the [input, layer] matrix that the streaming loop
(analysis.py) produced; nothing here touches the store.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from modalscope.stats import controls
from modalscope.stats.fdr import ALPHA
from modalscope.stats.columns import UNSUFFIXED_STAT, column
from modalscope.stats.layers import layer_mean_ci, layer_trend, leave_one_out_slopes, standout_layers
from modalscope.stats.protocol import CONTRAST, AnalysisSettings
from modalscope.stats.site_analysis import SiteAnalysis
from modalscope.stats.xmodal_layers import xmodal_layer_columns



def contrast_name(contrast: tuple[str, str]) -> str:
    """'text - image': how summary.json and the tables' `contrast` column name Δ = first - second."""
    return " - ".join(contrast)


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
            if stat == UNSUFFIXED_STAT:
                row["n_neurons"] = n
                row["n_outliers"] = int(group["outlier"].sum())
    table = pd.DataFrame(rows)
    for stat in stats:
        for name, values in xmodal_layer_columns(site, stat).items():
            table[column(name, stat)] = values
    table["contrast"] = neurons["contrast"].iloc[0]
    first = ["site", "layer", "mean_diff", "ci_low", "ci_high", "n_neurons"]
    return table[first + [c for c in table.columns if c not in first]]


def trend_entry(layers: pd.DataFrame, site: SiteAnalysis, stat: str, settings: AnalysisSettings) -> dict:
    """The regression of layer mean Δ on layer index, with input-level uncertainty."""
    entry: dict[str, object] = layer_trend(layers["layer"], layers[column("mean_diff", stat)])
    boot = controls.bootstrap_trend(site.input_means[stat], settings.n_boot, settings.seed)
    null = site.nulls[stat]
    clean = layer_trend(layers["layer"], layers[column("mean_diff_no_outliers", stat)])
    means = layers[column("mean_diff", stat)].to_numpy()
    left_out = leave_one_out_slopes(layers["layer"].to_numpy(), means)
    standout = standout_layers(layers["layer"].to_numpy(), means)
    entry.update({
        # robustness of the direction (report/headline.py): the slope with each layer left out
        "slope_leave_one_out_low": min(left_out.values()) if left_out else np.nan,
        "slope_leave_one_out_high": max(left_out.values()) if left_out else np.nan,
        "sign_flipping_layers": [layer for layer, slope in left_out.items()
                                 if np.sign(slope) != np.sign(entry["slope"])],
        "standout_layers": standout,
        "standout_mean_diff": [float(means[layers["layer"].to_numpy() == layer][0]) for layer in standout],
        "slope_ci_low": boot["slope_low"], "slope_ci_high": boot["slope_high"],
        "r2_ci_low": boot["r2_low"], "r2_ci_high": boot["r2_high"],
        "slope_p_perm": null["p_value"], "n_perm": settings.n_perm,  # the p's floor is 1/(n_perm + 1)
        "slope_no_outliers": clean["slope"], "r2_no_outliers": clean["r2"],
    })
    return entry


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
