"""Layer alignment of the two modalities, per site and layer: where words and pixels meet.

Why a pass of its own: Table 3 asks of each neuron whether it fires more for text or for
images; this asks of each layer whether its whole population code of a pair is the same when
the pair arrives as words or as pixels. Per site and layer it reads the [pairs, neurons]
responses of the study's two contrasted conditions (text and image by default) for one
reduction (`mean` by default: the population vector of the whole input), drops pairs with
a NaN in either, and hands them to `stats.alignment.alignment_with_uncertainty`: linear
CKA, mutual k-NN and cross-modal retrieval, each with a bootstrap CI over pairs and a
shuffled-pairing null (docs/method.md, "Layer alignment"). Every layer uses the same
resamples and pairings (the study's `alignment_bootstrap` and `alignment_null` streams), so
layers differ by their activations alone.

The result is tables/alignment.parquet, one row per (site, layer, stat, measure), and a
small per-site entry of summary.json (`alignment_summary`: where each measure peaks).

Cost. The measures compare every pair with every pair, so a layer costs O(n² d) to build
its Gram, similarity and neighbour matrices (n pairs, d neurons), O(B n²) for B bootstrap
replicates (matrix products), O(P n²) for CKA's P shuffled pairings (a gather of n²
elements each: the dominant term at scale) and O((B + P) n k) for k-NN and retrieval's null.
Measured (run_alignment on a one-layer float16 store of random activations, d = 4,096,
B = P = 1,000, the 2-core dev box, CPU seconds, which stay put when the box is shared):
n = 1,000: 13.9 s (CKA 8.2, k-NN 4.3, retrieval 1.2); n = 2,000: 55.8 s (CKA 37.8, k-NN
10.9, retrieval 6.6), i.e. n² from there. Extrapolated to LLaVA-1.5-7B with 5,000 pairs:
about 350 CPU s per layer and site (CKA's null alone about 200 s: ~0.2 s per pairing, a
single-threaded gather; the n² d products add ~35 s at the MLP's 11,008 neurons, ~50 GFLOP/s
per core), so 64 layer-sites cost ~6 CPU hours, more than half of it CKA's null.
Memory peaks near 16 n² bytes plus the layer itself in float64 (0.4 GB + 2 x 0.44 GB at
n = 5,000, d = 11,008).

So the pass is capped: it uses the first MAX_PAIRS pairs of the study's shuffled order (a
random sample, the same in every layer) and at most RESAMPLES bootstrap resamples and
shuffled pairings. At the cap a layer costs about (B + P) / 2,000 x 14 CPU s, ~3 CPU s with
200 + 200 at 4,096 neurons: minutes, not hours, for a 7B study (benchmarks/scale.py --goals),
and the n-dependent measures (k-NN, retrieval) compare across studies of any size at n =
MAX_PAIRS. 200 pairings put p's floor at 1/201 and the band's ends on 5 draws each: enough to
say where a layer leaves the null, which is what Figure 3 is for.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from modalscope.stats.alignment import MEASURES, alignment_with_uncertainty
from modalscope.stats.protocol import AnalysisSettings
from modalscope.store import ActivationStore

DEFAULT_STAT = "mean"
K = 10  # mutual k-NN's neighbours (Huh et al. 2024 use 10)
MAX_PAIRS = 1000  # pairs per layer, the first of the shuffled order (see Cost)
RESAMPLES = 200  # bootstrap resamples and shuffled pairings, at most (see Cost)
COLUMNS = ("site", "layer", "stat", "measure", "value", "ci_low", "ci_high", "null_low", "null_high", "p_value",
           "chance", "n_pairs", "k", "n_boot", "n_null", "contrast")


def layer_pairs(store: ActivationStore, site: str, layer: int, stat: str,
                conditions: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """[pairs, neurons] of both conditions at one layer (the first MAX_PAIRS inputs), read a
    block of inputs at a time, the pairs with a NaN in either condition left out."""
    first, second = conditions
    blocks = [(store.read_layer(site, first, stat, layer, start, min(stop, MAX_PAIRS)),
               store.read_layer(site, second, stat, layer, start, min(stop, MAX_PAIRS)))
              for start, stop in store.input_blocks() if start < MAX_PAIRS]
    width = store.width(site)
    x = np.concatenate([a for a, _ in blocks]) if blocks else np.empty((0, width), np.float32)
    y = np.concatenate([b for _, b in blocks]) if blocks else np.empty((0, width), np.float32)
    kept = np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1)
    return x[kept], y[kept]


def layer_rows(result: dict[str, float], site: str, layer: int, stat: str, contrast: str) -> list[dict]:
    """alignment_with_uncertainty's dict as one row per measure."""
    return [{"site": site, "layer": layer, "stat": stat, "measure": m, "value": result[m],
             "ci_low": result[f"{m}_low"], "ci_high": result[f"{m}_high"],
             "null_low": result[f"{m}_null_low"], "null_high": result[f"{m}_null_high"],
             "p_value": result[f"{m}_p"], "chance": result.get(f"{m}_chance", math.nan),
             "n_pairs": int(result["n_pairs"]), "k": int(result["k"]), "n_boot": int(result["n_boot"]),
             "n_null": int(result["n_null"]), "contrast": contrast} for m in MEASURES]


