"""Reductions over tokens, done on the model's device inside the hook.

Why: a layer's activations are [batch, tokens, neurons]; for LLaVA-1.5-7B's MLP that is
~600 x 11,008 values per input and layer. Reducing where they are computed means only
[batch, neurons] ever leaves the hook. Max is taken in the model's dtype (exact under the
later cast); sums accumulate in float32 whatever the model dtype.
"""

from __future__ import annotations

import torch

STATS = ("max", "mean")


def masked_max_mean(
    activations: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and mean over the tokens where `mask` is true.

    activations: [batch, tokens, neurons]; mask: [batch, tokens] bool.
    Returns two float32 tensors [batch, neurons]. A row with no masked token gives NaN,
    so an empty input is visible downstream instead of silently reading as 0 or -inf.
    """
    keep = mask.unsqueeze(-1)  # [batch, tokens, 1]
    maxes = activations.masked_fill(~keep, float("-inf")).amax(dim=1).float()
    sums = activations.masked_fill(~keep, 0).sum(dim=1, dtype=torch.float32)
    counts = mask.sum(dim=1, keepdim=True)  # [batch, 1]
    means = sums / counts
    empty = counts == 0
    maxes = maxes.masked_fill(empty, float("nan"))
    return maxes, means
