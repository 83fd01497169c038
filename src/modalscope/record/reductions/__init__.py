"""The registry of reductions over tokens: one module per reduction, one spec for them all.

Why: a layer's activations are [batch, tokens, neurons] (for LLaVA-1.5-7B's MLP ~600 x
11,008 per input); reducing them on the device, inside the hook, means only [batch, neurons]
ever leaves it. Each reduction is a module of this package holding

    NEEDS_K: bool                                  # reads TokenView.k (tokens per pair)
    def reduce(view: TokenView, spec: ReductionSpec) -> torch.Tensor  # [batch, neurons] float32

and is found by its file name, so adding a reduction is one new file (plus its test): the
recorder loops over `ReductionSpec.names` and nothing else names a reduction. Columns of a
reduction other than max carry its name as a suffix (stats/columns.py).

Length robustness: text inputs have ~10 content tokens, image inputs ~576, and the max of
more values is larger (E[max] of 12 vs 576 i.i.d. N(0,1) is 1.63 vs 3.08), so a raw max
compares lengths as much as modalities; matched_max, frac_active and quantile do not grow
with the number of tokens. Every reduction gives NaN for a row without content tokens, so
an empty input is visible downstream instead of silently reading as 0 or -inf.

This module imports no torch: the CLI validates names without loading it; an implementation
is imported when a recorder first uses it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modalscope.streams import ALWAYS_REDUCTIONS as ALWAYS  # its home is streams.py (the store reads it too)

if TYPE_CHECKING:
    import torch

    from modalscope.record.tokens import TokenView

# The built-in reductions in column order; a new module is appended after them by name.
_BUILT_IN = ("max", "mean", "matched_max", "frac_active", "quantile")
_FOUND = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
ALL_STATS: tuple[str, ...] = tuple(n for n in _BUILT_IN if n in _FOUND) + tuple(sorted(_FOUND - set(_BUILT_IN)))
# Recorded unless --stats says otherwise: the report's controls need matched_max (the length-matched
# max); frac_active and quantile are opt-in (each adds ~4.8 GB per 5,000 pairs at 7B widths, float16).
DEFAULT_STATS = (*ALWAYS, "matched_max")
DEFAULT_QUANTILE = 0.9


def quantile_problem(q: object) -> str | None:
    """Why `q` is no quantile for the `quantile` reduction, or None: 0 < q < 1, both excluded, since
    q = 1 is the max and q = 0 the min of the tokens (the max is recorded always; neither is the
    length-robust upper quantile this reduction is for). The one bound: --quantile, the study file
    and a store's attributes are all checked by it."""
    try:
        inside = 0.0 < float(q) < 1.0  # NaN is outside
    except (TypeError, ValueError):
        return "must be a number"
    return None if inside else "must be between 0 and 1, both excluded (0 is the min, 1 the max)"


def implementation(name: str):
    """The module of reduction `name` (imported on first use)."""
    if name not in ALL_STATS:
        raise ValueError(f"unknown reduction {name!r}; choose from {', '.join(ALL_STATS)}")
    return importlib.import_module(f"{__name__}.{name}")


@dataclass(frozen=True)
class ReductionSpec:
    """Which reductions a study records and their parameters: saved in the store's attributes
    (`attrs()`: the keys `stats` and `quantile`) and checked on resume, so a resumed run cannot
    reduce its remaining pairs differently."""

    names: tuple[str, ...] = ALWAYS
    quantile: float = DEFAULT_QUANTILE

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        unknown = [n for n in self.names if n not in ALL_STATS]
        if unknown:
            raise ValueError(f"unknown reductions {', '.join(unknown)}; choose from {', '.join(ALL_STATS)}")
        problem = quantile_problem(self.quantile)
        if problem:
            raise ValueError(f"quantile {self.quantile}: {problem}")

    @classmethod
    def of(cls, reductions: "ReductionSpec | Sequence[str]") -> "ReductionSpec":
        return reductions if isinstance(reductions, ReductionSpec) else cls(tuple(reductions))

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "ReductionSpec":
        return cls(tuple(attrs.get("stats", ALWAYS)), float(attrs.get("quantile", DEFAULT_QUANTILE)))

    def attrs(self) -> dict[str, Any]:
        return {"stats": list(self.names), "quantile": float(self.quantile)}

    @property
    def needs_k(self) -> bool:
        return any(implementation(n).NEEDS_K for n in self.names)


def reduce_view(view: "TokenView", spec: ReductionSpec) -> dict[str, "torch.Tensor"]:
    """{reduction: [batch, neurons] float32} of one stream and layer, in `spec.names` order."""
    return {name: implementation(name).reduce(view, spec) for name in spec.names}


def reduce_tokens(activations: "torch.Tensor", mask: "torch.Tensor", spec: "ReductionSpec | Sequence[str]",
                  k: "torch.Tensor | None" = None) -> dict[str, "torch.Tensor"]:
    """`reduce_view` of a plain (activations, mask) pair: for tests, benchmarks and notebooks."""
    from modalscope.record.tokens import TokenView

    return reduce_view(TokenView(activations, mask.to(activations.device), k), ReductionSpec.of(spec))
