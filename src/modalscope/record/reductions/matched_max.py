"""The length-matched max: the exact expected max over a uniformly random k-subset of the row's
content tokens, sum_{j=k}^{T} x_(j) C(j-1, k-1) / C(T, k).

Reducing every stream of a pair with the same k (the fewest content tokens of any of its
streams, record/extract.py `matched_k`) removes the length bias of the raw max: k = T gives
the max, k = 1 the mean. A row whose k is outside [1, T] gives NaN (no device sync to raise).
"""

from __future__ import annotations

import torch

from modalscope.record.reductions import ReductionSpec
from modalscope.record.tokens import TokenView

NEEDS_K = True


def weights(positions: torch.Tensor, counts: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[batch, tokens] float64 weights of the ascending order statistics in E[max of k of T].

    P(the max of a uniform k-subset is the j-th smallest of T) = C(j-1, k-1) / C(T, k) for
    k <= j <= T, else 0; log-binomials via lgamma keep this finite for T in the thousands.
    """
    j = positions.double().unsqueeze(0) + 1  # [1, tokens], 1-based rank
    t = counts.double().unsqueeze(1)  # [batch, 1]
    kk = k.to(device=counts.device, dtype=torch.float64).unsqueeze(1)  # [batch, 1]
    lg = torch.lgamma
    log_w = (lg(j) - lg(kk) - lg(j - kk + 1)) - (lg(t + 1) - lg(kk + 1) - lg(t - kk + 1))
    inside = (j >= kk) & (j <= t)
    w = torch.where(inside, log_w.exp(), torch.zeros_like(log_w))
    bad = (kk < 1) | (kk > t)
    return w.masked_fill(bad, float("nan"))


def reduce(view: TokenView, spec: ReductionSpec) -> torch.Tensor:
    if view.k is None:
        raise RuntimeError("matched_max needs k, the tokens per pair (record/extract.py matched_k)")
    w = weights(view.positions, view.counts, view.k).to(torch.float32)
    # Elementwise then sum (not a matmul, so TF32 settings cannot degrade it).
    matched = (view.sorted * w.unsqueeze(-1)).sum(dim=1)
    return matched.masked_fill(view.empty, float("nan"))
