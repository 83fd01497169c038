"""The one home of Table 3's column names and of the rule that names them per reduction.

Columns of the report's reduction (the raw max) carry the report's names (`mean_diff`,
`t_value`, ...); the same column for any other reduction carries its name as a suffix
(`mean_diff_matched_max`), and the base-LLM contrast's copy of a column adds `_vs_base`
(`t_value_mean_vs_base`). Every table holding a Δ also has a `contrast` column.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

UNSUFFIXED_STAT = "max"  # the report's reduction: its columns keep the report's names
VS_BASE = "_vs_base"  # suffix of Δ_base's columns (text - text_base), after the usual name

# Per-neuron columns, per reduction, in Table 3's order. A statistic (stats/neuron/) may
# only produce names listed here; `q_value` is the FDR of `p_value` over the site's neurons.
NEURON_COLUMNS = ("n", "mean_diff", "sd_diff", "t_value", "p_value", "q_value", "cohen_d", "skew_diff",
                  "p_student", "p_perm", "share_positive", "p_sign", "xmodal_r", "xmodal_p", "xmodal_q",
                  "xmodal_ci_low", "xmodal_ci_high", "xmodal_pearson", "xmodal_p_perm")
# {p column: its q column}: the p-values that analysis.py turns into FDR q-values over the site's
# neurons (settings.fdr), per reduction, once every layer's p is known.
FDR_COLUMNS = {"p_value": "q_value", "xmodal_p": "xmodal_q"}
# {q column: its column under the study's multiplicity plan} (stats/fdr.py `plan`, analysis.py):
# the q of the primary family's own BH, or Benjamini-Bogomolov over every other family; placed
# at the end of Table 3 (earlier columns keep their places), with the same suffixes (q_hier_matched_max, xmodal_q_hier_vs_base).
HIER_COLUMNS = {"q_value": "q_hier", "xmodal_q": "xmodal_q_hier"}
# The test behind each p column, as a family's name says it (site:reduction:contrast:test).
FDR_TESTS = {"p_value": "delta", "xmodal_p": "xmodal"}
# Of these, the same for every reduction (the inputs): kept once, unsuffixed.
SHARED_COLUMNS = ("n",)
# Per-neuron columns of the report's reduction only, after every reduction's columns.
TRAILING_COLUMNS = ("max_abs_activation", "outlier")
KEYS = ("site", "layer", "neuron")


def column(name: str, stat: str) -> str:
    """The report's column name for the max reduction, suffixed for any other."""
    return name if stat == UNSUFFIXED_STAT else f"{name}_{stat}"


def as_unsuffixed(names: Iterable[str], stat: str) -> dict[str, str]:
    """{suffixed name: the report's name} of reduction `stat`'s columns among `names`, so a
    figure drawn for max reads any reduction's columns under the same names."""
    if stat == UNSUFFIXED_STAT:
        return {}
    suffix = f"_{stat}"
    return {n: n[: -len(suffix)] for n in names if n.endswith(suffix)}


def site_rows(frame, site: str, needs: Iterable[str] = (), table: str = "the"):
    """The rows of `site` of a table with a `site` column (all rows without one), refused in one
    line when it lacks a column in `needs` or holds no row of the site."""
    missing = set(needs) - set(frame.columns)
    if missing:
        raise ValueError(f"{table} table lacks columns {sorted(missing)}")
    if "site" in frame.columns:
        frame = frame[frame["site"] == site] if (frame["site"] == site).any() else _no_site(frame, site)
    if frame.empty:
        raise ValueError(f"{table} table for site {site!r} is empty")
    return frame


def _no_site(frame, site: str):
    raise ValueError(f"no rows for site {site!r}; sites present: {sorted(map(str, frame['site'].unique()))}")


def kept(name: str, stat: str) -> bool:
    """Whether reduction `stat`'s value of column `name` goes into Table 3."""
    return name not in SHARED_COLUMNS or stat == UNSUFFIXED_STAT


def table3_order(present: Iterable[str], stats: Sequence[str]) -> list[str]:
    """Table 3's columns in order: keys, each reduction's neuron columns, the trailing ones,
    the contrast; only those in `present`."""
    have = set(present)
    names = [*KEYS]
    names += [column(n, s) for s in stats for n in NEURON_COLUMNS if kept(n, s)]
    names += [*TRAILING_COLUMNS, "contrast"]
    return [n for n in names if n in have]


def vs_base_columns(table: Iterable[str], stats: Sequence[str]) -> list[str]:
    """The columns of Δ_base's Table 3 taken beside the study's: every per-reduction column but
    the shared ones (the same inputs) and the trailing ones (activations, not Δ)."""
    have = set(table)
    return [column(n, s) for s in stats for n in NEURON_COLUMNS
            if n not in SHARED_COLUMNS and column(n, s) in have]
