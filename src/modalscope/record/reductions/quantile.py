"""The `spec.quantile` quantile of the content tokens (default 0.9), by torch.quantile's linear
rule: rank q * (T - 1), interpolated between its floor and ceiling in the sorted values."""

from __future__ import annotations

import torch

from modalscope.record.reductions import ReductionSpec
from modalscope.record.tokens import TokenView

NEEDS_K = False


def reduce(view: TokenView, spec: ReductionSpec) -> torch.Tensor:
    values, counts = view.sorted, view.counts
    rank = spec.quantile * (counts.double() - 1).clamp(min=0)  # [batch]
    below, above = rank.floor(), rank.ceil()
    frac = (rank - below).to(torch.float32).view(-1, 1)
    index = torch.stack([below, above], dim=1).long()  # [batch, 2]
    pair = values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[2]))
    return torch.lerp(pair[:, 0], pair[:, 1], frac).masked_fill(view.empty, float("nan"))
