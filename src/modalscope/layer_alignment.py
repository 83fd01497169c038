"""Layer alignment of the two modalities, per site and layer: where words and pixels meet.

Why a pass of its own: Table 3 asks of each neuron whether it fires more for text or for
images; this asks of each layer whether its whole population code of a pair is the same when
the pair arrives as words or as pixels. Per site and layer it reads the [pairs, neurons]
responses of the study's two contrasted conditions (text and image by default) for one
reduction (`mean` by default: the population vector of the whole input), drops pairs with
a NaN in either, and hands them to `stats.alignment.alignment_layer`: linear CKA (plug-in
and debiased), mutual k-NN and cross-modal retrieval, each with a shuffled-pairing null, the
debiased CKA with a jackknife interval over pairs (docs/method.md, "Layer alignment"). Every
layer uses the same pairings (the study's `alignment_null` stream), so layers differ by
their activations alone, and the layers of a site are compared with one max-statistic:
`p_layers`, the share of pairings whose largest standardised null value over the site's
layers reaches the layer's own, controls the family-wise error over layers (Westfall and
Young's single-step maxT), which is what "the first layer above the null" needs.

The result is tables/alignment.parquet, one row per (site, layer, stat, measure), and a
small per-site entry of summary.json (`alignment_summary`: where each measure peaks, with an
interval simultaneous over the layers, and the first layer above the null, family-wise).

Cost. The measures compare every pair with every pair, so a layer costs O(n² d) to build
its Gram, similarity and neighbour matrices (n pairs, d neurons), O(n³) for the debiased
CKA's jackknife (three n x n products, 0.45 CPU s at n = 1,000), O(P n²) for CKA's P
shuffled pairings (a gather of n² elements each: the dominant term at scale) and O(P n k)
for k-NN and retrieval's null. The figures below predate the jackknife and were measured
with B = 1,000 bootstrap replicates as well, which are no longer drawn (an upper bound).
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
random sample, the same in every layer) and at most RESAMPLES shuffled pairings. At the cap a layer costs about (B + P) / 2,000 x 14 CPU s, ~3 CPU s with
200 + 200 at 4,096 neurons: minutes, not hours, for a 7B study (benchmarks/scale.py --goals),
and the n-dependent measures (k-NN, retrieval) compare across studies of any size at n =
MAX_PAIRS. 200 pairings put p's floor at 1/201 and the band's ends on 5 draws each: enough to
say where a layer leaves the null, which is what Figure 3 is for.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from modalscope.stats.alignment import INTERVAL_METHOD, MEASURES, alignment_layer, interval
from modalscope.stats.fdr import ALPHA  # family-wise level of "the first layer above the null"
from modalscope.stats.protocol import AnalysisSettings
from modalscope.store import ActivationStore

DEFAULT_STAT = "mean"
K = 10  # mutual k-NN's neighbours (Huh et al. 2024 use 10)
MAX_PAIRS = 1000  # pairs per layer, the first of the shuffled order (see Cost)
RESAMPLES = 200  # shuffled pairings, at most (see Cost)
COLUMNS = ("site", "layer", "stat", "measure", "value", "ci_low", "ci_high", "null_low", "null_high", "p_value",
           "chance", "n_pairs", "k", "n_boot", "n_null", "contrast", "se", "p_layers", "ci_method")


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
    """alignment_with_uncertainty's dict as one row per measure (n_boot 0: no bootstrap is drawn;
    p_layers is filled in per site by run_alignment)."""
    return [{"site": site, "layer": layer, "stat": stat, "measure": m, "value": result[m],
             "ci_low": result[f"{m}_low"], "ci_high": result[f"{m}_high"],
             "null_low": result[f"{m}_null_low"], "null_high": result[f"{m}_null_high"],
             "p_value": result[f"{m}_p"], "chance": result.get(f"{m}_chance", math.nan),
             "n_pairs": int(result["n_pairs"]), "k": int(result["k"]), "n_boot": 0,
             "n_null": int(result["n_null"]), "contrast": contrast, "se": result[f"{m}_se"],
             "p_layers": math.nan, "ci_method": INTERVAL_METHOD.get(m, "")} for m in MEASURES]


def max_statistic_p(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """[L] family-wise p over L layers (Westfall-Young single-step maxT) from the observed
    values [L] and their null draws [L, P] under the same P pairings.

    Each layer is standardised by its own null's mean and standard deviation (layers with a
    wide null do not dominate); p_l = (1 + #{π: max_l' T_l'(π) >= T_l}) / (P + 1). A null
    with no spread standardises to 0, and the observed value to +inf above it (-inf below).
    Layers whose null is all NaN take no part; their p is NaN, as is every p when P = 0."""
    observed, null = np.asarray(observed, float), np.asarray(null, float)
    out = np.full(observed.shape, np.nan)
    if null.ndim != 2 or null.shape[1] == 0:
        return out
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mu, sd = np.nanmean(null, axis=1), np.nanstd(null, axis=1, ddof=1)
        flat = ~(sd > 0)
        t_obs = np.where(flat, np.sign(observed - mu) * np.inf, (observed - mu) / sd)
        t_obs = np.where(flat & (observed == mu), 0.0, t_obs)
        t_null = np.where(flat[:, None], 0.0, (null - mu[:, None]) / sd[:, None])
        used = np.isfinite(mu)
        if not used.any():
            return out
        top = np.nanmax(np.where(np.isnan(null[used]), -np.inf, t_null[used]), axis=0)  # [P]
    tol = 1e-12 * np.maximum(np.abs(np.where(np.isfinite(t_obs), t_obs, 0.0)), 1.0)
    hits = (top[None, :] >= (t_obs - tol)[:, None]).sum(axis=1)
    p = (1.0 + hits) / (null.shape[1] + 1)
    return np.where(used & np.isfinite(observed), p, np.nan)


def run_alignment(store: ActivationStore, settings: AnalysisSettings, stat: str = DEFAULT_STAT) -> pd.DataFrame:
    """CKA (plug-in and debiased), mutual k-NN and retrieval between the two contrasted
    conditions (settings.contrast) of every site and layer, reduction `stat`: one row per
    (site, layer, stat, measure), with the shuffled-pairing null band and p (settings.n_perm
    pairings, at most RESAMPLES), p_layers (max-statistic over the site's layers), chance (NaN
    for CKA, which has none in closed form) and, for the debiased CKA, the jackknife se and
    95% interval."""
    if stat not in store.stats:
        raise ValueError(f"--alignment-stat {stat}: {store.path.parent} recorded {', '.join(store.stats)}")
    contrast = " - ".join(settings.contrast)
    frames: list[pd.DataFrame] = []
    for site in store.sites:
        rows: list[dict] = []
        nulls: list[dict[str, np.ndarray]] = []
        for layer in range(store.n_layers):
            x, y = layer_pairs(store, site, layer, stat, settings.contrast)
            result, null = alignment_layer(x, y, n_null=min(settings.n_perm, RESAMPLES), seed=settings.seed, k=K)
            rows += layer_rows(result, site, layer, stat, contrast)
            nulls.append(null)
        frame = pd.DataFrame(rows, columns=list(COLUMNS))
        for measure in MEASURES:
            at = (frame["measure"] == measure).to_numpy()
            observed = frame.loc[at, "value"].to_numpy(dtype=float)
            frame.loc[at, "p_layers"] = max_statistic_p(observed, np.stack([n[measure] for n in nulls]))
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))
    frame = frame.astype({"p_layers": "float64", "se": "float64"})
    return frame.astype({"layer": "int64", "n_pairs": "int64", "k": "int64", "n_boot": "int64", "n_null": "int64"})


def alignment_summary(table: pd.DataFrame, site: str, level: float = 0.95) -> dict:
    """summary.json's `alignment` of one site: per measure the layer where it peaks, its value
    there, the first layer above the null, family-wise over the site's layers, and chance.

    Corrected for the scan over L layers: `ci_low`, `ci_high` at the peak are simultaneous
    over the L layers (Bonferroni: value ± z_{1 - 0.025/L} se), so they cover the peak layer's
    value whichever layer the data made the peak; `p_value` is the max-statistic p_layers;
    `first_layer_above_null` the first layer with p_layers < ALPHA (family-wise error ALPHA
    over layers). The uncorrected ones are kept as `ci_pointwise_low`, `ci_pointwise_high`,
    `p_pointwise`. Measures without an interval (the plug-in CKA, mutual k-NN, top-5; see
    stats/alignment.WITH_INTERVAL and docs/method.md) have NaN bounds."""
    rows = table[table["site"] == site]
    entry: dict = {"stat": str(rows["stat"].iloc[0]) if len(rows) else DEFAULT_STAT,
                   "contrast": str(rows["contrast"].iloc[0]) if len(rows) else "", "measures": {}}
    for measure in MEASURES:
        part = rows[rows["measure"] == measure].sort_values("layer")
        values = part["value"].to_numpy(dtype=float)
        if not np.isfinite(values).any():
            entry["measures"][measure] = {"peak_layer": None, "value": math.nan}
            continue
        layers = int(np.isfinite(values).sum())
        peak = part.iloc[int(np.nanargmax(values))]
        low, high = interval(float(peak["value"]), float(peak["se"]), level, tests=layers)
        above = part[part["p_layers"] < ALPHA]
        entry["measures"][measure] = {
            "peak_layer": int(peak["layer"]), "value": float(peak["value"]), "ci_low": float(low),
            "ci_high": float(high), "p_value": float(peak["p_layers"]), "chance": float(peak["chance"]),
            "first_layer_above_null": int(above["layer"].iloc[0]) if len(above) else None,
            "ci_pointwise_low": float(peak["ci_low"]), "ci_pointwise_high": float(peak["ci_high"]),
            "p_pointwise": float(peak["p_value"]), "n_layers": layers,
            "correction": (f"CI simultaneous over {layers} layers (Bonferroni); p and first layer above the null "
                           f"family-wise over {layers} layers (max-statistic over shuffled pairings)"),
        }
    return entry
