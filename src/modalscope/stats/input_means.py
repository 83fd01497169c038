"""Per input, the mean over a layer's neurons of Δ: the input-level unit of every control.

The inputs are the sampled units, so the layer trend's interval, bootstrap and permutation
null (stats/controls.py) resample rows of this [input, layer] matrix, never neurons. It is
the one thing the analysis keeps across inputs: I x L floats per reduction.
"""

from __future__ import annotations

import warnings

import numpy as np

from modalscope.stats.protocol import Context, Slab


class InputLayerMeans:
    """[input] mean Δ over the neurons of one (site, layer, reduction); NaN for an input whose
    Δ is missing for every neuron."""

    def __init__(self, ctx: Context) -> None:
        self.means = np.full(ctx.n_inputs, np.nan)

    def add(self, slab: Slab) -> None:
        if slab.complete:  # nothing to skip: nanmean's sum and count without its masked copy
            self.means[slab.start:slab.stop] = slab.delta.mean(axis=1)
            return
        with warnings.catch_warnings():  # all-NaN rows give NaN, as intended
            warnings.simplefilter("ignore", RuntimeWarning)
            self.means[slab.start:slab.stop] = np.nanmean(slab.delta, axis=1)

    def columns(self) -> dict[str, np.ndarray]:
        return {}  # not a Table 3 column: the loop collects `means` into the [input, layer] matrix

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"means": self.means}

    def merge(self, other: "InputLayerMeans") -> None:
        """Shards hold disjoint inputs: each keeps NaN where the other has its rows."""
        self.means = np.where(np.isnan(self.means), other.means, self.means)
