"""The share of content tokens with activation > 0: the activation probability that LAPE and
MMNeuron use to find language- or modality-specific neurons."""

from __future__ import annotations

import torch

from modalscope.record.reductions import ReductionSpec
from modalscope.record.tokens import TokenView

NEEDS_K = False


def reduce(view: TokenView, spec: ReductionSpec) -> torch.Tensor:
    n = view.counts.to(torch.float32).unsqueeze(1)
    share = (view.sorted > 0).sum(dim=1, dtype=torch.float32) / n
    return share.masked_fill(view.empty, float("nan"))
