"""The length bias of raw max, and its removal by matched_max, through the real pipeline
pieces: on-device reductions, then the per-neuron one-sample t-test."""

from __future__ import annotations

import numpy as np
import torch

from reducing import masked_max_mean, masked_order_stats
from modalscope.stats.moments import RunningMoments
from modalscope.stats.one_sample import one_sample_t

N_INPUTS, NEURONS, TEXT_TOKENS, IMAGE_TOKENS = 2000, 4, 12, 576


def _t_values(stat: str) -> np.ndarray:
    gen = torch.Generator().manual_seed(7)
    moments = RunningMoments()
    for _ in range(N_INPUTS // 250):  # chunks of inputs, as the analysis streams them
        text = torch.randn(250, TEXT_TOKENS, NEURONS, generator=gen)
        image = torch.randn(250, IMAGE_TOKENS, NEURONS, generator=gen)
        k = torch.full((250,), TEXT_TOKENS)
        reduced = []
        for x in (text, image):
            mask = torch.ones(x.shape[:2], dtype=torch.bool)
            if stat == "max":
                reduced.append(masked_max_mean(x, mask)[0])
            else:
                reduced.append(masked_order_stats(x, mask, k)["matched_max"])
        moments.add((reduced[0] - reduced[1]).double().numpy())
    return one_sample_t(moments).t_value


def test_raw_max_delta_is_significantly_negative_under_equal_distributions():
    t = _t_values("max")
    assert (t < -30).all(), t  # E[max of 12] = 1.63 vs E[max of 576] = 3.08


def test_matched_max_delta_is_not_significant_under_equal_distributions():
    t = _t_values("matched_max")
    assert (np.abs(t) < 3).all(), t
