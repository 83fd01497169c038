"""SmolVLM and Idefics3 (`Idefics3ForConditionalGeneration`: HuggingFaceTB/SmolVLM-256M-Instruct,
-500M-Instruct, SmolVLM-Instruct, HuggingFaceM4/Idefics3-8B-Llama3).

A SigLIP vision tower (`model.vision_model`), a connector (`model.connector`: pixel shuffle by
`scale_factor`, then a linear map) and a LLaMA decoder (`model.text_model`: SmolLM2 in SmolVLM).

Content tokens:
- image: the `<image>` positions, one per feature. The processor resizes each image (longest
  edge 4 x 512 px for SmolVLM-256M), cuts it into 512 px tiles, row by row, and adds the whole
  image at 512 px (the global image); each of these gives 64 features after pixel shuffle
  (`image_seq_len`). 300 x 200 gives 3 x 4 tiles + 1 = 13 blocks, 832 `<image>` positions.
- The processor frames every block: `<fake_token_around_image><row_r_col_c>` before a tile,
  `<fake_token_around_image><global-img>` before the global image, one `<fake_token_around_image>`
  after the last, and newlines between tile rows. The framing tokens are never content, neither
  with `--tokens all` (one constant marker per block, saying nothing about the image, like
  BOS); the newlines are template text (seen with `--tokens all` only).
- BOS is `<|im_start|>`, which the template writes once, first: never content.
- Text prompt: `<|im_start|>User: {caption}<end_of_utterance>\\nAssistant:`; image prompt:
  `<|im_start|>User:<image><end_of_utterance>\\nAssistant:` (the template writes `User:` without
  the space when the turn begins with an image); joint: `...User:<image>{caption}<end_of_utterance>...`.

The base language model (`--base-model`) is SmolLM2 (`HuggingFaceTB/SmolLM2-135M-Instruct` for
SmolVLM-256M, -360M-Instruct for -500M): its vocabulary is the VLM's but the 128 tokens the VLM
added (ids 49152-49279: the image markers, `<end_of_utterance>`, reserved tokens). The text
prompt holds one of them, `<end_of_utterance>`, after the caption: the base reads the prompt up
to it (record/inputs.py `BaseTokens`), which changes no content token (attention is causal).

The processor loads as is (`Idefics3Processor`, PIL image processor; no torchvision needed).
SmolVLM2 (`model_type` `smolvlm`) is not served yet: its processor needs `num2words` and builds
a video processor (torchvision).
"""

from __future__ import annotations

from modalscope.models.adapter import ModelAdapter

# The processor's framing tokens (SmolVLM-256M: ids 49152-49189): never content.
FRAMING = ("<fake_token_around_image>", "<global-img>",
           *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)))

IDEFICS3 = ModelAdapter(
    family="SmolVLM / Idefics3",
    model_types=("idefics3",),
    decoder_layers="model.text_model.layers",
    forward="model",
    final_norm="model.text_model.norm",
    vision_modules=("model.vision_model", "model.connector"),
    vision_inputs=("pixel_values", "pixel_attention_mask"),
    never_content=FRAMING,
    notes={"image": "the `<image>` positions: 64 per 512 px tile and 64 for the global image (832 for 300 x 200); "
                    "the `<fake_token_around_image>`, `<row_r_col_c>` and `<global-img>` framing tokens are never "
                    "content"},
)
