"""Cross-modal calls that FDR can make at 7B scale (issue 24, point 2).

`xmodal_p` is the analytic p of the (partial) rank correlation (stats/neuron/xmodal.py), not
a permutation p with its floor 1 / (P + 1): BH over 352,256 neurons (a 7B mlp site) calls
planted neurons and nothing else, and the null p's are uniform. `xmodal_r` is taken within
pairs of equal k, so responses that depend on k alone are not called cross-modal; the
permutation p stays as an opt-in check (`xmodal_p_perm`).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from modalscope.stats.controls import SignFlips
from modalscope.stats.fdr import fdr
from modalscope.stats.neuron.xmodal import CrossModal, cross_modal_contrast, within_pairings
from modalscope.stats.protocol import AnalysisSettings, Context, Slab

M_7B = 32 * 11_008  # neurons of LLaVA-1.5-7B's mlp site: one BH family


def _columns(x, y, pair_k=None, contrast=("text", "image"), **settings) -> dict[str, np.ndarray]:
    settings = AnalysisSettings(contrast=contrast, n_boot=settings.pop("n_boot", 0), **settings)
    acc = CrossModal(Context("mlp", 0, "matched_max", x.shape[1], len(x), settings, SignFlips(len(x), 0), pair_k), {})
    for start in range(0, len(x), 64):
        stop = min(start + 64, len(x))
        acc.add(Slab(start, stop, None, {contrast[0]: x[start:stop], contrast[1]: y[start:stop]}))
    return acc.columns()


def _uniform_tail_ok(p: np.ndarray) -> None:
    """KS against uniform, and no excess below 1e-2, 1e-3, 1e-4 (where BH reads p) beyond a
    99.9% Poisson bound."""
    assert sps.kstest(p, "uniform").pvalue > 0.01
    for a in (1e-2, 1e-3, 1e-4):
        assert (p < a).sum() <= sps.poisson.ppf(0.999, a * len(p)), a


def test_analytic_p_is_scipys_spearman_p_with_ties():
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=(50, 8)), 1).astype(np.float32)
    y = (0.4 * x + rng.normal(size=(50, 8))).astype(np.float16).astype(np.float32)
    x[:, 7] = np.maximum(x[:, 7], 0)  # half the pairs tied at 0
    got = _columns(x, y)
    for j in range(8):
        ref = sps.spearmanr(x[:, j], y[:, j])
        assert got["xmodal_r"][j] == pytest.approx(ref.statistic, rel=1e-12)
        assert got["xmodal_p"][j] == pytest.approx(ref.pvalue, rel=1e-9)
    assert "xmodal_p_perm" not in got  # opt-in


def test_within_k_r_and_p_equal_a_loop_over_the_groups_of_k():
    """The stratified rank correlation given k by an independent route: scipy's ranks within
    each k, centred, pooled; its exact permutation variance; t with n - g - 1 df."""
    rng = np.random.default_rng(4)
    n, width = 90, 5
    k = rng.integers(5, 12, size=n)
    x = np.round(rng.normal(size=(n, width)) + 0.3 * k[:, None], 1).astype(np.float32)  # ties
    y = (0.5 * x + rng.normal(size=(n, width)) + np.sqrt(k)[:, None]).astype(np.float32)
    got = _columns(x, y, pair_k=k)
    groups = [np.flatnonzero(k == v) for v in np.unique(k)]
    df = n - len(groups) - 1
    for j in range(width):
        ex, ey = np.zeros(n), np.zeros(n)
        for members in groups:
            for e, v in ((ex, x[members, j]), (ey, y[members, j])):
                ranks = sps.rankdata(v)
                e[members] = ranks - ranks.mean()
        sx, sy = ex @ ex, ey @ ey
        r = ex @ ey / np.sqrt(sx * sy)
        variance = sum((ex[g] @ ex[g]) * (ey[g] @ ey[g]) / (len(g) - 1) for g in groups) / (sx * sy)
        scaled = r / np.sqrt(variance * (n - len(groups)))
        t = scaled * np.sqrt(df / (1 - scaled**2))
        assert got["xmodal_r"][j] == pytest.approx(r, rel=1e-10)
        assert got["xmodal_p"][j] == pytest.approx(2 * sps.t.sf(abs(t), df), rel=1e-8)
        dummies = (k[:, None] == np.unique(k)[None, :]).astype(float)
        px, py = (v - dummies @ np.linalg.lstsq(dummies, v, rcond=None)[0] for v in (x[:, j].astype(float), y[:, j].astype(float)))
        assert got["xmodal_pearson"][j] == pytest.approx(np.corrcoef(px, py)[0, 1], rel=1e-6)


def test_at_7b_scale_bh_calls_the_planted_neurons_and_the_null_p_are_uniform():
    """352,256 neurons x 240 pairs (float16, as a store holds them), the pairs' k drawn from
    8..19: ten planted neurons with population rank correlation about 0.5 (asymptotic p ~1e-15;
    the issue's were r = 0.66-0.72) are all called by BH at 0.05 over the whole site, at most one
    null neuron is, and the 352,246 null p's are uniform. With a permutation p of P = 1,000
    (floor 1/1,001) the same ten could not be called."""
    n, rng = 240, np.random.default_rng(24)
    # The ranks are all r sees: random bit patterns of positive normal float16 values (29,696
    # ordered values, so a few ties, as a float16 store has) are independent draws and cheap.
    x, y = (rng.integers(0x0400, 0x7800, size=(n, M_7B), dtype=np.uint16).view(np.float16) for _ in range(2))
    planted = np.linspace(5, M_7B - 5, 10).astype(np.int64)
    z = rng.normal(size=(n, planted.size))
    x[:, planted] = z.astype(np.float16)
    y[:, planted] = (0.52 * z + 0.85 * rng.normal(size=z.shape)).astype(np.float16)
    k = rng.integers(8, 20, size=n)
    got = _columns(x, y, pair_k=k)
    q = fdr(got["xmodal_p"])
    null = np.ones(M_7B, bool)
    null[planted] = False
    assert (q[planted] < 0.05).all(), (got["xmodal_r"][planted], q[planted])
    assert (q[null] < 0.05).sum() <= 1
    _uniform_tail_ok(got["xmodal_p"][null])
    floor = np.where(got["xmodal_p"] < 1 / 1001, 1 / 1001, 1.0)  # the best a P = 1,000 permutation p can do
    assert not (fdr(floor) < 0.05).any()


def test_responses_that_depend_only_on_k_give_no_calls():
    """Text and image responses that each follow the pair's k (a curved and a straight function,
    as a max over k tokens and a matched max do) plus independent noise: the plain rank
    correlation calls most neurons cross-modal, r within k calls none and its p are uniform."""
    n, width, rng = 240, 20_000, np.random.default_rng(7)
    k = rng.integers(6, 25, size=n)
    x = np.sqrt(2 * np.log(k))[:, None] + 0.3 * rng.normal(size=(n, width))
    y = 0.05 * k[:, None] + 0.3 * rng.normal(size=(n, width))
    x, y = x.astype(np.float16), y.astype(np.float16)
    plain = _columns(x, y)
    assert (fdr(plain["xmodal_p"]) < 0.05).mean() > 0.5  # the confound the issue measured
    got = _columns(x, y, pair_k=k)
    assert not (fdr(got["xmodal_p"]) < 0.05).any()
    _uniform_tail_ok(got["xmodal_p"])


def test_opt_in_permutation_p_keeps_k_and_agrees_with_the_analytic_p():
    rng = np.random.default_rng(9)
    n, width, n_perm = 120, 6, 4000
    k = rng.integers(3, 7, size=n)
    x = rng.normal(size=(n, width)) + k[:, None]
    y = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.0]) * x + rng.normal(size=(n, width)) + k[:, None]
    got = _columns(x.astype(np.float32), y.astype(np.float32), pair_k=k, n_perm=n_perm, xmodal_perm=True, seed=2)
    perms = within_pairings(k, 50, seed=2)
    assert (k[perms] == k[None, :]).all()  # every re-pairing keeps k
    assert len({tuple(p) for p in perms}) == 50
    assert (np.abs(got["xmodal_p_perm"] - got["xmodal_p"]) <= 0.02 + 0.1 * got["xmodal_p"]).all(), got
    assert got["xmodal_p"][4] < 1e-3 and got["xmodal_p_perm"][4] <= 5 / (n_perm + 1)


@pytest.mark.parametrize("contrast, meaningful", [(("text", "image"), True), (("text", "text_base"), False),
                                                  (("image_text_caption", "text"), False),
                                                  (("image", "image_text_image"), False),
                                                  (("image_text", "text"), True)])
def test_a_contrast_within_one_modality_has_no_cross_modal_columns(contrast, meaningful):
    """Δ_base = text - text_base: on a model whose language model is its base, text and
    text_base are identical, r = 1 for every neuron, and every neuron was "cross-modal"."""
    x = np.random.default_rng(1).normal(size=(30, 4)).astype(np.float32)
    got = _columns(x, x.copy(), contrast=contrast, n_boot=10)
    assert cross_modal_contrast(contrast) == meaningful
    assert (set(got) >= {"xmodal_r", "xmodal_p"}) if meaningful else got == {}


def test_delta_base_has_no_cross_modal_columns_and_a_zero_delta_reads_share_0_p_1(tmp_path):
    """A store whose text_base equals text (a language model not changed by the VLM's
    training, as on the trained model the issue measured): Δ_base is 0 on every pair, so the
    sign test gives share_positive_vs_base = 0 and p_sign_vs_base = 1, and Table 3, the layer
    table and the summary carry no cross-modal numbers for it; the main contrast keeps its
    own, within k (the pairs' token counts differ)."""
    from modalscope.analysis import run_analysis
    from modalscope.record.reductions import ALWAYS as STATS
    from modalscope.store import ActivationStore
    from modalscope.streams import BASE_STREAM

    n, width, n_layers, conditions = 30, 4, 2, ("text", "image", BASE_STREAM)
    rng = np.random.default_rng(2)
    values = {(c, s): rng.normal(size=(n, n_layers, width)).astype(np.float32) for c in conditions for s in STATS}
    for stat in STATS:
        values[BASE_STREAM, stat] = values["text", stat].copy()
    tokens = {"text": rng.integers(5, 9, size=n), "image": np.full(n, 576)}
    tokens[BASE_STREAM] = tokens["text"]
    store = ActivationStore.create(tmp_path / "activations.zarr", n_layers, {"mlp": width}, 10,
                                   {"seed": 0, "model": "m"}, conditions=conditions)
    for start in range(0, n, 10):
        store.append({c: {"mlp": {s: values[c, s][start:start + 10] for s in STATS}} for c in conditions},
                     {c: tokens[c][start:start + 10].tolist() for c in conditions})
    result = run_analysis(ActivationStore.read(tmp_path / "activations.zarr"), AnalysisSettings(n_perm=50, n_boot=50))
    t3 = result.neurons
    assert "xmodal_r" in t3 and "xmodal_p" in t3 and not [c for c in t3 if c.startswith("xmodal") and "vs_base" in c]
    assert (t3["share_positive_vs_base"] == 0).all() and (t3["p_sign_vs_base"] == 1).all()
    assert t3["t_value_vs_base"].isna().all()
    assert not [c for c in result.vs_base.layers if c.startswith("xmodal")]
    assert result.summary["mlp"]["vs_base"]["xmodal"] == {}
