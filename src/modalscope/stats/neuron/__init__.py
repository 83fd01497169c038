"""The per-neuron statistics of Table 3, one module each, found by file name.

Each module defines `STATISTIC`, a class following stats/protocol.py's `Accumulator` with

    NAME: str                      # its name, for `REQUIRES` of others
    REQUIRES: tuple[str, ...]      # statistics it reads (built before it, passed in `shared`)
    applies(stat) -> bool          # (static) whether it runs for reduction `stat`
    __init__(ctx: Context, shared: Mapping[str, Accumulator])

so adding a statistic is one new file, its test and its column names in stats/columns.py.
"""

from __future__ import annotations

import importlib
import pkgutil

from modalscope.stats.protocol import Accumulator, Context


def _classes() -> list[type]:
    found = [importlib.import_module(f"{__name__}.{m.name}").STATISTIC
             for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name) if not m.name.startswith("_")]
    ordered: list[type] = []
    while found:  # requirements first, otherwise by file name
        ready = [c for c in found if all(r in {o.NAME for o in ordered} for r in c.REQUIRES)]
        if not ready:
            raise RuntimeError(f"statistics with unmet REQUIRES: {[c.NAME for c in found]}")
        ordered.append(ready[0])
        found.remove(ready[0])
    return ordered


STATISTICS = _classes()


def accumulators(ctx: Context) -> dict[str, Accumulator]:
    """Fresh accumulators of every statistic that applies to `ctx.stat`, in dependency order."""
    made: dict[str, Accumulator] = {}
    for cls in STATISTICS:
        if cls.applies(ctx.stat):
            made[cls.NAME] = cls(ctx, made)
    return made
