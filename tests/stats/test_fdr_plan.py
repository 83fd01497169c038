"""One primary family of tests, the rest by Benjamini-Bogomolov (issue 24, point 5).

The study's FDR families (site x reduction x contrast x test) used to be corrected one by one,
with nothing across them. Now one primary family is BH at 0.05 on its own and every other
family goes through the hierarchical procedure of Benjamini & Bogomolov (2014): Simes p per
family, BH over the families selects R of M, BH within a selected family at 0.05·R/M.
`q_hier < a` must be exactly that procedure's call at level a; the simulation shows the FDR
over all families held at 0.05 where per-family BH's is far above it.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from modalscope.stats.fdr import benjamini_hochberg, hierarchical_q, plan, simes

ALPHA = 0.05


# An independent, literal implementation (loops, the papers' inequalities) -------------------
def brute_bh(p: np.ndarray, a: float) -> np.ndarray:
    """BH's rejections at level a: the largest k with p_(k) ≤ k·a/m, reject every p ≤ p_(k)."""
    p = np.asarray(p, dtype=float)
    finite = [x for x in p if not np.isnan(x)]
    m = len(finite)
    ranked = sorted(finite)
    k_star = 0
    for k in range(1, m + 1):
        if ranked[k - 1] <= k * a / m:
            k_star = k
    out = np.zeros(len(p), dtype=bool)
    if k_star:
        cut = ranked[k_star - 1]
        out = np.array([not np.isnan(x) and x <= cut for x in p])
    return out


def brute_simes(p: np.ndarray) -> float:
    ranked = sorted(x for x in p if not np.isnan(x))
    m = len(ranked)
    return min(min(ranked[k - 1] * m / k for k in range(1, m + 1)), 1.0) if m else float("nan")


def brute_bb(families: list[np.ndarray], a: float) -> list[np.ndarray]:
    """Benjamini-Bogomolov at level a: Simes per family, BH over the M families, BH at a·R/M
    inside each of the R selected ones, nothing elsewhere."""
    s = np.array([brute_simes(p) for p in families])
    m_families = int(np.isfinite(s).sum())
    chosen = brute_bh(s, a)
    r = int(chosen.sum())
    return [brute_bh(p, a * r / m_families) if chosen[i] else np.zeros(len(p), dtype=bool)
            for i, p in enumerate(families)]


def _families(rng: np.random.Generator, n_null: int, n_signal: int, m: int = 200, signals: int = 20,
              shift: float = 3.5) -> list[np.ndarray]:
    out = [rng.uniform(size=m) for _ in range(n_null)]
    for _ in range(n_signal):
        p = rng.uniform(size=m)
        p[:signals] = sps.norm.sf(rng.normal(shift, 1.0, size=signals))  # one-sided z-test p
        out.append(p)
    return out


def _bb_q(families: list[np.ndarray]) -> list[np.ndarray]:
    s = np.array([simes(p) for p in families])
    return hierarchical_q(benjamini_hochberg(s), [benjamini_hochberg(p) for p in families])


# Exactness -------------------------------------------------------------------------------------
def test_simes_is_the_literal_formula():
    rng = np.random.default_rng(0)
    for m in (1, 2, 7, 150):
        p = rng.uniform(size=m) ** 3
        assert simes(p) == pytest.approx(brute_simes(p), rel=1e-12)


def test_q_hier_is_exactly_the_benjamini_bogomolov_call_at_every_level():
    rng = np.random.default_rng(1)
    for rep in range(6):
        families = _families(rng, n_null=8 + rep, n_signal=1 + rep % 3, m=int(rng.integers(5, 120)), signals=4)
        families.append(rng.uniform(size=40) ** 4)  # a family with many weak signals
        families[0][:3] = np.nan  # NaN p: no hypothesis
        q = _bb_q(families)
        for a in [ALPHA, *rng.uniform(0.002, 0.4, size=25)]:
            want = brute_bb(families, a)
            for qi, wi in zip(q, want):
                np.testing.assert_array_equal(qi < a, wi)
                np.testing.assert_array_equal(qi <= a, wi)
        assert all(np.isnan(q[0][:3])) and not np.isnan(q[0][3:]).any()


