"""The report's reduction: the largest activation over the content tokens.

Taken in the model's dtype (exact under the later cast to float32). Grows with the number of
tokens (see matched_max), which is why it is never the only one recorded.
"""

from __future__ import annotations

import torch

from modalscope.record.reductions import ReductionSpec
from modalscope.record.tokens import TokenView

NEEDS_K = False


def reduce(view: TokenView, spec: ReductionSpec) -> torch.Tensor:
    if view.span:
        return view.values.amax(dim=1).float()
    maxes = view.values.masked_fill(~view.keep, float("-inf")).amax(dim=1).float()
    return maxes.masked_fill(view.empty, float("nan"))
