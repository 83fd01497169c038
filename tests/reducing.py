"""The registry's reductions under the names the reduction tests read best."""

from __future__ import annotations

import torch

from modalscope.record.reductions import ReductionSpec, reduce_tokens, reduce_view
from modalscope.record.tokens import StreamTokens, TokenView

ORDER = ("matched_max", "frac_active", "quantile")


def masked_max_mean(acts: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = reduce_tokens(acts, mask, ("max", "mean"))
    return out["max"], out["mean"]


def masked_order_stats(acts: torch.Tensor, mask: torch.Tensor, k: torch.Tensor,
                       quantile: float = 0.9) -> dict[str, torch.Tensor]:
    return reduce_tokens(acts, mask, ReductionSpec(ORDER, quantile), k)


def span_reductions(acts: torch.Tensor, start: int, stop: int, names=("max", "mean"),
                    k: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The span path: a view of tokens start..stop-1 of every row, no mask applied."""
    mask = torch.ones(acts.shape[0], stop - start, dtype=torch.bool)
    tokens = StreamTokens(mask, k, span=True)
    return reduce_view(TokenView.of(acts, tokens, (start, stop)), ReductionSpec(tuple(names)))


def joint_image_and_image(loaded, builder, images, captions, sites, k=None) -> dict:
    """{"image", "image_text_image": {site: {stat: numpy [batch, layer, neuron]}}}: the image
    forward and the joint forward's image stream of the same pairs, as derived.joint_matches
    reads them."""
    from modalscope.record.extract import reduce_content, reduce_forward
    from modalscope.record.hooks import Recorder

    spec = ReductionSpec(("max", "mean", "matched_max")) if k is not None else ReductionSpec()
    with Recorder(loaded.model, loaded.adapter, sites, spec) as rec:
        image = reduce_content(loaded, rec, builder.image_batch(images), k)
        joint, streams = builder.image_text_batch(images, captions)
        both = reduce_forward(loaded, rec, joint, streams, k)
    records = {"image": image, "image_text_image": both["image_text_image"]}
    return {s: {site: {stat: v.numpy() for stat, v in d.items()} for site, d in r.items()} for s, r in records.items()}