def test_q_hier_at_005_is_within_q_scaled_by_m_over_r_in_selected_families():
    """The issue's reading: in a selected family, called iff the within-family BH q·M/R < 0.05;
    in a family not selected, nothing is called (q_hier ≥ 0.05)."""
    rng = np.random.default_rng(2)
    families = _families(rng, n_null=20, n_signal=3)
    s = np.array([brute_simes(p) for p in families])
    selected = brute_bh(s, ALPHA)
    r, m_families = selected.sum(), len(families)
    assert 1 <= r < m_families
    for p, qi, chosen in zip(families, _bb_q(families), selected):
        if chosen:
            np.testing.assert_array_equal(qi < ALPHA, benjamini_hochberg(p) * m_families / r < ALPHA)
        else:
            assert (qi >= ALPHA).all()


def test_plan_primary_is_its_own_bh_and_the_rest_bb_over_the_others():
    rng = np.random.default_rng(3)
    fams = _families(rng, n_null=10, n_signal=2)
    named = {f"f{i}": p for i, p in enumerate(fams)}
    got = plan(named, "f10")
    np.testing.assert_allclose(got["f10"].q_hier, benjamini_hochberg(fams[10]))
    assert got["f10"].role == "primary" and got["f10"].level == ALPHA
    rest = [p for i, p in enumerate(fams) if i != 10]
    want = brute_bb(rest, ALPHA)
    others = [got[n] for n in named if n != "f10"]
    r = sum(f.selected for f in others)
    for fam, w in zip(others, want):
        assert fam.role == "secondary"
        np.testing.assert_array_equal(fam.q_hier < ALPHA, w)
        assert fam.level == pytest.approx(ALPHA * r / len(rest) if fam.selected else 0.0)
    with pytest.raises(ValueError, match="primary family"):
        plan(named, "nope")


# The simulation: FDR over all families ---------------------------------------------------------
def _bh_batched(p: np.ndarray) -> np.ndarray:
    """BH q along the last axis of [..., m] (no NaN), for the simulation's thousands of families."""
    m = p.shape[-1]
    order = np.argsort(p, axis=-1)
    ranked = np.take_along_axis(p, order, -1) * m / np.arange(1, m + 1)
    ranked = np.minimum(np.minimum.accumulate(ranked[..., ::-1], axis=-1)[..., ::-1], 1.0)
    q = np.empty_like(p)
    np.put_along_axis(q, order, ranked, -1)
    return q


def _simulate(rng, reps: int, n_null: int, m: int = 200, signals: int = 20, shift: float = 3.5):
    """[reps, families, m] p-values: n_null null families, then one with `signals` planted."""
    p = rng.uniform(size=(reps, n_null + 1, m))
    p[:, -1, :signals] = sps.norm.sf(rng.normal(shift, 1.0, size=(reps, signals)))
    truth = np.zeros(p.shape[1:], dtype=bool)
    truth[-1, :signals] = True
    return p, truth


def _bb_calls(p: np.ndarray) -> np.ndarray:
    """Benjamini-Bogomolov's calls at 0.05 over the families of each repetition, [reps, M, m]."""
    within = _bh_batched(p)
    family_q = _bh_batched(within.min(axis=-1))  # Simes p = the family's smallest BH q
    chosen = family_q < ALPHA
    r = chosen.sum(axis=1, keepdims=True)
    return chosen[..., None] & (within * p.shape[1] / np.maximum(r, 1)[..., None] < ALPHA)


