"""Plain causal language models (LLaMA / Vicuna / SmolLM2, Mistral, Qwen2, Qwen3): the text path only.

Why: the report's central claim, "text-only forgetting", compares a vision-language model
with the language model it was trained from (LLaVA-1.5-7B: `lmsys/vicuna-7b-v1.5`;
LLaVA-NeXT-Mistral: `mistralai/Mistral-7B-Instruct-v0.2`; Qwen2.5-VL-7B:
`Qwen/Qwen2.5-7B-Instruct`; Qwen3-VL-4B: the Qwen3 of its size, `Qwen/Qwen3-4B`; SmolVLM-256M:
`HuggingFaceTB/SmolLM2-135M-Instruct`, a `llama`). Such a model runs the VLM's text-only
inputs, the very same token ids (`--base-model`), so its neurons can be compared index by index. It has no vision
modules: the image conditions are refused, and on its own it records `--conditions text` only.

Its processor is its tokenizer, wrapped (`TextProcessor`) to answer like a multimodal
processor's text side; a tokenizer without a chat template (Vicuna's) renders a user turn
as the caption alone.
"""

from __future__ import annotations

from typing import Any

from modalscope.models.adapter import ModelAdapter


class TextProcessor:
    """A tokenizer seen as a processor: `.tokenizer`, `.chat_template`, `apply_chat_template`."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.chat_template = getattr(tokenizer, "chat_template", None)

    def apply_chat_template(self, messages: list[dict], **kwargs: Any) -> str:
        if self.chat_template:
            return self.tokenizer.apply_chat_template(messages, **kwargs)
        return "".join(item.get("text", "") for m in messages for item in m["content"])

    def __call__(self, *args: Any, images: Any = None, **kwargs: Any) -> Any:
        if images is not None:
            raise ValueError("a language model without vision cannot take images")
        return self.tokenizer(*args, **kwargs)


def load_text_processor(model_id: str, revision: str | None = None, backend: str = "pil", **options: Any
                        ) -> TextProcessor:
    from transformers import AutoTokenizer

    return TextProcessor(AutoTokenizer.from_pretrained(model_id, revision=revision, **options))


CAUSAL_LM = ModelAdapter(
    family="causal LM",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    decoder_layers="model.layers",
    forward="model",
    final_norm="model.norm",
    vision_modules=(),
    vision_inputs=(),
    model_class="AutoModelForCausalLM",
    load_processor=load_text_processor,
    notes={"image": "none: text only (the base of `--base-model`)"},
)
