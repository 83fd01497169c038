"""LLaVA (llava-hf `LlavaForConditionalGeneration`, transformers 5.x module tree).

Sites: `residual` is a decoder layer's output (the report's h_t^(l)); `mlp` is the input
of `mlp.down_proj`, i.e. act(gate_proj(x)) * up_proj(x), the usual "neuron" of the field.
"""

from modalscope.models.adapter import ModelAdapter

LLAVA = ModelAdapter(
    family="llava",
    decoder_layers="model.language_model.layers",
    final_norm="model.language_model.norm",
    vision_modules=("model.vision_tower", "model.multi_modal_projector"),
    mlp_neuron_module="mlp.down_proj",
    language_model="model.language_model",
)
