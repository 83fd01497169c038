"""A planted model for the ablation tests: a known set of MLP neurons that carries the captions.

The tiny LLaVA's last layer gets 4 neurons that fire on (almost) every token (gate and up rows
along the mean input of that MLP) and write, through their down_proj columns, the direction that
raises the logits of the captions' own tokens. Ablating them must lower the captions'
likelihood far more than ablating any 4 other neurons of that layer.
"""

from __future__ import annotations

import copy

import torch

from modalscope.models.loading import LoadedModel
from modalscope.record.inputs import PromptBuilder

PLANTED_LAYER = 3
PLANTED = [5, 50, 100, 150]


@torch.no_grad()
def planted_model(loaded: LoadedModel, captions: list[str]) -> LoadedModel:
    model = copy.deepcopy(loaded.model)
    layer = loaded.adapter.layers(model)[PLANTED_LAYER]
    builder = PromptBuilder.for_model(loaded, "content")
    batch = builder.text_batch(captions)
    seen = []
    handle = layer.mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    loaded.adapter.forward_module(model)(**batch.inputs, use_cache=False)
    handle.remove()
    real = batch.inputs["attention_mask"].bool()
    w = seen[0][real].mean(0)
    w = w / w.norm()
    mlp = layer.mlp
    mlp.gate_proj.weight[PLANTED] = 4.0 * w
    mlp.up_proj.weight[PLANTED] = 4.0 * w
    head = model.get_output_embeddings().weight
    ids = batch.inputs["input_ids"][batch.content].unique()
    direction = head[ids].mean(0) - head.mean(0)
    mlp.down_proj.weight[:, PLANTED] = (2.0 * direction / direction.norm())[:, None]
    return LoadedModel(model=model, processor=loaded.processor, adapter=loaded.adapter,
                       provenance={**loaded.provenance, "weights_fingerprint": "planted"})
