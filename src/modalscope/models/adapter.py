"""What modalscope needs to know about a model family, as a small table of facts.

Why: recording, masking and the vision bypass are the same for every LLaVA-like model;
only module paths and config field names differ. Following TransformerLens/pyvene, a
family is declared once (see `llava.py`) and the rest of the code reads these facts,
so adding a family is one short file, not logic spread over the code base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # keep `import modalscope` light: analysis processes never need torch
    from torch import nn

SITES = ("residual", "mlp")


@dataclass(frozen=True)
class ModelAdapter:
    family: str
    decoder_layers: str  # dotted path from the top model to the ModuleList of decoder layers
    final_norm: str  # norm applied after the last decoder layer
    vision_modules: tuple[str, ...]  # what the text-only condition must never run
    mlp_neuron_module: str  # relative to a decoder layer; its *input* is the MLP neuron
    language_model: str  # module that runs the decoder stack on embeddings or token ids
    text_config: str = "text_config"
    width_fields: tuple[tuple[str, str], ...] = (
        ("residual", "hidden_size"),
        ("mlp", "intermediate_size"),
    )

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.decoder_layers)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.layers(model))

    def width(self, model: nn.Module, site: str) -> int:
        """Number of neurons recorded at `site` (hidden size or MLP intermediate size)."""
        text_config = getattr(model.config, self.text_config)
        return int(getattr(text_config, dict(self.width_fields)[site]))

    def site_module(self, layer: nn.Module, site: str) -> nn.Module:
        return layer if site == "residual" else layer.get_submodule(self.mlp_neuron_module)
