"""The sign-flip permutation p of each neuron's t (`p_perm`): a p-value that does not lean on
normality. One sign per input for all layers and neurons (the study's `SignFlips`); the
observed t is the t-test's own, from the same moments (stats/controls.py PermutationT)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from modalscope.stats.controls import PermutationT
from modalscope.stats.protocol import Accumulator, Context, Slab


class SignFlipTest:
    NAME = "sign_flip"
    REQUIRES = ("t_test",)

    @staticmethod
    def applies(stat: str) -> bool:
        return True

    def __init__(self, ctx: Context, shared: Mapping[str, Accumulator]) -> None:
        self.signs = ctx.signs
        self.test = PermutationT(moments=shared["t_test"].moments)  # type: ignore[attr-defined]

    def add(self, slab: Slab) -> None:
        self.test.add(slab.delta, self.signs.block(slab.start, slab.stop), slab.complete)

    def columns(self) -> dict[str, np.ndarray]:
        return {"p_perm": self.test.p_values()}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"s": self.test.s}

    def merge(self, other: "SignFlipTest") -> None:
        """S = Σ s_i Δ_i adds over inputs (the moments are the t-test's, merged there)."""
        self.test.s = other.test.s.copy() if self.test.s is None else self.test.s + other.test.s


STATISTIC = SignFlipTest
