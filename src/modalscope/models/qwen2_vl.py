"""Qwen2.5-VL and Qwen2-VL (`Qwen2_5_VLForConditionalGeneration`, `Qwen2VLForConditionalGeneration`).

One decoder (Qwen2: `model.language_model`, with `layers` and `norm`) and one vision tower
(`model.visual`, the ViT and its patch merger in one module), for both families; they differ
in the vision tower only (Qwen2.5-VL: windowed attention, RMSNorm, SwiGLU; Qwen2-VL: full
attention, LayerNorm) and in the processor class.

Content tokens:
- image: the `<|image_pad|>` positions. The processor resizes each image to multiples of 28 px
  (14 px patches, 2 x 2 merged into one token) between the repository's `min_pixels` and
  `max_pixels` (dynamic resolution), and expands the template's one `<|image_pad|>` into one
  placeholder per merged patch, so the count varies with each image's size and aspect ratio
  (300x200: 77, 1000x500: 648; a tiny image is scaled up to 56x56: 4). The real repository
  allows up to 12845056 pixels, i.e. 16384 tokens per image.
- `<|vision_start|>` and `<|vision_end|>`, which frame every image's run, are never content,
  neither with `--tokens all`: one constant pair per image, saying nothing about it (like BOS).
- There is no BOS: the tokenizer adds none and the template writes none.
- The template writes a default system turn (`You are a helpful assistant.`) before the user
  turn of every prompt, in all three conditions. With `--tokens all` its tokens are seen, as are
  `<|im_start|>`, `<|im_end|>`, `user` and `assistant`: template tokens, as in other families.
- The minimal image-only prompt is a user turn holding only the image (no text item; an empty
  one renders the same): `<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|im_end|>`.

Positions are M-RoPE (time, height, width per token), which the model computes from the ids,
`image_grid_thw` and `mm_token_type_ids` (1 at the image placeholders): so the latter is a
per-token input. Without it Qwen2.5-VL silently falls back to 1-D positions, and Qwen2-VL
refuses the images. A text-only input needs none of it: its 1-D positions are its M-RoPE ones.

The processor: transformers builds Qwen's video processor only with torchvision installed,
which a study never uses. `load_processor` builds a subclass of the family's processor
whose `__init__` has no `video_processor` parameter (ProcessorMixin reads its sub-processors
from those parameter names), from the repository's own files.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from modalscope.models.adapter import ModelAdapter

# What the real repositories' processors are named in transformers, per model type.
PROCESSORS = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen2_vl": "Qwen2VLProcessor"}


@cache
def image_only_subclass(base_name: str, module: str) -> type:
    """A subclass of transformers' processor `base_name` without its video processor (see the
    module docstring), named for `module`, whose `__getattr__` must give it back (pickling)."""
    import transformers

    base = getattr(transformers, base_name)

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    name = base.__name__.replace("Processor", "ImageOnlyProcessor")
    return type(name, (base,), {"__init__": __init__, "__module__": module, "__qualname__": name})


def image_only_processor(model_type: str) -> type:
    """The family's processor without its video processor (see the module docstring)."""
    return image_only_subclass(PROCESSORS[model_type], __name__)


def __getattr__(name: str) -> type:
    """The processor classes by name, made on first use (so they pickle, for DataLoader workers)."""
    for model_type, base in PROCESSORS.items():
        if name == base.replace("Processor", "ImageOnlyProcessor"):
            return image_only_processor(model_type)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_qwen2_5_vl_processor(model_id: str, revision: str | None = None, backend: str = "pil", **options: Any
                              ) -> Any:
    return image_only_processor("qwen2_5_vl").from_pretrained(model_id, revision=revision, backend=backend, **options)


def load_qwen2_vl_processor(model_id: str, revision: str | None = None, backend: str = "pil", **options: Any
                            ) -> Any:
    return image_only_processor("qwen2_vl").from_pretrained(model_id, revision=revision, backend=backend, **options)


def mrope_section(section: list[int], head_dim: int) -> list[int]:
    """The (time, height, width) split of the rotary frequencies, scaled to a new head size:
    it must sum to head_dim / 2 (the real [16, 24, 24] of head_dim 128 becomes [2, 3, 3] at 16)."""
    half, total = head_dim // 2, sum(section)
    scaled = [max(1, round(s * half / total)) for s in section]
    scaled[-1] += half - sum(scaled)
    return scaled


def shrink(config: Any, sizes: Any) -> None:
    """A Qwen2.5-VL or Qwen2-VL config made small in place (`sizes`: shrunk.ShrunkSizes).

    Consistency kept: the M-RoPE section sums to head_dim / 2, the vision tower's output width
    (Qwen2.5-VL `out_hidden_size`, Qwen2-VL `hidden_size`) is the decoder's width, and Qwen2.5-VL's
    full-attention blocks lie inside the tower (every second block; the others windowed)."""
    text = config.text_config
    layer_types = list(getattr(text, "layer_types", None) or ["full_attention"])
    text.num_hidden_layers = sizes.layers
    text.max_window_layers = sizes.layers
    text.layer_types = [layer_types[min(i, len(layer_types) - 1)] for i in range(sizes.layers)]
    text.hidden_size = sizes.hidden_size
    text.intermediate_size = sizes.intermediate_size
    text.num_attention_heads = sizes.heads
    text.num_key_value_heads = 2 if sizes.heads % 2 == 0 else 1
    head_dim = sizes.hidden_size // sizes.heads
    if getattr(text, "head_dim", None) is not None:
        text.head_dim = head_dim
    rope = dict(text.rope_parameters or {})
    rope["mrope_section"] = mrope_section(rope.get("mrope_section") or [16, 24, 24], head_dim)
    text.rope_parameters = rope
    vision = config.vision_config
    vision.depth = sizes.vision_layers
    vision.num_heads = sizes.vision_heads
    if hasattr(vision, "embed_dim"):  # Qwen2-VL: embed_dim is the ViT's width, hidden_size the merger's output
        vision.embed_dim = sizes.vision_hidden_size
        vision.mlp_ratio = max(1, sizes.vision_intermediate_size // sizes.vision_hidden_size)  # an int
        vision.hidden_size = sizes.hidden_size
    else:  # Qwen2.5-VL
        vision.hidden_size = sizes.vision_hidden_size
        vision.intermediate_size = sizes.vision_intermediate_size
        vision.out_hidden_size = sizes.hidden_size
        vision.fullatt_block_indexes = list(range(1, sizes.vision_layers, 2)) or [0]


def _family(family: str, model_type: str, load_processor) -> ModelAdapter:
    return ModelAdapter(
        family=family,
        model_types=(model_type,),
        decoder_layers="model.language_model.layers",
        forward="model",
        final_norm="model.language_model.norm",
        vision_modules=("model.visual",),
        vision_inputs=("pixel_values", "image_grid_thw"),
        token_inputs=("mm_token_type_ids",),
        image_token="image_token_id",
        never_content=("<|vision_start|>", "<|vision_end|>"),
        image_only_text=None,
        load_processor=load_processor,
        shrink=shrink,
        notes={"image": "the `<|image_pad|>` positions, one per 28 x 28 px of the resized image (dynamic "
                        "resolution: the count varies with each image's size); `<|vision_start|>` and "
                        "`<|vision_end|>` are never content; no BOS; the template's default system turn "
                        "is in every prompt"},
    )


QWEN2_5_VL = _family("Qwen2.5-VL", "qwen2_5_vl", load_qwen2_5_vl_processor)
QWEN2_VL = _family("Qwen2-VL", "qwen2_vl", load_qwen2_vl_processor)
