"""The mean activation over the content tokens, summed in float32 whatever the model dtype."""

from __future__ import annotations

import torch

from modalscope.record.reductions import ReductionSpec
from modalscope.record.tokens import TokenView

NEEDS_K = False


def reduce(view: TokenView, spec: ReductionSpec) -> torch.Tensor:
    if view.span:
        return view.values.sum(dim=1, dtype=torch.float32) / view.n_tokens
    sums = view.values.masked_fill(~view.keep, 0).sum(dim=1, dtype=torch.float32)
    return sums / view.counts.unsqueeze(1)  # 0 / 0 = NaN for a row without content
