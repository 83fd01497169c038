"""Model families (adapters), loading, and the tiny offline checkpoint."""

from modalscope.models.adapter import SITES, ModelAdapter, Site
from modalscope.models.causal_lm import CAUSAL_LM
from modalscope.models.idefics3 import IDEFICS3
from modalscope.models.llava import LLAVA
from modalscope.models.llava_next import LLAVA_NEXT
from modalscope.models.qwen2_vl import QWEN2_5_VL, QWEN2_VL
from modalscope.models.qwen3_vl import QWEN3_VL

FAMILIES: tuple[ModelAdapter, ...] = (LLAVA, LLAVA_NEXT, QWEN2_5_VL, QWEN2_VL, QWEN3_VL, IDEFICS3, CAUSAL_LM)
ADAPTERS: dict[str, ModelAdapter] = {t: family for family in FAMILIES for t in family.model_types}


def adapter_for(model_type: str) -> ModelAdapter:
    """The adapter of a config's `model_type`, or a one-line error naming the supported ones."""
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise ValueError(
            f"model type {model_type!r} is not supported yet; supported: {', '.join(ADAPTERS)}"
        ) from None


__all__ = ["ADAPTERS", "FAMILIES", "SITES", "ModelAdapter", "Site", "adapter_for"]
