"""tables/top_neurons.parquet: per site, reduction and direction, the neurons with the largest |t|.

Why a table: the report lists the 20 strongest neurons each way per site, for its headline
reduction only and as HTML; a researcher who wants that list in a script (or for another
reduction) had to re-rank Table 3 with the same rules (NaN t left out, Δ > 0 and Δ < 0 apart,
each reduction's columns under the report's names). `strongest` is those rules, and the report's
lists and this table both come from it, so they agree. Small: sites x reductions x 2 x k rows.
"""

from __future__ import annotations

import pandas as pd

from modalscope.stats.columns import as_unsuffixed

TOP_K = 20
# Table 3's columns the lists show, by their unsuffixed names (the report names them: report/facts.py).
COLUMNS = ("layer", "neuron", "mean_diff", "sd_diff", "t_value", "p_value", "q_value", "cohen_d", "p_perm",
           "max_abs_activation", "outlier")


def unsuffixed(neurons: pd.DataFrame, stat: str) -> pd.DataFrame:
    """Table 3 rows with reduction `stat`'s columns under the unsuffixed names (mean_diff, ...)."""
    renamed = as_unsuffixed(neurons.columns, stat)
    if not renamed:
        return neurons
    return neurons.drop(columns=[c for c in renamed.values() if c in neurons.columns]).rename(columns=renamed)


def strongest(neurons: pd.DataFrame, k: int = TOP_K,
              columns: tuple[str, ...] = COLUMNS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(Δ > 0, Δ < 0) of unsuffixed Table 3 rows: the k neurons with the largest |t| each way."""
    neurons = neurons[neurons["t_value"].notna()]
    shown = [c for c in columns if c in neurons.columns]
    up = neurons[neurons["t_value"] > 0].nlargest(k, "t_value")[shown]
    down = neurons[neurons["t_value"] < 0].nsmallest(k, "t_value")[shown]
    return up.reset_index(drop=True), down.reset_index(drop=True)


def top_neurons_table(neurons: pd.DataFrame, stats: list[str], k: int = TOP_K) -> pd.DataFrame:
    """One row per site, reduction, direction and rank (0: the largest |t|): `direction` is the side
    of Table 3's contrast the neuron prefers ('text' for Δ > 0 of text - image)."""
    parts = []
    for site in dict.fromkeys(neurons["site"].astype(str)):
        rows = neurons[neurons["site"].astype(str) == site]
        contrast = str(rows["contrast"].iloc[0]) if "contrast" in rows.columns else "text - image"
        sides = [s.strip() for s in contrast.split(" - ", 1)]
        for stat in stats:
            for side, top in zip(sides, strongest(unsuffixed(rows, stat), k)):
                parts.append(top.assign(site=site, stat=stat, direction=side, rank=range(len(top)),
                                        contrast=contrast))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(COLUMNS))
    first = ["site", "stat", "direction", "rank"]
    return frame[first + [c for c in frame.columns if c not in first]]
