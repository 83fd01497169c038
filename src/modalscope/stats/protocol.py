"""One protocol for every per-neuron statistic: accumulators fed one slab at a time.

Why: the analysis never holds Δ for all inputs ([5,000 inputs x 32 layers x 11,008 neurons]
at 7B). It reads one layer of one reduction a block of inputs at a time (a `Slab`) and hands
it to every statistic. A statistic is an accumulator (`add` per slab, `columns()` at the end
of the layer, `state_dict()`/`merge` so that shards computed apart combine into one), built
fresh per (site, layer, reduction) from a `Context`. Statistics do no I/O: the loop that
reads the store is analysis.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from modalscope.stats.controls import SignFlips

CONTRAST = ("text", "image")  # Δ = text - image, as in the report


@dataclass(frozen=True)
class AnalysisSettings:
    contrast: tuple[str, str] = CONTRAST  # Δ = first - second
    fdr: str = "bh"
    n_perm: int = 1000
    n_boot: int = 1000
    outlier_factor: float = 10.0  # stats/massive.py
    seed: int = 0
    xmodal_perm: bool = False  # also the permutation p of xmodal_r (`xmodal_p_perm`, n_perm re-pairings)
    # The primary family of tests, "SITE:REDUCTION[:A-B[:TEST]]" (BH at 0.05 on its own; every
    # other family by Benjamini-Bogomolov: analysis.py `fdr_plan`); None: mlp:matched_max.
    primary: str | None = None


@dataclass(frozen=True)
class Context:
    """What a statistic may know about the slabs it will see."""

    site: str
    layer: int
    stat: str  # the reduction (max, mean, matched_max, ...)
    width: int  # neurons
    n_inputs: int
    settings: AnalysisSettings
    signs: SignFlips  # the study's sign flips, [perm, input], shared by every neuron and layer
    pair_k: np.ndarray | None = None  # [input] the pair's k (matched_max's token count); None: unknown


@dataclass(frozen=True)
class Slab:
    """Inputs start:stop of one layer and reduction: Δ [inputs, neurons] float64 and each
    contrasted condition's values [inputs, neurons] (float32 as the store reads them, or float64;
    NaN: missing).

    Two promises the reader may make, each False unless it checked: `complete`, Δ holds no NaN
    (statistics then skip their missing-value handling, which costs a pass or two over the slab
    and changes no number); `half`, every value is a float16 number (a float16 store: the
    cross-modal statistic then keeps them as float16 without checking each one)."""

    start: int
    stop: int
    delta: np.ndarray
    values: Mapping[str, np.ndarray]
    complete: bool = False
    half: bool = False


class Accumulator(Protocol):
    """A per-neuron statistic over the inputs of one (site, layer, reduction)."""

    def add(self, slab: Slab) -> None: ...

    def columns(self) -> dict[str, np.ndarray]:
        """{column name (stats/columns.py NEURON_COLUMNS or TRAILING_COLUMNS): [neurons]}."""
        ...

    def layer_outputs(self) -> dict[str, np.ndarray]:
        """What the statistic gives per layer beyond Table 3's columns, for the layer summaries
        (stats/site_analysis.py `SiteAnalysis.layer_outputs`): e.g. the cross-modal r's
        bootstrap replicates; {} for most."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def merge(self, other: "Accumulator") -> None:
        """Fold in the same statistic over other inputs (another shard)."""
        ...
