"""LLaVA-NeXT (llava-hf `LlavaNextForConditionalGeneration`, e.g. llava-v1.6-mistral-7b-hf).

Any-resolution tiling: each image becomes the whole image at 336 px (576 features) followed by
the tiles of its best-fitting grid, row by row, each row ending in one `image_newline` feature
(a learned vector, the same for every image). The processor expands one `<image>` into all of
these placeholders, so the count varies per image size, and the forward needs `image_sizes`.

Image content: the base and tile features; the row-ending newline positions are not content
(one constant vector per row says nothing about the image, like BOS), neither with
`--tokens all`. They are found from each input's own image size with the processor's own
layout arithmetic (`_get_unpadded_features`).
"""

from __future__ import annotations

from typing import Any

from modalscope.models.adapter import ModelAdapter


def newline_offsets(processor: Any, height: int, width: int) -> list[int]:
    """Offsets, within one image's run of `<image>` tokens, of its row-ending newlines."""
    from transformers.image_processing_utils import select_best_resolution

    image_processor = processor.image_processor
    crop = image_processor.crop_size
    side = crop["height"] if isinstance(crop, dict) else crop.height  # 336
    patches = side // processor.patch_size  # 24
    best_height, best_width = select_best_resolution([height, width], image_processor.image_grid_pinpoints)
    unpadded, rows = processor._get_unpadded_features(height, width, patches, patches,
                                                      best_height // side, best_width // side)
    columns = unpadded // rows
    base = patches * patches + processor.num_additional_image_tokens
    if processor.vision_feature_select_strategy == "default":
        base -= 1
    return [base + (row + 1) * (columns + 1) - 1 for row in range(rows)]


def image_content(processor: Any, enc: dict, is_image: Any) -> Any:
    """The `<image>` positions of each row [batch, tokens] but its images' newline positions."""
    content = is_image.clone()
    for row, (height, width) in enumerate(enc["image_sizes"].tolist()):
        positions = is_image[row].nonzero().flatten()
        content[row, positions[newline_offsets(processor, int(height), int(width))]] = False
    return content


LLAVA_NEXT = ModelAdapter(
    family="LLaVA-NeXT",
    model_types=("llava_next",),
    decoder_layers="model.language_model.layers",
    forward="model",
    final_norm="model.language_model.norm",
    vision_modules=("model.vision_tower", "model.multi_modal_projector"),
    vision_inputs=("pixel_values", "image_sizes"),
    image_content=image_content,
    notes={"image": "the `<image>` positions of the whole image (576) and of its tiles (any resolution), "
                    "without the row-ending newline positions; the count varies with each image's size"},
)
