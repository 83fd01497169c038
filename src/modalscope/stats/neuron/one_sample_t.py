"""The report's test: a one-sample t of Δ per neuron (H0: E[Δ] = 0 over inputs), from running
moments in float64 (stats/moments.py), with Cohen's d_z = mean / sd (see stats/one_sample.py).
`p_value` (what q reads) is the skewness-corrected p of Hall (1992); `p_student` Student's
t p beside it; `skew_diff` the sample skewness of Δ the correction uses."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from modalscope.stats.moments import RunningMoments
from modalscope.stats.protocol import Accumulator, Context, Slab
from modalscope.stats.one_sample import one_sample_t


class TTest:
    NAME = "t_test"
    REQUIRES: tuple[str, ...] = ()
    COLUMNS = ("n", "mean_diff", "sd_diff", "t_value", "p_value", "cohen_d", "skew_diff", "p_student")

    @staticmethod
    def applies(stat: str) -> bool:
        return True

    def __init__(self, ctx: Context, shared: Mapping[str, Accumulator]) -> None:
        self.moments = RunningMoments()

    def add(self, slab: Slab) -> None:
        self.moments.add(slab.delta, slab.complete)

    def columns(self) -> dict[str, np.ndarray]:
        tests = one_sample_t(self.moments)
        return {name: getattr(tests, name) for name in self.COLUMNS}

    def layer_outputs(self) -> dict[str, np.ndarray]:
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.moments.state_dict()

    def merge(self, other: "TTest") -> None:
        self.moments.merge(other.moments)


STATISTIC = TTest
