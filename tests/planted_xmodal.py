"""A tiny LLaVA with planted cross-modal neurons: ground truth for xmodal_r and layer alignment.

Why: `xmodal_r` claims to find neurons whose text and image responses agree on *which* pairs
excite them, and the alignment measures claim to find the layers where words and pixels meet.
On random weights nothing is known to be true, so here the tiny checkpoint is edited so that
one concept, a shape's colour, reaches a known place of the language model by both routes:

* Data (`colour_pairs`): one shape of a palette colour on a black background, drawn by the
  demo's own `render_scene`, captioned "A red circle at the top on a black background." Every
  caption names the shape's colour and the background's, every image shows both, so caption
  and image agree on the concept pair by pair; its strength is graded (seven colours, each a
  different mix of the three channels the plant reads).
* Image route. The vision tower passes each patch's mean red, green and blue through: three
  reserved dimensions of its patch embedding average one colour channel over the patch;
  position embeddings are zero (so a patch's value depends on its pixels alone) and no
  attention or MLP of the tower writes those dimensions. The projector carries them onto three
  reserved residual directions `dims` of the language model: the first linear layer copies
  each onto its own hidden unit, shifted by SHIFT so that GELU is the identity there (GELU(z) =
  z to float precision for z > 10), and the second maps each back, scaled and offset so that
  over the palette each direction spans [0, MARKER]. Every other output of the projector has
  those hidden units' columns zeroed: the rest of an image token is the tower's own content.
* Text route. `probe_colours` runs that image route on a plain image of each palette colour
  and reads the three values an image token of that colour gets; the word embedding of the
  colour (" red", ...) is set to exactly those values on `dims`, every other token to 0.
  So a caption's colour word and a patch of that colour write the same vector.
* Pass-through (as in planted.py): no attention or MLP of the language model writes `dims`
  and no attention reads them (those entries of every `input_layernorm` are zero); before
  layer `layer` no neuron reads them either (zero in `post_attention_layernorm`).
* Readers. In layer `layer`, `per_channel` planted neurons per colour channel have `gate_proj`
  and `up_proj` rows `gain * e_dim`: activation silu(g z) g z of that channel's value, the same
  function of the colour in both modalities. Every other neuron of that layer has those
  columns zeroed, so only the planted ones read the concept there. From the next layer on the
  MLPs read `dims` with their own random weights, and the planted neurons' outputs reach the
  residual stream: the concept is then shared by the whole population, in both modalities.

What is *not* removed: the colour and everything else the image shows still reach the other
dimensions through the tower's and the embeddings' random weights, as in the unedited model;
the values on `dims` enter every RMSNorm denominator (a magnitude change shared by both
modalities). So before the plant the model is an ordinary random model, and its untouched
neurons compete with the planted ones on the real content of the pairs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from modalscope.data.synthetic import KINDS, PALETTE, POSITIONS, grid_cell, render_scene

COLOURS = tuple(c for c in PALETTE if c != "black")  # the shapes' colours; black is the background
BACKGROUND = "black"
IMAGE_SIZE = 336  # the processor's own size: no resampling blurs the colours
MARKER = 32.0  # the largest value a colour writes on a reserved direction (cf. planted.MARKER)
GAIN = 1.0
SHIFT = 20.0  # projector hidden units carry value + SHIFT, where GELU is the identity


def colour_pairs(root: Path, n_pairs: int, seed: int = 0) -> Path:
    """Write `root/pairs.jsonl` and its PNG images: one shape per image, colours in turn (each
    colour n_pairs / 7 times), kind, size and place at random; returns the JSONL path."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    colours = [COLOURS[i % len(COLOURS)] for i in range(n_pairs)]
    rng.shuffle(colours)
    lines = []
    for index, colour in enumerate(colours):
        kind = rng.choice(KINDS)
        half = rng.randint(IMAGE_SIZE * 12 // 100, IMAGE_SIZE * 22 // 100)
        cx, cy = (rng.randint(half + 8, IMAGE_SIZE - 9 - half) for _ in range(2))
        box = [cx - half, cy - half, cx + half, cy + half]
        scene = {"background": BACKGROUND, "position": POSITIONS[grid_cell((cx, cy), IMAGE_SIZE)],
                 "shapes": [{"kind": kind, "color": colour, "bbox": box, "center": [cx, cy]}]}
        name = f"images/{index:04d}.png"
        render_scene(scene, IMAGE_SIZE).save(root / name)
        caption = f"A {colour} {kind} {scene['position']} on a {BACKGROUND} background."
        lines.append(json.dumps({"image": name, "caption": caption, "id": f"p{index:04d}"}))
    path = root / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@torch.no_grad()
def probe_colours(model: LlavaForConditionalGeneration, processor, dims: list[int]) -> dict[str, torch.Tensor]:
    """{colour: [3] the values an image token of a plain image of that colour has on `dims`}
    (every patch of a plain image is the same, so the first is taken)."""
    config = model.config
    out = {}
    for colour in (*COLOURS, BACKGROUND):
        image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), PALETTE[colour])
        pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        features = model.model.get_image_features(
            pixel_values=pixels, vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy)
        features = features.pooler_output if hasattr(features, "pooler_output") else features
        tokens = features[0] if isinstance(features, (list, tuple)) else features
        tokens = tokens.reshape(-1, tokens.shape[-1])
        out[colour] = tokens[:, dims].clone()
    return out