def run_alignment(store: ActivationStore, settings: AnalysisSettings, stat: str = DEFAULT_STAT) -> pd.DataFrame:
    """CKA, mutual k-NN and retrieval between the two contrasted conditions (settings.contrast)
    of every site and layer, reduction `stat`: one row per (site, layer, stat, measure), with
    the bootstrap CI (settings.n_boot resamples of pairs), the shuffled-pairing null band and
    p (settings.n_perm pairings) and chance (NaN for CKA, which has none in closed form)."""
    if stat not in store.stats:
        raise ValueError(f"--alignment-stat {stat}: {store.path.parent} recorded {', '.join(store.stats)}")
    contrast = " - ".join(settings.contrast)
    rows: list[dict] = []
    for site in store.sites:
        for layer in range(store.n_layers):
            x, y = layer_pairs(store, site, layer, stat, settings.contrast)
            result = alignment_with_uncertainty(x, y, n_boot=min(settings.n_boot, RESAMPLES),
                                                n_null=min(settings.n_perm, RESAMPLES), seed=settings.seed, k=K)
            rows += layer_rows(result, site, layer, stat, contrast)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.astype({"layer": "int64", "n_pairs": "int64", "k": "int64", "n_boot": "int64", "n_null": "int64"})


def alignment_summary(table: pd.DataFrame, site: str) -> dict:
    """summary.json's `alignment` of one site: per measure the layer where it peaks, its value
    there with the CI and p, chance, and the first layer whose value is above its null band."""
    rows = table[table["site"] == site]
    entry: dict = {"stat": str(rows["stat"].iloc[0]) if len(rows) else DEFAULT_STAT,
                   "contrast": str(rows["contrast"].iloc[0]) if len(rows) else "", "measures": {}}
    for measure in MEASURES:
        part = rows[rows["measure"] == measure].sort_values("layer")
        values = part["value"].to_numpy(dtype=float)
        if not np.isfinite(values).any():
            entry["measures"][measure] = {"peak_layer": None, "value": math.nan}
            continue
        peak = part.iloc[int(np.nanargmax(values))]
        above = part[part["value"] > part["null_high"]]
        entry["measures"][measure] = {
            "peak_layer": int(peak["layer"]), "value": float(peak["value"]), "ci_low": float(peak["ci_low"]),
            "ci_high": float(peak["ci_high"]), "p_value": float(peak["p_value"]), "chance": float(peak["chance"]),
            "first_layer_above_null": int(above["layer"].iloc[0]) if len(above) else None,
        }
    return entry
