"""Massive activations (Sun et al. 2024): each neuron's largest |activation| over the contrasted
inputs (`max_abs_activation`), and whether it is massive in its layer (`outlier`: at least
`outlier_factor` x the layer's median peak and more than 5 robust SDs of log peak above it;
stats/massive.py says why). Neurons with a few huge values can dominate layer means; the layer
summary also reports the mean without them. Taken on the raw max, the reduction the report uses."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from modalscope.stats.columns import UNSUFFIXED_STAT
from modalscope.stats.massive import massive_flags
from modalscope.stats.protocol import Accumulator, Context, Slab


def abs_peak(values: np.ndarray) -> np.ndarray:
    """[neurons] the largest |value| down each column, NaN (missing) left out; a column with
    none gives NaN or 0, which the running peak (from 0, np.fmax) treats alike. float16: from
    the bits, whose magnitude field orders |x| (numpy's float16 abs and max convert every value:
    7x the time)."""
    if not values.shape[0]:
        return np.zeros(values.shape[1])
    if values.dtype != np.float16:
        return np.nanmax(np.abs(values), 0)
    magnitude = values.view(np.uint16) & np.uint16(0x7FFF)
    magnitude[magnitude > 0x7C00] = 0  # a NaN is left out
    return magnitude.max(axis=0).view(np.float16).astype(np.float64)


class PeakActivation:
    NAME = "peak"
    REQUIRES: tuple[str, ...] = ()

    @staticmethod
    def applies(stat: str) -> bool:
        return stat == UNSUFFIXED_STAT

    def __init__(self, ctx: Context, shared: Mapping[str, Accumulator]) -> None:
        self.factor = ctx.settings.outlier_factor
        self.peak = np.zeros(ctx.width)

    def add(self, slab: Slab) -> None:
        for values in slab.values.values():
            self.peak = np.fmax(self.peak, abs_peak(values))

    def columns(self) -> dict[str, np.ndarray]:
        return {"max_abs_activation": self.peak, "outlier": massive_flags(self.peak, self.factor)}

    def layer_outputs(self) -> dict[str, np.ndarray]:
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"peak": self.peak}

    def merge(self, other: "PeakActivation") -> None:
        self.peak = np.fmax(self.peak, other.peak)


STATISTIC = PeakActivation
