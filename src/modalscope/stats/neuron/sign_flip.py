"""The sign-flip permutation p of each neuron's t (`p_perm`): a p-value that does not lean on
normality. One sign per input for all layers and neurons (the study's `SignFlips`); the
observed t is the t-test's own, from the same moments (stats/controls.py PermutationT), and
the permuted sums come from the sign flips' group structure (stats/sign_group.py)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from modalscope.stats.sign_group import GroupPermutationT
from modalscope.stats.protocol import Accumulator, Context, Slab


class SignFlipTest:
    NAME = "sign_flip"
    REQUIRES = ("t_test",)

    @staticmethod
    def applies(stat: str) -> bool:
        return True

    def __init__(self, ctx: Context, shared: Mapping[str, Accumulator]) -> None:
        self.test = GroupPermutationT(ctx.signs, moments=shared["t_test"].moments)  # type: ignore[attr-defined]

    def add(self, slab: Slab) -> None:
        self.test.add(slab.delta, slab.start, slab.complete)

    def columns(self) -> dict[str, np.ndarray]:
        return {"p_perm": self.test.p_values()}

    def layer_outputs(self) -> dict[str, np.ndarray]:
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"cells": self.test.cells}

    def merge(self, other: "SignFlipTest") -> None:
        """The cell sums add over inputs (the moments are the t-test's, merged there)."""
        if self.test.cells is None:
            self.test.cells = None if other.test.cells is None else other.test.cells.copy()
        elif other.test.cells is not None:
            self.test.cells = self.test.cells + other.test.cells


STATISTIC = SignFlipTest
