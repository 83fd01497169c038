"""Model families (adapters), loading, and the tiny offline checkpoint."""

from modalscope.models.adapter import SITES, ModelAdapter
from modalscope.models.llava import LLAVA

ADAPTERS: dict[str, ModelAdapter] = {"llava": LLAVA}


def adapter_for(model_type: str) -> ModelAdapter:
    """The adapter of a config's `model_type`, or a one-line error naming the supported ones."""
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise ValueError(
            f"model type {model_type!r} is not supported yet; supported: {', '.join(ADAPTERS)}"
        ) from None


__all__ = ["ADAPTERS", "SITES", "ModelAdapter", "adapter_for"]
