"""One (stream, layer)'s tokens as every reduction sees them.

Why one view: a decoder layer's activations are [batch, tokens, neurons]; each stream (the
caption of a text input, the 576 image positions of an image input, the caption part of an
image-and-caption input) selects its content tokens with a mask. The reductions of
`reductions/` all read this one view, so the work they share is done once per stream and
layer: the content counts, and the sort that every order statistic (matched_max, the
quantile, the share of active tokens) needs, computed the first time one asks for it.

A stream whose content tokens are one run at the same offset in every row (image tokens
always are: `shared_span`) is a view of that run, so nothing is masked or copied for it.
"""

from __future__ import annotations

from functools import cached_property

import torch


def shared_span(mask: torch.Tensor) -> tuple[int, int] | None:
    """(start, stop) when every row of a host mask is the same single run of true positions,
    else None. A mask on an accelerator gives None: inspecting it would cost a device sync."""
    if mask.device.type != "cpu" or mask.ndim != 2 or mask.shape[0] == 0:
        return None
    first = mask[0]
    positions = first.nonzero().flatten()
    if len(positions) == 0 or not bool((mask == first).all()):
        return None
    start, stop = int(positions[0]), int(positions[-1]) + 1
    return (start, stop) if stop - start == len(positions) else None


class StreamTokens:
    """What one stream's mask says, for one batch: derived once per batch and device and shared
    by every layer's view (the hooks run per layer; the mask does not change between them).

    mask [batch, tokens] bool on the layer's device (cut to the span when there is one), k [batch]
    int64 (tokens per pair for matched_max, or None), `span`: every position is content."""

    def __init__(self, mask: torch.Tensor, k: torch.Tensor | None = None, span: bool = False) -> None:
        self.mask, self.k, self.span = mask, k, span

    @cached_property
    def keep(self) -> torch.Tensor:
        """[batch, tokens, 1] the mask, broadcastable against the values."""
        return self.mask.unsqueeze(-1)

    @cached_property
    def counts(self) -> torch.Tensor:
        """[batch] int64 content tokens per row."""
        return self.mask.sum(dim=1)

    @cached_property
    def empty(self) -> torch.Tensor:
        """[batch, 1] rows without a content token: every reduction gives them NaN."""
        return (self.counts == 0).unsqueeze(1)

    @cached_property
    def sorted_length(self) -> int:
        """Positions of a sorted view: the span's length, or the most content tokens of any row
        (one host sync per batch, not per layer)."""
        if self.span:
            return self.mask.shape[1]
        return max(int(self.counts.max()) if self.counts.numel() else 0, 1)

    @cached_property
    def order(self) -> torch.Tensor:
        """[batch, sorted_length] each row's content positions first, in order (a stable argsort
        of "not content"), for gathering the content tokens before a sort."""
        return torch.argsort((~self.mask).to(torch.int8), dim=1, stable=True)[:, :self.sorted_length]

    @cached_property
    def positions(self) -> torch.Tensor:
        """[sorted_length] 0..T_max-1: the ranks of a sorted view."""
        return torch.arange(self.sorted_length, device=self.mask.device)

    @cached_property
    def valid(self) -> torch.Tensor:
        """[batch, sorted_length, 1] true where a sorted view holds a content value."""
        return (self.positions.unsqueeze(0) < self.counts.unsqueeze(1)).unsqueeze(-1)


class TokenView:
    """values [batch, tokens, neurons] (any float dtype) of one stream and layer, with the
    stream's `StreamTokens` (mask, k, counts, ...), which every layer of the batch shares."""

    def __init__(self, values: torch.Tensor, mask: torch.Tensor | None = None, k: torch.Tensor | None = None,
                 span: bool = False, tokens: StreamTokens | None = None) -> None:
        self.values = values
        self.tokens = tokens if tokens is not None else StreamTokens(mask, k, span)

    @classmethod
    def of(cls, activations: torch.Tensor, tokens: StreamTokens, span: tuple[int, int] | None) -> "TokenView":
        """The view of one stream: `tokens.mask` is already cut to `span` when there is one."""
        return cls(activations if span is None else activations[:, slice(*span)], tokens=tokens)

    mask = property(lambda self: self.tokens.mask)
    k = property(lambda self: self.tokens.k)
    span = property(lambda self: self.tokens.span)
    keep = property(lambda self: self.tokens.keep)
    counts = property(lambda self: self.tokens.counts)
    empty = property(lambda self: self.tokens.empty)
    sorted_length = property(lambda self: self.tokens.sorted_length)
    positions = property(lambda self: self.tokens.positions)
    valid = property(lambda self: self.tokens.valid)

    @property
    def n_tokens(self) -> int:
        """Positions in `values` (for a span: its length, the same content count in every row)."""
        return self.values.shape[1]

    @cached_property
    def sorted(self) -> torch.Tensor:
        """[batch, T_max, neurons] float32, T_max the most content tokens of any row: row b's
        content values ascending at positions 0..T_b-1, then zeros (padding must not meet a 0
        weight as inf, which gives NaN).

        Only content tokens are sorted: a masked stream's content is first gathered to the
        front (`_content_first`), so a caption of 11 tokens inside a 600-token image-and-caption
        prompt sorts 11 values per neuron, not 600. Sorting is exact in any dtype.

        Memory (N = batch x T_max x neurons): the gathered copy and the sorted values (input
        dtype) plus the sort's int64 indices (freed at once); what is kept is the float32 copy."""
        values = self.values if self.span else self._content_first()
        ordered = torch.sort(values, dim=1).values
        del values
        out = ordered.float()
        del ordered
        out.masked_fill_(~self.valid, 0.0)
        return out

    def _content_first(self) -> torch.Tensor:
        """[batch, T_max, neurons]: each row's content tokens first (in order), then +inf."""
        index = self.tokens.order
        gathered = self.values.gather(1, index.unsqueeze(-1).expand(-1, -1, self.values.shape[2]))
        inside = self.positions.unsqueeze(0) < self.counts.unsqueeze(1)
        return gathered.masked_fill(~inside.unsqueeze(-1), float("inf"))