@torch.no_grad()
def build_xmodal_llava(src_dir: Path, out_dir: Path, layer: int = 2, per_channel: int = 4, seed: int = 0,
                       marker: float = MARKER, gain: float = GAIN) -> dict:
    """Copy the tiny checkpoint at `src_dir` to `out_dir` with planted cross-modal neurons.

    Returns {"neurons": [...] (MLP neurons of decoder layer `layer`, sorted), "by_channel":
    {"red": [...], ...}, "layer": layer, "dims": [...], "values": {colour: [3 floats]}}."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    model = LlavaForConditionalGeneration.from_pretrained(src_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(src_dir, backend="pil")
    lm, tower = model.model.language_model, model.model.vision_tower
    projector = model.model.multi_modal_projector
    hidden, width = model.config.text_config.hidden_size, model.config.text_config.intermediate_size
    if not 0 <= layer < len(lm.layers):
        raise ValueError(f"layer {layer}: the model has layers 0-{len(lm.layers) - 1}")
    if 3 * per_channel > width:
        raise ValueError(f"3 x {per_channel} planted neurons exceed the width {width}")

    generator = torch.Generator().manual_seed(seed)
    dims = torch.randperm(hidden, generator=generator)[:3].tolist()
    order = torch.randperm(width, generator=generator).tolist()
    by_channel = {name: sorted(order[i * per_channel:(i + 1) * per_channel])
                  for i, name in enumerate(("red", "green", "blue"))}
    tower_dims = torch.randperm(model.config.vision_config.hidden_size, generator=generator)[:3].tolist()
    units = torch.randperm(projector.linear_1.out_features, generator=generator)[:3].tolist()

    # Vision tower: reserved dimensions = a patch's mean of each channel, untouched after.
    patch = tower.embeddings.patch_embedding.weight  # [hidden, 3, 14, 14]
    patch[tower_dims] = 0.0
    for channel, dim in enumerate(tower_dims):
        patch[dim, channel] = 1.0 / (patch.shape[2] * patch.shape[3])
    tower.embeddings.position_embedding.weight.zero_()
    for block in tower.encoder.layers:
        for linear in (block.self_attn.out_proj, block.mlp.fc2):
            linear.weight[tower_dims, :] = 0.0
            linear.bias[tower_dims] = 0.0

    # Projector: each reserved tower dimension onto its own hidden unit (in GELU's linear range),
    # then provisionally onto `dims` with unit scale; scale and offset follow from the probe.
    first, second = projector.linear_1, projector.linear_2
    first.weight[units, :] = 0.0
    first.weight[units, tower_dims] = 1.0
    first.bias[units] = SHIFT
    second.weight[:, units] = 0.0
    second.weight[dims, :] = 0.0
    second.weight[dims, units] = 1.0
    second.bias[dims] = -SHIFT
    raw = probe_colours(model, processor, dims)
    spread = torch.stack([raw[c][0] for c in raw])  # [colours, 3]
    low, high = spread.min(dim=0).values, spread.max(dim=0).values
    scale = marker / (high - low)
    second.weight[dims, units] = scale
    second.bias[dims] = -scale * (SHIFT + low)
    values = probe_colours(model, processor, dims)
    values = {colour: v[0] for colour, v in values.items()}

    # Word embeddings: a colour word writes what a patch of that colour writes; nothing else.
    embed = lm.embed_tokens.weight
    embed[:, dims] = 0.0
    tokenizer = processor.tokenizer
    for colour, value in values.items():
        ids = tokenizer(" " + colour, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{colour!r} is {len(ids)} tokens in this tokenizer; the plant needs one")
        embed[ids[0], dims] = value

    # Language model: the directions pass through untouched; only the plant reads them at `layer`.
    for index, block in enumerate(lm.layers):
        block.self_attn.o_proj.weight[dims, :] = 0.0
        block.mlp.down_proj.weight[dims, :] = 0.0
        block.input_layernorm.weight[dims] = 0.0
        if index < layer:
            block.post_attention_layernorm.weight[dims] = 0.0
    block = lm.layers[layer]
    block.post_attention_layernorm.weight[dims] = 1.0
    block.mlp.gate_proj.weight[:, dims] = 0.0
    block.mlp.up_proj.weight[:, dims] = 0.0
    for channel, neurons in enumerate(by_channel.values()):
        for proj in (block.mlp.gate_proj, block.mlp.up_proj):
            proj.weight[neurons, :] = 0.0
            proj.weight[neurons, dims[channel]] = gain

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return {
        "neurons": sorted(n for group in by_channel.values() for n in group),
        "by_channel": by_channel,
        "layer": layer,
        "dims": dims,
        "values": {colour: [round(float(v), 4) for v in value] for colour, value in values.items()},
    }
