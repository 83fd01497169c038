"""Per layer, from Table 3's cross-modal columns: how many neurons are cross-modal, and how that
share changes with depth, with an input-level 95% CI.

`xmodal_share` is the share of a layer's neurons (those with a defined r) with xmodal_q < 0.05
and r > 0: the neurons whose text and image responses rank the pairs alike beyond chance;
`xmodal_median_r` the layer's median r. The trend is a least-squares line of the share on
the layer index (summary.json `summary[site]["xmodal"]`).

Why the bootstrap is cheap and what it fixes: `xmodal_p` (stats/neuron/xmodal.py) is a
non-increasing function of |r| for a given number of kept pairs and values of k, the same for
every neuron of a site (exactly so for neurons without ties; a tied neuron's exact permutation
variance shifts its p slightly), and BH's q is a non-increasing function of p, so "q < 0.05"
over the site is "|r| >= r*", r* the smallest |r| among the neurons called (`threshold`). The bootstrap keeps r* and each neuron's ranks fixed and resamples the inputs
(in blocks, stats/neuron/xmodal.py; the same resamples in every layer), so a replicate's
share is the share of its r's at or above r*: the CI says how much the share moves with the
sample of pairs at the study's cut, not how much the cut itself would move. The replicates
cover a fixed, evenly spaced subset of at most BOOT_NEURONS neurons per layer
(stats/neuron/xmodal.py `layer_outputs`); the interval is the subset's bootstrap spread around
the full layer's value (the percentiles shifted by full - subset), wider than the full layer's
would be, if anything, since fewer neurons average out less of each input's noise.
"""

from __future__ import annotations

import warnings
import numpy as np

from modalscope.stats.columns import UNSUFFIXED_STAT, column
from modalscope.stats.controls import _line_fit
from modalscope.stats.fdr import ALPHA
from modalscope.stats.layers import layer_trend
from modalscope.stats.site_analysis import SiteAnalysis

LEVEL = 0.95
# Per-layer columns of layers.parquet (per reduction, suffixed as stats/columns.py `column`).
LAYER_COLUMNS = ("xmodal_share", "xmodal_share_ci_low", "xmodal_share_ci_high", "xmodal_median_r")


def threshold(r: np.ndarray, q: np.ndarray, alpha: float = ALPHA) -> float:
    """r*: the smallest |r| among the neurons with q < alpha (inf when none is called)."""
    r, q = np.asarray(r, dtype=np.float64), np.asarray(q, dtype=np.float64)
    called = np.abs(r[np.isfinite(r) & (q < alpha)])
    return float(called.min()) if called.size else np.inf


def share(r: np.ndarray, cut: float, axis: int = -1) -> np.ndarray:
    """Share of finite r with r > 0 and |r| >= cut (NaN when none is finite)."""
    r = np.asarray(r, dtype=np.float64)
    finite = np.isfinite(r)
    hits = (finite & (r > 0) & (np.abs(r) >= cut)).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / finite.sum(axis=axis)


def _tails() -> list[float]:
    return [50 * (1 - LEVEL), 50 * (1 + LEVEL)]


def _percentiles(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():  # a layer or a trend without finite replicates: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(values, _tails(), axis=axis)
    return low, high


class _Shares:
    """A reduction's observed shares (full layers and the bootstrapped subset) and replicates."""

    def __init__(self, site: "SiteAnalysis", stat: str) -> None:
        neurons = site.neurons
        self.r = neurons[column("xmodal_r", stat)].to_numpy(dtype=np.float64)
        self.layer = neurons["layer"].to_numpy()
        self.n_layers = int(self.layer.max()) + 1
        self.cut = threshold(self.r, neurons[column("xmodal_q", stat)].to_numpy(dtype=np.float64))
        by_layer = [self.r[self.layer == layer] for layer in range(self.n_layers)]
        self.full = np.array([share(r, self.cut) for r in by_layer])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self.median = np.array([np.nanmedian(r) if np.isfinite(r).any() else np.nan for r in by_layer])
        outputs = site.layer_outputs.get(stat, [])
        if len(outputs) == self.n_layers and all("boot_r" in o and o["boot_r"].size for o in outputs):
            self.subset = np.array([share(r[o["boot_neurons"]], self.cut) for r, o in zip(by_layer, outputs)])
            self.boot = np.stack([share(o["boot_r"], self.cut, axis=1) for o in outputs], axis=1)  # [B, L]
            self.boot_neurons = int(max(o["boot_neurons"].size for o in outputs))
        else:  # no replicates (n_boot = 0, or too few inputs)
            self.subset, self.boot, self.boot_neurons = self.full, np.zeros((0, self.n_layers)), 0


def xmodal_layer_columns(site: "SiteAnalysis", stat: str) -> dict[str, np.ndarray]:
    """{LAYER_COLUMNS name: [layer]} of reduction `stat` ({} when Table 3 has no xmodal_r)."""
    if column("xmodal_r", stat) not in site.neurons.columns:
        return {}
    shares = _Shares(site, stat)
    low, high = _percentiles(shares.boot) if len(shares.boot) else (np.full(shares.n_layers, np.nan),) * 2
    shift = shares.full - shares.subset
    return {"xmodal_share": shares.full, "xmodal_share_ci_low": np.clip(low + shift, 0, 1),
            "xmodal_share_ci_high": np.clip(high + shift, 0, 1), "xmodal_median_r": shares.median}


def _trend(site: "SiteAnalysis", stat: str) -> dict[str, object]:
    shares = _Shares(site, stat)
    entry: dict[str, object] = layer_trend(np.arange(shares.n_layers), shares.full)
    slope_low = slope_high = np.nan
    if len(shares.boot):
        slopes, _ = _line_fit(shares.boot)
        observed, _ = _line_fit(shares.subset[None, :])
        low, high = _percentiles(slopes)
        slope_low, slope_high = (float(v + entry["slope"] - observed[0]) for v in (low, high))
    entry.update({
        "slope_ci_low": slope_low, "slope_ci_high": slope_high,
        "threshold_abs_r": shares.cut, "alpha": ALPHA,
        "n_cross_modal": int((np.isfinite(shares.r) & (shares.r > 0) & (np.abs(shares.r) >= shares.cut)).sum()),
        "n_neurons": int(np.isfinite(shares.r).sum()),
        "median_r": float(np.nanmedian(shares.r)) if np.isfinite(shares.r).any() else np.nan,
        "boot_neurons_per_layer": shares.boot_neurons, "n_boot": int(len(shares.boot)),
    })
    return entry


def xmodal_summary(site: "SiteAnalysis", stats: list[str]) -> dict[str, object]:
    """summary.json's `xmodal` entry of a site: the share's trend for the report's reduction,
    each other reduction's under `by_stat` ({} when Table 3 has no cross-modal columns)."""
    have = [s for s in stats if column("xmodal_r", s) in site.neurons.columns]
    if not have:
        return {}
    entry = _trend(site, UNSUFFIXED_STAT) if UNSUFFIXED_STAT in have else {}
    entry["by_stat"] = {s: _trend(site, s) for s in have if s != UNSUFFIXED_STAT}
    return entry
