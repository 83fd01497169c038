"""The headline names a direction only when the trend is significant and robust, says when the
reductions disagree, and writes a permutation p at its floor as '≤'.

References are brute force (scipy's linregress with each layer deleted) and hand-made layer
profiles: a clean linear fall; the profile measured on a LLaVA whose language model is trained
SmolLM2 (issue 24: R² 0.03, the last layer carrying the slope); a planted far-off layer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from modalscope.figures.style import format_p, permutation_floor, round_up
from modalscope.report.headline import direction, disagreement, headline, trend_clause
from modalscope.stats.layers import leave_one_out_slopes, standout_layers


def _entry(means: np.ndarray, low: float, high: float, p: float = 0.02) -> dict:
    layers = np.arange(means.size)
    fit = sps.linregress(layers, means)
    loo = leave_one_out_slopes(layers, means)
    return {"slope": fit.slope, "r2": fit.rvalue**2, "slope_ci_low": low, "slope_ci_high": high, "slope_p_perm": p,
            "sign_flipping_layers": [k for k, v in loo.items() if np.sign(v) != np.sign(fit.slope)],
            "standout_layers": standout_layers(layers, means),
            "standout_mean_diff": [float(means[k]) for k in standout_layers(layers, means)]}


def test_leave_one_out_slopes_equal_linregress_without_each_layer():
    rng = np.random.default_rng(3)
    means = rng.normal(size=9)
    means[4] = np.nan  # a layer without a finite mean is not a layer to leave out
    got = leave_one_out_slopes(np.arange(9), means)
    keep = [i for i in range(9) if i != 4]
    for left in keep:
        rest = [i for i in keep if i != left]
        assert got[left] == pytest.approx(sps.linregress(rest, means[rest]).slope, rel=1e-12)
    assert set(got) == set(keep)
    assert leave_one_out_slopes(np.arange(3), np.ones(3)) == {}  # 2 layers left: no line to trust


def test_a_planted_far_off_layer_stands_out_and_nothing_else():
    rng = np.random.default_rng(0)
    means = 0.1 * np.arange(30) + rng.normal(scale=0.05, size=30)
    assert standout_layers(np.arange(30), means) == []
    means[29] -= 5.0
    assert standout_layers(np.arange(30), means) == [29]


def test_a_slope_that_one_layer_carries_is_not_a_direction():
    # the trained SmolLM2 LLaVA's profile (issue 24): flat but for a deep last layer
    rng = np.random.default_rng(1)
    means = rng.normal(scale=0.05, size=30) + 0.002 * np.arange(30)
    means[29] = -4.87 * 0.2
    entry = _entry(means, -0.0437, -0.00461)
    assert entry["slope"] < 0 and 29 in entry["sign_flipping_layers"] and entry["r2"] < 0.2
    assert direction(entry) == 0
    clause = trend_clause("raw max", entry, p_floor=1 / 1001)
    assert clause.startswith(f"raw max is not monotone over depth: it changes by {entry['slope']:.3g} per layer")
    assert "leaving out layer 29 turns the sign" in clause and "layer 29 far off the line" in clause
    assert "falls" not in clause and "R²" not in clause


def test_a_clean_trend_is_named_with_its_linearity():
    means = -0.5 * np.arange(8) + np.array([0.01, -0.02, 0.0, 0.03, -0.01, 0.0, 0.02, -0.03])
    entry = _entry(means, -0.6, -0.4, p=1 / 1001)
    assert direction(entry) == -1 and entry["sign_flipping_layers"] == []
    assert trend_clause("raw max", entry, p_floor=1 / 1001) == (
        f"raw max falls by {-entry['slope']:.3g} per layer (bootstrap 95% CI -0.6 to -0.4, sign-flip p ≤ 0.001; "
        f"R² = {entry['r2']:.2g})")


def test_disagreeing_reductions_are_said():
    falls = _entry(-0.5 * np.arange(6) + 0.01 * np.sin(np.arange(6)), -0.6, -0.4)
    rises = _entry(0.3 * np.arange(6) + 0.01 * np.cos(np.arange(6)), 0.2, 0.4)
    flat = _entry(0.01 * np.sin(np.arange(6)), -0.1, 0.1)
    site = {**falls, "contrast": "text - image", "n_perm": 200, "by_stat": {"matched_max": rises, "mean": flat}}
    assert disagreement(site) == "The reductions disagree on the direction: raw max falls, length-matched max rises."
    assert headline("mlp", site).endswith(" The reductions disagree on the direction: raw max falls, "
                                          "length-matched max rises.")
    site["by_stat"]["matched_max"] = flat
    assert disagreement(site) == "" and "disagree" not in headline("mlp", site)
    site["by_stat"]["mean"] = rises
    assert disagreement(site) == "The reductions disagree on the direction: raw max falls, mean rises."


def test_a_permutation_p_at_its_floor_reads_as_a_bound():
    assert permutation_floor(999) == 1 / 1000 and permutation_floor(None) is None
    assert format_p(1 / 1000, 1 / 1000) == "≤ 0.001"
    assert format_p(2 / 1000, 1 / 1000) == "0.002"
    assert format_p(1 / 1000) == "0.001"  # a t-test's p has no floor
    assert format_p(float("nan"), 1 / 1000) == "—"
    # the default 1,000 permutations: the floor 1/1001 = 0.000999 reads as the bound 0.001 (issue 24.4)
    assert format_p(1 / 1001, permutation_floor(1000)) == "≤ 0.001"
    assert format_p(1 / 201, permutation_floor(200)) == "≤ 0.005"
    assert format_p(1 / 101, permutation_floor(100)) == "≤ 0.01"


def test_the_report_writes_floored_permutation_p_as_bounds(small_study):
    from modalscope.report.page import REPORT

    page = (small_study / REPORT).read_text(encoding="utf-8")
    summary = pd.read_json(small_study / "tables/summary.json")
    n_perm = int(summary.loc["n_perm"].iloc[0])
    floor, shown = f"{1 / (n_perm + 1):.3g}", f"{round_up(1 / (n_perm + 1)):.3g}"  # 0.00498 reads ≤ 0.005
    assert f"sign-flip p ≤ {shown}" in page and f"<td>≤ {shown}</td>" in page
    assert f"sign-flip p = {floor}" not in page and f"<td>{floor}</td>" not in page.split('id="provenance"')[0]
    assert f"≤ {floor}" not in page


def test_the_report_leads_with_results_and_ends_with_provenance(small_study):
    from modalscope.report.page import REPORT

    page = (small_study / REPORT).read_text(encoding="utf-8")
    body = page[page.index("<main>"):]
    first_figure = body.index('<div class="figure">')
    assert body.index('id="glance"') < body.index('id="site-') < first_figure < body.index('id="provenance"')
    assert body.index('id="provenance"') < body.index('id="files"')
