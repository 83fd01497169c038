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

    def layer_outputs(self) -> dict[str, np.ndarray]:
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"s": self.test.s, "abs_sum": self.test.abs_sum, "rows": np.asarray(self.test.rows)}

    def merge(self, other: "SignFlipTest") -> None:
        """S = Σ s_i Δ_i and Σ|Δ_i| add over inputs (the moments are the t-test's, merged there)."""
        if self.test.s is None:
            self.test.s, self.test.abs_sum = other.test.s.copy(), other.test.abs_sum.copy()
        else:
            self.test.s, self.test.abs_sum = self.test.s + other.test.s, self.test.abs_sum + other.test.abs_sum
        self.test.rows = max(self.test.rows, other.test.rows)


STATISTIC = SignFlipTest
