"""False discovery rate control over the neurons of a site (the family of hypotheses a
researcher scans): Benjamini-Hochberg, or Benjamini-Yekutieli, which holds under any
dependence between the tests (e.g. neurons of one layer)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _step_up(p_values: np.ndarray, by: bool) -> np.ndarray:
    """Step-up adjusted p-values: p_(j)·m·c/j, running minimum from the top, capped at 1.

    c = 1 for Benjamini-Hochberg, c = Σ_{i≤m} 1/i for Benjamini-Yekutieli. NaN p-values
    stay NaN and do not count as hypotheses.
    """
    p = np.asarray(p_values, dtype=np.float64)
    q = np.full_like(p, np.nan)
    finite = ~np.isnan(p)
    m = int(finite.sum())
    if m == 0:
        return q
    ranked = p[finite]
    order = np.argsort(ranked)
    rank = np.arange(1, m + 1)
    c = np.sum(1.0 / rank) if by else 1.0
    monotone = np.minimum.accumulate((ranked[order] * m * c / rank)[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(monotone, 1.0)
    q[finite] = adjusted
    return q


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (q); NaN p-values stay NaN and do not count as hypotheses."""
    return _step_up(p_values, by=False)


def benjamini_yekutieli(p_values: np.ndarray) -> np.ndarray:
    """BY-adjusted p-values (q), valid under any dependence between the tests
    (BH with m replaced by m·Σ_{i≤m} 1/i, as `scipy.stats.false_discovery_control(method="by")`)."""
    return _step_up(p_values, by=True)


def fdr(p: np.ndarray, method: str = "bh") -> np.ndarray:
    """q-values: "bh" (Benjamini-Hochberg) or "by" (Benjamini-Yekutieli, any dependence)."""
    if method == "bh":
        return benjamini_hochberg(p)
    if method == "by":
        return benjamini_yekutieli(p)
    raise ValueError(f"unknown FDR method {method!r}; expected 'bh' or 'by'")


# One primary family, the rest by Benjamini-Bogomolov -------------------------------------------
# A study scans 12-30 families (site x reduction x contrast x test). BH within each family
# controls each family's FDR, but nothing across them: with M null families, about 0.05·M of
# them still call something. The study therefore names ONE primary family (its confirmatory
# question, BH at alpha on its own) and controls every other family by the hierarchical
# procedure of Benjamini & Bogomolov (2014, JRSS-B 76:743): the Simes p of each family, BH (or
# BY) over the M families' Simes p-values at alpha selects R families, and within a selected
# family the within-family procedure runs at alpha·R/M; a family not selected calls nothing.
# That bounds the expected average FDR over the selected families by alpha (and, as a Simes
# test of each family's global null, the FDR over families) under independence or positive
# dependence (PRDS) of the tests.

ALPHA = 0.05  # the study's level for every call (the report's q < 0.05)


def simes(p_values: np.ndarray) -> float:
    """The Simes p of a family's global null: min_k p_(k)·m/k over its m non-NaN p-values
    (capped at 1), which is the smallest BH q of the family; NaN when it has none."""
    q = benjamini_hochberg(p_values)
    return float(np.nanmin(q)) if np.isfinite(q).any() else float("nan")


def hierarchical_q(family_q: np.ndarray, within_q: list[np.ndarray]) -> list[np.ndarray]:
    """Benjamini-Bogomolov adjusted q of every test of every family.

    `family_q` [M]: the families' q over the M Simes p-values (BH or BY); `within_q`: per family,
    its tests' within-family q (BH or BY). For a test of family i with within-family q `w`, the
    procedure at level a calls it iff family_q_i ≤ a and w ≤ a·R(a)/M, R(a) = #{family_q ≤ a}.
    Its adjusted q is the smallest such a:

        q_hier = min over j ≥ rank(family_q_i) of max(family_q_(j), w·M/j),  capped at 1,

    so `q_hier ≤ a` (and `q_hier < a`) is exactly the call at level a, at every a, not only
    0.05. At a = 0.05, in a selected family, q_hier < 0.05 iff w·M/R < 0.05; in a family not
    selected, q_hier ≥ its family_q ≥ 0.05. NaN stays NaN (and a family with no p is NaN).
    """
    f = np.asarray(family_q, dtype=np.float64)
    order = np.sort(f[np.isfinite(f)])
    m_families = len(order)  # families with a p (a family with none is no hypothesis)
    out = []
    for fi, w in zip(f, within_q):
        w = np.asarray(w, dtype=np.float64)
        best = np.full(w.shape, np.inf)
        if np.isfinite(fi):
            first = int(np.searchsorted(order, fi, side="left"))  # 0-based rank among the families
            j = np.arange(first + 1, m_families + 1)  # 1-based ranks j ≥ rank(family_q_i)
            flat = w.ravel()
            for start in range(0, flat.size, 1 << 16):  # [tests, j] a block at a time
                part = flat[start:start + (1 << 16), None]
                scaled = part * (m_families / j)  # at j = M exactly w
                best.ravel()[start:start + part.shape[0]] = np.maximum(order[first:], scaled).min(axis=1)
        best = np.minimum(best, 1.0)
        best[np.isnan(w) | ~np.isfinite(fi)] = np.nan
        out.append(best)
    return out


@dataclass(frozen=True)
class FamilyResult:
    """One family's place in the study's plan: `role` "primary" (BH on its own) or "secondary"
    (Benjamini-Bogomolov over the secondary families)."""

    name: str
    role: str
    m: int  # tests (non-NaN p)
    simes_p: float
    family_q: float  # BH/BY over the secondary families' Simes p (NaN for the primary family)
    selected: bool  # primary: always; secondary: family_q < ALPHA
    level: float  # the within-family level its calls are made at (ALPHA, ALPHA·R/M, or 0)
    q_hier: np.ndarray  # per test: the adjusted q of the plan (q_hier < ALPHA: called)


def plan(p_families: dict[str, np.ndarray], primary: str | None, method: str = "bh",
         alpha: float = ALPHA) -> dict[str, FamilyResult]:
    """The study's multiplicity plan over named families of p-values: `primary` (a key, or None:
    no primary) by `method` (BH/BY) alone; every other family by Benjamini-Bogomolov with Simes
    family p-values and `method` both over the families and within them."""
    if primary is not None and primary not in p_families:
        raise ValueError(f"primary family {primary!r} is not among the families {sorted(p_families)}")
    out: dict[str, FamilyResult] = {}
    if primary is not None:
        p = np.asarray(p_families[primary], dtype=np.float64)
        q = fdr(p, method)
        out[primary] = FamilyResult(primary, "primary", int(np.isfinite(p).sum()), simes(p), float("nan"), True,
                                    alpha, q)
    names = [n for n in p_families if n != primary]
    if names:
        ps = [np.asarray(p_families[n], dtype=np.float64) for n in names]
        simes_p = np.array([simes(p) for p in ps])
        family_q = fdr(simes_p, method)
        within = [fdr(p, method) for p in ps]
        hier = hierarchical_q(family_q, within)
        selected = np.nan_to_num(family_q, nan=np.inf) < alpha  # the report's convention: q < 0.05
        r, m_families = int(selected.sum()), int(np.isfinite(simes_p).sum())
        for i, n in enumerate(names):
            out[n] = FamilyResult(n, "secondary", int(np.isfinite(ps[i]).sum()), float(simes_p[i]),
                                  float(family_q[i]), bool(selected[i]),
                                  alpha * r / m_families if selected[i] else 0.0, hier[i])
    return {n: out[n] for n in p_families}
