"""LLaVA-1.5 (llava-hf `LlavaForConditionalGeneration`, transformers 5.x module tree).

Sites: `residual` is a decoder layer's output (the report's h_t^(l)); `mlp` is the input of
`mlp.down_proj`, i.e. act(gate_proj(x)) * up_proj(x), the usual "neuron" of the field.
Image content: the 576 `<image>` positions the processor expands one placeholder into (336 px,
14 px patches). The minimal image-only prompt is `USER: <image>\n ASSISTANT:` (an empty text
item, as the template writes a user turn).
"""

from modalscope.models.adapter import ModelAdapter

LLAVA = ModelAdapter(
    family="LLaVA-1.5",
    model_types=("llava",),
    decoder_layers="model.language_model.layers",
    forward="model",
    final_norm="model.language_model.norm",
    vision_modules=("model.vision_tower", "model.multi_modal_projector"),
    vision_inputs=("pixel_values",),
    notes={"image": "the 576 `<image>` positions (24 x 24 patches of 14 px at 336 px)"},
)
