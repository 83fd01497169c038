"""The reductions equal brute-force references and matched_max removes the length bias of max."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from modalscope.record.tokens import shared_span
from reducing import masked_max_mean, masked_order_stats, span_reductions

GARBAGE = 1e4  # unmasked positions hold this; any leak into a statistic is obvious


def _batch(lengths, tokens, neurons, seed=0, dtype=torch.float32):
    """Rows with the given numbers of masked tokens at scattered positions; garbage elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    acts = torch.full((len(lengths), tokens, neurons), GARBAGE, dtype=torch.float64)
    acts[::2] = -GARBAGE  # both signs of garbage
    mask = torch.zeros(len(lengths), tokens, dtype=torch.bool)
    for b, t in enumerate(lengths):
        where = torch.randperm(tokens, generator=gen)[:t]
        mask[b, where] = True
        acts[b, where] = torch.randn(t, neurons, generator=gen, dtype=torch.float64)
    return acts.to(dtype), mask


def _masked(acts, mask, b):
    return acts[b][mask[b]].double()  # [T_b, neurons]


def test_matched_max_equals_average_over_all_subsets():
    lengths = [t for t in range(1, 8) for _ in range(t)]
    ks = [k for t in range(1, 8) for k in range(1, t + 1)]
    acts, mask = _batch(lengths, tokens=10, neurons=3)
    acts[0, :, 0] = acts[0, :, 0].round()  # ties must not matter
    out = masked_order_stats(acts, mask, torch.tensor(ks))
    assert out["matched_max"].dtype == torch.float32
    assert out["matched_max"].shape == (len(lengths), 3)
    for b, (t, k) in enumerate(zip(lengths, ks)):
        vals = _masked(acts, mask, b)
        subsets = list(itertools.combinations(range(t), k))
        brute = torch.stack([vals[list(s)].amax(dim=0) for s in subsets]).mean(dim=0)
        torch.testing.assert_close(out["matched_max"][b].double(), brute, rtol=1e-5, atol=1e-5)


def test_matched_max_equals_monte_carlo_for_long_rows():
    gen = torch.Generator().manual_seed(1)
    t, k, draws = 576, 12, 20_000
    vals = torch.randn(t, 2, generator=gen)
    acts = torch.cat([vals, torch.full((7, 2), GARBAGE)]).unsqueeze(0)
    mask = torch.arange(t + 7).unsqueeze(0) < t
    exact = masked_order_stats(acts, mask, torch.tensor([k]))["matched_max"][0]
    subsets = torch.rand(draws, t, generator=gen).argsort(dim=1)[:, :k]  # uniform k-subsets
    maxes = vals[subsets].amax(dim=1)  # [draws, 2]
    stderr = maxes.std(dim=0) / draws**0.5
    assert torch.all((exact - maxes.mean(dim=0)).abs() < 4 * stderr)
    assert torch.all(exact > 1.0) and torch.all(exact < 2.5)  # near E[max of 12 N(0,1)] = 1.63


def test_k_equal_t_is_max_and_k_one_is_mean():
    lengths = [1, 4, 9, 30]
    acts, mask = _batch(lengths, tokens=40, neurons=5, seed=2)
    maxes, means = masked_max_mean(acts, mask)
    top = masked_order_stats(acts, mask, torch.tensor(lengths))["matched_max"]
    one = masked_order_stats(acts, mask, torch.ones(4, dtype=torch.int64))["matched_max"]
    torch.testing.assert_close(top, maxes, rtol=0, atol=1e-6)
    torch.testing.assert_close(one, means, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("q", [0.001, 0.1, 0.5, 0.9, 0.95, 0.999])  # 0 and 1 (min, max) are refused
def test_frac_active_and_quantile_match_per_row_references(q):
    lengths = [1, 2, 5, 12, 33]
    acts, mask = _batch(lengths, tokens=40, neurons=6, seed=3)
    acts[1, mask[1], 0] = 0.0  # zeros are not active
    out = masked_order_stats(acts, mask, torch.ones(5, dtype=torch.int64), quantile=q)
    for b in range(len(lengths)):
        vals = acts[b][mask[b]]
        torch.testing.assert_close(out["frac_active"][b], (vals > 0).float().mean(dim=0))
        torch.testing.assert_close(out["quantile"][b], torch.quantile(vals, q, dim=0))
        ref = np.quantile(vals.numpy().astype(np.float64), q, axis=0)
        np.testing.assert_allclose(out["quantile"][b].numpy(), ref, rtol=1e-5, atol=1e-6)
    assert out["frac_active"][1, 0] == 0.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_gives_float32_close_to_float32_input(dtype):
    lengths = [3, 17, 50]
    acts, mask = _batch(lengths, tokens=64, neurons=8, seed=4, dtype=dtype)
    k = torch.tensor([2, 3, 3])
    low = masked_order_stats(acts, mask, k, quantile=0.75)
    ref = masked_order_stats(acts.float(), mask, k, quantile=0.75)
    for name, value in low.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, ref[name], rtol=1e-5, atol=1e-5)
    # And close to the full-precision values the half-precision input was rounded from.
    exact, _ = _batch(lengths, tokens=64, neurons=8, seed=4, dtype=torch.float32)
    full = masked_order_stats(exact, mask, k, quantile=0.75)
    torch.testing.assert_close(low["matched_max"], full["matched_max"], rtol=2e-2, atol=2e-2)


