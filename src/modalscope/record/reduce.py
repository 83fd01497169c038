"""Reductions over tokens, done on the model's device inside the hook.

Why: a layer's activations are [batch, tokens, neurons]; for LLaVA-1.5-7B's MLP that is
~600 x 11,008 values per input and layer. Reducing where they are computed means only
[batch, neurons] ever leaves the hook. Max is taken in the model's dtype (exact under the
later cast); sums accumulate in float32 whatever the model dtype.

Length robustness: text inputs have ~10 content tokens, image inputs ~576, and the max of
more values is larger (E[max] of 12 vs 576 i.i.d. N(0,1) is 1.63 vs 3.08), so a raw max
compares lengths as much as modalities. `masked_order_stats` adds reductions that do not
grow with the number of tokens: a matched max (expected max over k tokens), the share of
active tokens, and a quantile.
"""

from __future__ import annotations

import torch

BASIC_STATS = ("max", "mean")


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


def shared_span(mask: torch.Tensor) -> tuple[int, int] | None:
    """(start, stop) when every row of a host mask is the same single run of true positions,
    else None. Image inputs always are (576 consecutive image positions at one offset), so
    their reductions can read a view instead of masking a copy of [batch, tokens, neurons].
    A mask on an accelerator gives None: inspecting it would cost a device sync."""
    if mask.device.type != "cpu" or mask.ndim != 2 or mask.shape[0] == 0:
        return None
    first = mask[0]
    positions = first.nonzero().flatten()
    if len(positions) == 0 or not bool((mask == first).all()):
        return None
    start, stop = int(positions[0]), int(positions[-1]) + 1
    return (start, stop) if stop - start == len(positions) else None


def span_max_mean(activations: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`masked_max_mean` for a mask that is tokens start..stop-1 in every row: no copy."""
    view = activations[:, start:stop]
    return view.amax(dim=1).float(), view.sum(dim=1, dtype=torch.float32) / (stop - start)


ORDER_STATS = ("matched_max", "frac_active", "quantile")
ALL_STATS = BASIC_STATS + ORDER_STATS


def _matched_max_weights(positions: torch.Tensor, counts: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Weights [batch, tokens] (float64) of the ascending order statistics in E[max of k of T].

    P(the max of a uniform k-subset is the j-th smallest of T) = C(j-1, k-1) / C(T, k) for
    k <= j <= T, else 0; log-binomials via lgamma keep this finite for T in the thousands.
    A row with k outside [1, T] gets all-NaN weights (no device sync to raise instead).
    """
    j = positions.double().unsqueeze(0) + 1  # [1, tokens], 1-based rank
    t = counts.double().unsqueeze(1)  # [batch, 1]
    kk = k.to(device=counts.device, dtype=torch.float64).unsqueeze(1)  # [batch, 1]
    lg = torch.lgamma
    log_w = (lg(j) - lg(kk) - lg(j - kk + 1)) - (lg(t + 1) - lg(kk + 1) - lg(t - kk + 1))
    inside = (j >= kk) & (j <= t)
    weights = torch.where(inside, log_w.exp(), torch.zeros_like(log_w))
    bad = (kk < 1) | (kk > t)
    return weights.masked_fill(bad, float("nan"))


def masked_order_stats(
    activations: torch.Tensor, mask: torch.Tensor, k: torch.Tensor, quantile: float = 0.9
) -> dict[str, torch.Tensor]:
    """Length-robust reductions over the tokens where `mask` is true, from one sort.

    activations: [batch, tokens, neurons], any float dtype; mask: [batch, tokens] bool;
    k: [batch] int64 with 1 <= k <= number of masked tokens of the row.
    Returns float32 [batch, neurons] tensors keyed by `ORDER_STATS`:

    - "matched_max": the exact expected max over a uniformly random k-subset of the row's
      masked tokens, sum_{j=k}^{T} x_(j) C(j-1, k-1) / C(T, k). Reducing both conditions of
      a pair with the same k = min(T_text, T_image) removes the length bias of the raw max;
      k = T gives the max, k = 1 the mean. A row whose k is out of range gives NaN.
    - "frac_active": share of masked tokens with activation > 0, i.e. the activation
      probability that LAPE / MMNeuron use to find language- or modality-specific neurons.
    - "quantile": the `quantile` quantile, linear interpolation as `torch.quantile`.
    A row with no masked token gives NaN for all three.

    Memory (N = batch x tokens x neurons elements, on the input's device): peak is at the
    sort, which holds the +inf-filled copy and the sorted values (input dtype each) plus the
    sort's int64 indices (8 bytes/element, freed right after); then the sorted values and
    their float32 copy (4 bytes/element), which is reused in place for the weighted sum.
    E.g. bf16 [8, 600, 11008]: ~0.64 GB at the sort, ~0.32 GB after. No float64 tensor is
    larger than [batch, tokens].
    """
    batch, tokens, _ = activations.shape
    device = activations.device
    keep = mask.to(device).unsqueeze(-1)  # [batch, tokens, 1]
    counts = mask.to(device).sum(dim=1)  # [batch]
    # Unmasked positions sort to the end, so row b's values sit at positions 0..T_b-1.
    filled = activations.masked_fill(~keep, float("inf"))
    ordered = torch.sort(filled, dim=1).values  # sort is exact in any dtype
    del filled
    values = ordered.float()
    del ordered
    positions = torch.arange(tokens, device=device)
    valid = (positions.unsqueeze(0) < counts.unsqueeze(1)).unsqueeze(-1)  # [batch, tokens, 1]
    values.masked_fill_(~valid, 0.0)  # padding must not meet a 0 weight as inf (-> NaN)

    n = counts.to(torch.float32).unsqueeze(1)  # [batch, 1]
    frac_active = (values > 0).sum(dim=1, dtype=torch.float32) / n

    # torch.quantile's linear rule: rank q * (T - 1), lerp between its floor and ceil.
    rank = quantile * (counts.double() - 1).clamp(min=0)  # [batch]
    below, above = rank.floor(), rank.ceil()
    frac = (rank - below).to(torch.float32).view(batch, 1)
    index = torch.stack([below, above], dim=1).long()  # [batch, 2]
    pair = values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[2]))
    q_values = torch.lerp(pair[:, 0], pair[:, 1], frac)

    weights = _matched_max_weights(positions, counts, k).to(torch.float32)
    # In place: elementwise then sum (not a matmul, so TF32 settings cannot degrade it).
    matched = values.mul_(weights.unsqueeze(-1)).sum(dim=1)

    empty = (counts == 0).unsqueeze(1)  # [batch, 1]
    nan = float("nan")
    return {
        "matched_max": matched.masked_fill(empty, nan),
        "frac_active": frac_active.masked_fill(empty, nan),
        "quantile": q_values.masked_fill(empty, nan),
    }
