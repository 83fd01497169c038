"""Qwen3-VL (`Qwen3VLForConditionalGeneration`, e.g. Qwen/Qwen3-VL-4B-Instruct, -8B-Instruct).

One decoder (Qwen3: `model.language_model`, with `layers` and `norm`; q/k norms in attention,
SwiGLU MLP, so the same two sites as every family) and one vision tower (`model.visual`: the ViT,
its patch merger and its deepstack mergers in one module).

Deepstack. Qwen3-VL feeds the image to the decoder in more than one place: beside the merged
features that replace the `<|image_pad|>` embeddings, the features of some vision layers
(`deepstack_visual_indexes`, 3 of them: vision layers 5, 11, 17 of the 4B) go through their own
mergers and are *added* to the hidden states at the image positions after the first decoder
layers (one per layer: layers 0, 1, 2). transformers adds them between layers, outside any
module (`_deepstack_process`), so a decoder layer's output there is not what the next layer
receives, and its `output_hidden_states` report the layer's output before the addition.

What the `residual` site means here: the residual stream between layer l and layer l + 1, i.e.
what layer l + 1 receives (after the last layer: what the final norm receives), as in every
other family. At a deepstack layer, at the image positions, that is the layer's output plus
that layer's deepstack features; everywhere else it is the layer's output. `prepare` makes it
so once at load: it takes the deepstack features from the language model's inputs and adds
them in a forward hook of each of those decoder layers, registered before any other hook, with
transformers' own arithmetic (same values, same order), so the recording hooks, and
`output_hidden_states` of a model loaded by modalscope, see what the next layer receives. The
model's computation and outputs are unchanged. The `mlp` site lies inside the layer: untouched.

A text-only input has no `pixel_values`: the vision tower, with its deepstack mergers, never
runs (`vision_modules`, guarded), the language model receives no deepstack features, and the
hooks add nothing (they read only what the current forward was given).

Content tokens: the `<|image_pad|>` positions, one per 32 x 32 px of the resized image (16 px
patches, 2 x 2 merged; 300 x 200 gives 70, grid 1 x 14 x 20 at 320 x 224);
`<|vision_start|>`/`<|vision_end|>` are never content; no BOS; unlike Qwen2.5-VL, the template
writes no default system turn. Positions are M-RoPE (interleaved), computed by the model from
the ids, `image_grid_thw` and `mm_token_type_ids`, as for Qwen2.5-VL (see qwen2_vl.py). The
processor is loaded without its video processor (torchvision), as for Qwen2.5-VL.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from modalscope.models.adapter import ModelAdapter
from modalscope.models.qwen2_vl import image_only_subclass, mrope_section

PROCESSOR = "Qwen3VLProcessor"


def image_only_processor() -> type:
    return image_only_subclass(PROCESSOR, __name__)


def __getattr__(name: str) -> type:
    """The processor class by name, made on first use (so it pickles, for DataLoader workers)."""
    if name == PROCESSOR.replace("Processor", "ImageOnlyProcessor"):
        return image_only_processor()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_processor(model_id: str, revision: str | None = None, backend: str = "pil", **options: Any) -> Any:
    return image_only_processor().from_pretrained(model_id, revision=revision, backend=backend, **options)


def deepstack_in_layers(model: Any) -> None:
    """Move the deepstack additions into the decoder layers' outputs (see the module docstring)."""
    language_model = model.get_submodule("model.language_model")
    if getattr(language_model, "_modalscope_deepstack", False):
        return
    given: dict[str, Any] = {}  # this forward's deepstack features and image positions, or nothing

    def take(module, args, kwargs):
        given.clear()
        if kwargs.get("deepstack_visual_embeds") is None:
            return None
        given.update(embeds=kwargs["deepstack_visual_embeds"], mask=kwargs["visual_pos_masks"])
        return args, {**kwargs, "deepstack_visual_embeds": None}  # added by `add` instead

    def add(index, module, args, output):
        embeds = given.get("embeds")
        if embeds is None or index >= len(embeds):
            return None
        # transformers' _deepstack_process, verbatim
        mask = given["mask"].to(output.device)
        hidden = output.clone()
        hidden[mask, :] = hidden[mask, :] + embeds[index].to(output.device, output.dtype)
        return hidden

    language_model.register_forward_pre_hook(take, with_kwargs=True)
    language_model.register_forward_hook(lambda *_: given.clear())
    for index, layer in enumerate(language_model.layers):
        layer.register_forward_hook(partial(add, index), prepend=True)
    language_model._modalscope_deepstack = True


def shrink(config: Any, sizes: Any) -> None:
    """A Qwen3-VL config made small in place (`sizes`: shrunk.ShrunkSizes): the M-RoPE section
    sums to head_dim / 2, the vision tower's output is the decoder's width, and deepstack feeds
    fewer decoder layers than there are (from the earliest vision layers), so a layer without it
    follows (2 layers: deepstack after layer 0 only, from vision layer 0)."""
    text = config.text_config
    text.num_hidden_layers = sizes.layers
    text.hidden_size = sizes.hidden_size
    text.intermediate_size = sizes.intermediate_size
    text.num_attention_heads = sizes.heads
    text.num_key_value_heads = 2 if sizes.heads % 2 == 0 else 1
    text.head_dim = sizes.hidden_size // sizes.heads
    rope = dict(text.rope_parameters or {})
    rope["mrope_section"] = mrope_section(rope.get("mrope_section") or [24, 20, 20], text.head_dim)
    text.rope_parameters = rope
    vision = config.vision_config
    depth, deepstack = vision.depth, list(vision.deepstack_visual_indexes)
    vision.depth = sizes.vision_layers
    vision.hidden_size = sizes.vision_hidden_size
    vision.intermediate_size = sizes.vision_intermediate_size
    vision.num_heads = sizes.vision_heads
    vision.out_hidden_size = sizes.hidden_size
    kept = deepstack[: max(1, min(len(deepstack), sizes.layers - 1))]
    vision.deepstack_visual_indexes = [min(sizes.vision_layers - 1, i * sizes.vision_layers // depth) for i in kept]


QWEN3_VL = ModelAdapter(
    family="Qwen3-VL",
    model_types=("qwen3_vl",),
    decoder_layers="model.language_model.layers",
    forward="model",
    final_norm="model.language_model.norm",
    vision_modules=("model.visual",),
    vision_inputs=("pixel_values", "image_grid_thw"),
    token_inputs=("mm_token_type_ids",),
    never_content=("<|vision_start|>", "<|vision_end|>"),
    image_only_text=None,
    load_processor=load_processor,
    shrink=shrink,
    prepare=deepstack_in_layers,
    notes={"image": "the `<|image_pad|>` positions, one per 32 x 32 px of the resized image (70 for 300 x 200); "
                    "`<|vision_start|>`/`<|vision_end|>` are never content; no BOS; `residual` at the deepstack "
                    "layers is what the next layer receives (the layer's output plus the deepstack features)"},
)
