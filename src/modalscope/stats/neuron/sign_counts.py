"""The sign test per neuron: does the first condition win more pairs than chance?

`share_positive` is the share of pairs with Δ > 0 among those with Δ ≠ 0 (ties and missing
values left out), an effect size that no outlier pair can move far; `p_sign` the exact
two-sided binomial p of those counts under H0: P(Δ > 0) = 1/2, the distribution-free test
beside the t-test and its sign-flip p (which both test the mean). Streaming: three counts per
neuron, so memory does not grow with the inputs.

Where every (non-missing) Δ is 0 (e.g. text - text_base below the first fine-tuned layer, or
on a model whose language model is its base's) no pair has Δ > 0 and the binomial test of 0
successes in 0 trials has p = 1: `share_positive` = 0 and `p_sign` = 1, as their definitions
give, not NaN; NaN only where a neuron has no non-missing Δ at all.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import stats as sps

from modalscope.stats.protocol import Accumulator, Context, Slab


class SignTest:
    NAME = "sign_test"
    REQUIRES: tuple[str, ...] = ()

    @staticmethod
    def applies(stat: str) -> bool:
        return True

    def __init__(self, ctx: Context, shared: Mapping[str, Accumulator]) -> None:
        self.positive = np.zeros(ctx.width, dtype=np.int64)
        self.negative = np.zeros(ctx.width, dtype=np.int64)
        self.zero = np.zeros(ctx.width, dtype=np.int64)

    def add(self, slab: Slab) -> None:
        count = lambda mask: np.add.reduce(mask, axis=0, dtype=np.int32)  # noqa: E731 (a block < 2^31 inputs)
        positive, negative = count(slab.delta > 0), count(slab.delta < 0)
        self.positive += positive
        self.negative += negative
        if slab.complete:  # no NaN: the rest are the zeros
            self.zero += slab.delta.shape[0] - positive - negative
        else:
            self.zero += (slab.delta == 0).sum(axis=0)

    def columns(self) -> dict[str, np.ndarray]:
        n = self.positive + self.negative
        fewer = np.minimum(self.positive, self.negative)
        all_zero = (n == 0) & (self.zero > 0)  # every non-missing Δ is 0: no pair differs
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(n > 0, self.positive / n, np.where(all_zero, 0.0, np.nan))
            p = np.where(n > 0, np.minimum(1.0, 2.0 * sps.binom.cdf(fewer, n, 0.5)), np.where(all_zero, 1.0, np.nan))
        return {"share_positive": share, "p_sign": p}

    def layer_outputs(self) -> dict[str, np.ndarray]:
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"positive": self.positive, "negative": self.negative, "zero": self.zero}

    def merge(self, other: "SignTest") -> None:
        self.positive = self.positive + other.positive
        self.negative = self.negative + other.negative
        self.zero = self.zero + other.zero


STATISTIC = SignTest
