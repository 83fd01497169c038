"""Build the embedded default: a tiny LLaVA-1.5 in Hugging Face format, offline.

Why: the tool must run end to end on a machine with no model hub, and the tests must
exercise the exact code path a real study uses (`from_pretrained` on a folder). So we
assemble a real `LlavaForConditionalGeneration` from the real config classes (a small
`LlamaConfig` text model, a small `CLIPVisionConfig` tower with LLaVA-1.5's 336 px /
patch 14 geometry, hence 576 image tokens), random weights from a fixed seed, a
byte-level BPE tokenizer trained on the demo captions with the `tokenizers` library,
and the llava-hf chat template. Nothing here is mocked; only the sizes are small.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers.utils import logging as hf_logging
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from modalscope.models.checkpoint_folders import COMPLETE_MARKER, write_checkpoint

# The chat template shipped with llava-hf/llava-1.5-7b-hf (renders
# "USER: <image>\n{text} ASSISTANT:"), so the tiny model formats prompts exactly like
# the real one.
LLAVA15_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
IMAGE_SIZE = 336
PATCH_SIZE = 14


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE with Llama's BOS convention and an `<image>` special token."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus) + ["USER: ASSISTANT:"], trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    # Byte-level offsets first (trimmed of the leading space), then prepend BOS like Llama.
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(
                single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",
        extra_special_tokens={"image_token": "<image>"},
    )


@dataclass(frozen=True)
class LlavaSizes:
    """Widths and depths of a from-config LLaVA; the image geometry is always LLaVA-1.5's."""

    hidden_size: int = 64
    intermediate_size: int = 176
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    # Wider than Llama's 0.02 so random activations of the tiny model are not all near zero.
    initializer_range: float = 0.2


TINY = LlavaSizes()
# The CPU benchmark model (benchmarks/peers.py): ~100 M parameters, 8 Llama layers of
# 1,024 / 2,752 neurons, a small CLIP tower; the same 576 image tokens.
MID = LlavaSizes(
    hidden_size=1024, intermediate_size=2752, num_hidden_layers=8, num_attention_heads=16,
    num_key_value_heads=16, vision_hidden_size=256, vision_intermediate_size=1024,
    vision_layers=2, vision_heads=4, initializer_range=0.02,
)


def tiny_llava_config(tokenizer: PreTrainedTokenizerFast, sizes: LlavaSizes = TINY) -> LlavaConfig:
    """LLaVA-1.5 geometry (576 image tokens) with a small Llama and a small CLIP tower."""
    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=sizes.vision_hidden_size,
        intermediate_size=sizes.vision_intermediate_size,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
        projection_dim=sizes.vision_hidden_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_hidden_layers,
        num_attention_heads=sizes.num_attention_heads,
        num_key_value_heads=sizes.num_key_value_heads,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=sizes.initializer_range,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.image_token_id,
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_llava(
    out_dir: Path, corpus: Iterable[str], seed: int = 0, sizes: LlavaSizes = TINY
) -> Path:
    """Write the checkpoint once to `out_dir` (atomic: built aside, then renamed).

    `sizes=MID` builds the benchmark model instead of the tiny one (same code path)."""
    out_dir = Path(out_dir)
    if (out_dir / COMPLETE_MARKER).exists():
        return out_dir
    hf_logging.disable_progress_bar()
    tokenizer = train_tokenizer(corpus)
    config = tiny_llava_config(tokenizer, sizes)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA15_CHAT_TEMPLATE,
    )

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return write_checkpoint(out_dir, write)
