"""A tiny LLaVA with planted modality neurons: ground truth for the statistics.

Why: the study claims to find neurons that prefer one modality. On random weights nothing
is known to be true, so here we edit the tiny checkpoint so that a known set of MLP neurons
of one decoder layer fires only on image tokens and another, disjoint set only on caption
tokens; a correct pipeline must rank exactly those neurons at the two ends of Table 3.

Construction (two reserved residual directions, `d_img` and `d_txt`):

* Writers. Image tokens carry +c on `d_img` and 0 on `d_txt`: the projector's last linear
  layer has rows `d_img`/`d_txt` of its weight zeroed and bias `c`/0 there. Word tokens carry
  +c on `d_txt` and 0 on `d_img` (a column of `embed_tokens`); special tokens (BOS, pad,
  `<image>`, ...) and the chat template's own tokens ("USER", ":", "ASSISTANT", ...) get 0
  on both, so only caption words write `d_txt`.
* Pass-through. No attention or MLP writes into the two directions (those rows of every
  layer's `o_proj` and `down_proj` are zero) and no attention reads them (those entries of
  every `input_layernorm` weight are zero), so at the planted layer each token's value on
  `d_img`/`d_txt` is exactly what the embedding or projector put there: tokens cannot leak
  the marker to each other.
* Readers. In the planted layer, the planted image neurons' `gate_proj` and `up_proj` rows
  are `g * e_{d_img}` (text neurons: `g * e_{d_txt}`), so their activation is
  silu(g z) * g z with z the RMS-normalised marker: large on marked tokens, exactly 0
  elsewhere. Every other neuron of every layer has columns `d_img`/`d_txt` of `gate_proj`
  and `up_proj` zeroed (and the post-attention norm weight is zero there outside the
  planted layer), so no other neuron reads a marker.

The markers still enter every RMSNorm's denominator, which rescales the other dimensions of
marked tokens; that is a change in magnitude shared by both conditions, not a modality
signal any untouched neuron can read directly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

# c: value written on a reserved direction. The tiny model's residual stream has an RMS of
# ~6-8 per dimension by layer 2, so the marker must be well above that to dominate the
# RMSNorm; 32 gives planted |cohen_d| of ~13-300 (layer-dependent) against <= ~4.5 for any
# untouched neuron, while 4 would leave planted neurons only just above the untouched ones.
MARKER = 32.0
GAIN = 1.0  # g: planted neurons' read weight on the marker


def _template_token_ids(processor) -> set[int]:
    """Token ids of the chat template around the caption / image (not caption words)."""
    tokenizer = processor.tokenizer
    ids: set[int] = set(tokenizer.all_special_ids)
    for image in (False, True):
        content = [{"type": "image"}] if image else []
        content.append({"type": "text", "text": ""})
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        ids.update(tokenizer(prompt)["input_ids"])
    ids.add(processor.tokenizer.convert_tokens_to_ids("<image>"))
    return ids


@torch.no_grad()
def build_planted_llava(
    src_dir: Path,
    out_dir: Path,
    layer: int = 2,
    n_image: int = 8,
    n_text: int = 8,
    seed: int = 0,
    marker: float = MARKER,
    gain: float = GAIN,
) -> dict:
    """Copy the tiny checkpoint at `src_dir` to `out_dir` with planted modality neurons.

    Returns {"image_neurons": [...], "text_neurons": [...], "layer": layer, ...} where the
    neuron indices are into the MLP intermediate dimension of decoder layer `layer`.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    model = LlavaForConditionalGeneration.from_pretrained(src_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(src_dir, backend="pil")
    lm = model.model.language_model
    layers = lm.layers
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer}: the model has layers 0-{len(layers) - 1}")
    hidden = model.config.text_config.hidden_size
    width = model.config.text_config.intermediate_size
    if n_image + n_text > width:
        raise ValueError(f"{n_image} + {n_text} planted neurons exceed the width {width}")

    generator = torch.Generator().manual_seed(seed)
    d_img, d_txt = torch.randperm(hidden, generator=generator)[:2].tolist()
    order = torch.randperm(width, generator=generator).tolist()
    image_neurons = sorted(order[:n_image])
    text_neurons = sorted(order[n_image : n_image + n_text])
    dims = [d_img, d_txt]

    # Writers: caption words -> d_txt, image tokens -> d_img, nothing else.
    embed = lm.embed_tokens.weight
    embed[:, d_img] = 0.0
    embed[:, d_txt] = marker
    embed[sorted(_template_token_ids(processor)), d_txt] = 0.0
    projector = model.model.multi_modal_projector.linear_2
    projector.weight[dims, :] = 0.0
    projector.bias[d_img] = marker
    projector.bias[d_txt] = 0.0

    # Pass-through: no block writes the markers, no attention and no other neuron reads them.
    for index, block in enumerate(layers):
        block.self_attn.o_proj.weight[dims, :] = 0.0
        block.mlp.down_proj.weight[dims, :] = 0.0
        block.input_layernorm.weight[dims] = 0.0
        block.mlp.gate_proj.weight[:, dims] = 0.0
        block.mlp.up_proj.weight[:, dims] = 0.0
        if index != layer:
            block.post_attention_layernorm.weight[dims] = 0.0

    # Readers: the planted neurons of `layer` see only their marker.
    block = layers[layer]
    block.post_attention_layernorm.weight[dims] = 1.0
    for neurons, dim in ((image_neurons, d_img), (text_neurons, d_txt)):
        for proj in (block.mlp.gate_proj, block.mlp.up_proj):
            proj.weight[neurons, :] = 0.0
            proj.weight[neurons, dim] = gain

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return {
        "image_neurons": image_neurons,
        "text_neurons": text_neurons,
        "layer": layer,
        "dims": {"image": d_img, "text": d_txt},
    }