def test_empty_row_gives_nan_and_leaves_other_rows_alone():
    acts, mask = _batch([0, 5], tokens=8, neurons=4, seed=5)
    out = masked_order_stats(acts, mask, torch.tensor([1, 5]))
    alone = masked_order_stats(acts[1:], mask[1:], torch.tensor([5]))
    for name, value in out.items():
        assert torch.isnan(value[0]).all(), name
        torch.testing.assert_close(value[1:], alone[name])
    torch.testing.assert_close(out["matched_max"][1], _masked(acts, mask, 1).amax(0).float())


def test_out_of_range_k_gives_nan_matched_max():
    acts, mask = _batch([4, 4, 4], tokens=6, neurons=2, seed=6)
    out = masked_order_stats(acts, mask, torch.tensor([0, 5, 2]))
    assert torch.isnan(out["matched_max"][:2]).all()
    assert torch.isfinite(out["matched_max"][2]).all()
    assert torch.isfinite(out["quantile"]).all() and torch.isfinite(out["frac_active"]).all()


def test_matched_max_removes_length_bias_that_raw_max_has():
    gen = torch.Generator().manual_seed(7)
    rows, neurons, k = 2000, 4, 12
    short = torch.randn(rows, 12, neurons, generator=gen)
    long = torch.randn(rows, 576, neurons, generator=gen)
    ks = torch.full((rows,), k)
    m_short = masked_order_stats(short, torch.ones(rows, 12, dtype=torch.bool), ks)["matched_max"]
    m_long = masked_order_stats(long, torch.ones(rows, 576, dtype=torch.bool), ks)["matched_max"]
    diff = (m_short - m_long).flatten()
    stderr = diff.std() / diff.numel() ** 0.5
    assert abs(diff.mean()) < 4 * stderr
    raw = (short.amax(dim=1) - long.amax(dim=1)).flatten()
    assert -1.55 < raw.mean() < -1.35  # E[max of 12] - E[max of 576] = 1.63 - 3.08
    assert raw.mean() < -20 * raw.std() / raw.numel() ** 0.5


def test_every_registered_reduction_keeps_the_contract():
    """Whatever module is added to record/reductions: float32 [batch, neurons], NaN for a row
    without content, the same on the span path as on the masked one, and listed by the config."""
    from modalscope.config import ALL_STATS as offered
    from modalscope.record.reductions import ALL_STATS, ReductionSpec, implementation, reduce_tokens

    assert offered == ALL_STATS and ALL_STATS[:5] == ("max", "mean", "matched_max", "frac_active", "quantile")
    acts, mask = _batch([3, 0, 5], tokens=8, neurons=4)
    mask_span = torch.zeros(3, 8, dtype=torch.bool)
    mask_span[:, 2:7] = True
    k = torch.tensor([2, 1, 3])
    for name in ALL_STATS:
        module = implementation(name)
        assert isinstance(module.NEEDS_K, bool) and module.__doc__, name
        out = reduce_tokens(acts, mask, ReductionSpec((name,)), k)[name]
        assert out.dtype == torch.float32 and out.shape == (3, 4), name
        assert out[1].isnan().all() and out[[0, 2]].isfinite().all(), name
        spans = span_reductions(acts, 2, 7, (name,), k)[name]
        masked = reduce_tokens(acts, mask_span, ReductionSpec((name,)), k)[name]
        torch.testing.assert_close(spans, masked, rtol=0, atol=0, msg=name)


def test_shared_span_only_for_one_common_run_of_tokens():
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[:, 2:7] = True
    assert shared_span(mask) == (2, 7)
    ragged = mask.clone()
    ragged[1, 6] = False  # rows of different lengths (text batches)
    assert shared_span(ragged) is None
    holes = mask.clone()
    holes[:, 4] = False  # two runs
    assert shared_span(holes) is None
    assert shared_span(torch.zeros(2, 5, dtype=torch.bool)) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_span_reduction_equals_the_masked_one(dtype):
    x = torch.randn(4, 30, 17, generator=torch.Generator().manual_seed(3)).to(dtype)
    mask = torch.zeros(4, 30, dtype=torch.bool)
    mask[:, 3:27] = True
    out = span_reductions(x, 3, 27)
    maxes, means = out["max"], out["mean"]
    ref_max, ref_mean = masked_max_mean(x, mask)
    torch.testing.assert_close(maxes, ref_max, rtol=0, atol=0)  # max is exact
    torch.testing.assert_close(means, ref_mean)
    torch.testing.assert_close(means, x[:, 3:27].double().mean(1).float(), rtol=1e-5, atol=1e-6)