def _fdrs(calls: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per repetition: the false share of all calls (FDP over all families) and the share of
    families with a call that hold no true signal (FDP over families)."""
    v = (calls & ~truth).sum(axis=(1, 2))
    r = calls.sum(axis=(1, 2))
    any_call = calls.any(axis=2)
    false_families = (any_call & ~truth.any(axis=1)).sum(axis=1)
    return v / np.maximum(r, 1), false_families / np.maximum(any_call.sum(axis=1), 1)


def test_fdr_over_all_families_is_held_where_per_family_bh_is_not():
    """29 null families + 1 signal family (200 tests each, 20 planted, independent), 2,000
    repetitions. Over all families together: the false share of all calls (pooled FDR) and the
    share of families with a call that hold no true signal (FDR over families). Per-family BH
    lets ~5% of the null families call something every time; Benjamini-Bogomolov holds both at
    0.05 (3 standard errors of simulation). The library's q_hier makes the same calls."""
    rng = np.random.default_rng(20140624)
    reps = 2000
    p, truth = _simulate(rng, reps, n_null=29)
    calls = {"bb": _bb_calls(p), "bh": _bh_batched(p) < ALPHA}
    for i in range(40):  # the simulated procedure is the library's
        np.testing.assert_array_equal(np.array(_bb_q(list(p[i]))) < ALPHA, calls["bb"][i])
    result = {how: _fdrs(c, truth) for how, c in calls.items()}
    mean = {how: [float(x.mean()) for x in r] for how, r in result.items()}
    se = {how: [float(x.std() / np.sqrt(reps)) for x in r] for how, r in result.items()}
    power = {how: float(c[:, -1, :20].mean()) for how, c in calls.items()}
    print({"mean [fdr, family fdr]": mean, "se": se, "power": power})
    for k in (0, 1):
        assert mean["bb"][k] <= ALPHA + 3 * se["bb"][k], (k, mean, se)
    assert mean["bh"][1] > 0.3  # ~0.05·29 null families with a call per study
    assert mean["bh"][0] > 1.5 * ALPHA and mean["bh"][0] > 2 * mean["bb"][0]
    assert power["bb"] > 0.3  # the signal family is still found


def test_primary_plus_bb_holds_the_fdr_over_all_calls():
    """The study's plan with the signal family as primary and 29 null secondary families: the
    false share of all calls stays at 0.05 (per-family BH: well above it)."""
    rng = np.random.default_rng(7)
    reps = 2000
    p, truth = _simulate(rng, reps, n_null=29)
    primary = _bh_batched(p[:, -1]) < ALPHA
    calls = np.concatenate([_bb_calls(p[:, :-1]), primary[:, None]], axis=1)
    for i in range(20):  # the simulated plan is the library's
        got = plan({f"f{j}": x for j, x in enumerate(p[i])}, "f29")
        np.testing.assert_array_equal(np.array([got[f"f{j}"].q_hier for j in range(30)]) < ALPHA, calls[i])
    fdp, _ = _fdrs(calls, truth)
    fdp_bh, _ = _fdrs(_bh_batched(p) < ALPHA, truth)
    assert fdp.mean() <= ALPHA + 3 * fdp.std() / np.sqrt(reps), fdp.mean()
    assert fdp_bh.mean() > 1.5 * fdp.mean()


# The study -------------------------------------------------------------------------------------
def test_small_study_table3_carries_the_plan(small_study):
    neurons = pd.read_parquet(small_study / "tables" / "table3_neurons.parquet")
    summary = json.loads((small_study / "tables" / "summary.json").read_text())
    cols = list(neurons.columns)
    stats = [c[len("q_value_"):] for c in cols if c.startswith("q_value_") and not c.endswith("_vs_base")]
    stats = ["max", *stats]
    families, where = {}, {}
    for site in sorted(neurons["site"].unique()):
        rows = neurons[neurons["site"] == site]
        for stat in stats:
            suffix = "" if stat == "max" else f"_{stat}"
            for p_col, q_col, h_col, test in (("p_value", "q_value", "q_hier", "delta"),
                                              ("xmodal_p", "xmodal_q", "xmodal_q_hier", "xmodal")):
                p_col, q_col, h_col = p_col + suffix, q_col + suffix, h_col + suffix
                if q_col not in cols:
                    continue
                assert cols.index(h_col) > cols.index(q_col) and cols[-1].startswith(("q_hier", "xmodal_q_hier"))  # appended
                name = f"{site}:{stat}:text-image:{test}"
                families[name] = rows[p_col].to_numpy()
                where[name] = (rows, q_col, h_col)
                # q_value stays the within-family BH over the site's neurons
                np.testing.assert_allclose(rows[q_col], benjamini_hochberg(rows[p_col].to_numpy()), rtol=1e-12)
    primary = "mlp:matched_max:text-image:delta"
    assert primary in families and len(families) >= 12
    rows, q_col, h_col = where[primary]
    np.testing.assert_allclose(rows[h_col], rows[q_col], rtol=1e-12)  # the primary family: its own BH
    names = [n for n in families if n != primary]
    want = brute_bb([families[n] for n in names], ALPHA)
    chosen = [n for n in names if brute_bh(np.array([brute_simes(families[m]) for m in names]), ALPHA)[names.index(n)]]
    for n, w in zip(names, want):
        rows, q_col, h_col = where[n]
        np.testing.assert_array_equal(rows[h_col].to_numpy() < ALPHA, w)
        assert ((rows[h_col] >= rows[q_col] * (1 - 1e-12)) | rows[q_col].isna()).all()  # never more lenient than BH
    from modalscope.tables import read_provenance

    assert read_provenance(small_study / "tables" / "table3_neurons.parquet")["fdr_primary"] == primary
    for site, entry in summary.items():
        assert entry["fdr_primary"] == primary
        assert sorted(entry["fdr_families_selected"]) == sorted(chosen)
        assert entry["fdr_families_secondary"] == len(names)
        roles = {f["family"]: f["role"] for f in entry["fdr_families"]}
        assert all(n.startswith(site + ":") for n in roles)
        assert roles.get(primary, "primary") == "primary"


def test_primary_setting_is_checked_and_resolved():
    from modalscope.analysis import primary_family
    from modalscope.config import StudyConfig

    sites, stats = ("residual", "mlp"), ("max", "mean", "matched_max")
    assert primary_family(None, sites, stats, ("text", "image")) == "mlp:matched_max:text-image:delta"
    assert primary_family(None, ("residual",), ("max", "mean"), ("text", "image")) == "residual:max:text-image:delta"
    assert primary_family("residual:mean", sites, stats, ("text", "image")) == "residual:mean:text-image:delta"
    assert primary_family("mlp:max:text-text_base:xmodal", sites, stats, ("text", "image")) == \
        "mlp:max:text-text_base:xmodal"
    for bad in ("mlp", "mlp:quantile", "attn:max"):
        with pytest.raises(ValueError, match="--primary"):
            primary_family(bad, sites, stats, ("text", "image"))
        with pytest.raises(ValueError, match="--primary"):
            StudyConfig(out_dir="x", primary=bad).validate()
    StudyConfig(out_dir="x", primary="residual:mean").validate()


def test_a_named_primary_moves_the_plan(small_study):
    from modalscope.analysis import run_analysis
    from modalscope.stats.protocol import AnalysisSettings
    from modalscope.store import STORE, ActivationStore

    store = ActivationStore.read(small_study / STORE)
    result = run_analysis(store, AnalysisSettings(n_perm=200, n_boot=200, primary="residual:mean",
                                                  seed=int(store.attrs.get("seed", 0))), vs_base=False)
    table = result.fdr_families.set_index("family")
    assert table.loc["residual:mean:text-image:delta", "role"] == "primary"
    assert table.loc["mlp:matched_max:text-image:delta", "role"] == "secondary"
    assert (table["role"] == "primary").sum() == 1
    rows = result.neurons[result.neurons["site"] == "residual"]
    np.testing.assert_array_equal(rows["q_hier_mean"], rows["q_value_mean"])
    assert result.summary["mlp"]["fdr_primary"] == "residual:mean:text-image:delta"
    secondary = table[table["role"] == "secondary"]
    assert result.summary["mlp"]["fdr_families_selected"] == list(secondary.index[secondary["selected"]])
    assert (secondary["family_q"] < ALPHA).eq(secondary["selected"]).all()
