"""What modalscope needs to know about a model family, as a small table of facts.

Why: recording, masking and the vision bypass are the same for every LLaVA-like model; only
module paths, config field names, the processor's outputs and the chat format differ.
Following pyvene's per-model mapping tables and TransformerLens's architecture adapters, a
family is declared once, in one file of `models/` (see `llava.py`), and the rest of the code
reads these facts: nothing outside `models/` names a family.

A family says
- where the decoder layers are, and what module runs the decoder stack (the forward entry:
  the inner multimodal model, without the vocabulary head, which recording never needs);
- its sites as a table (`Site`): which module of each decoder layer, its input or its output,
  and the config field of its width;
- the vision modules, which a text-only input must never reach (guarded at run time);
- what the forward needs from the processor beside token ids (`vision_inputs`, passed
  through untouched; `token_inputs`, per-token arrays rebuilt with the ids);
- the image placeholder's config field (an image's content positions are read from each
  input's own ids), and the tokens that are never content (BOS is always excluded);
- how a user turn is written for its chat template, and the minimal image-only prompt;
- anything the loaded model needs once, in place, before it is recorded (`prepare`: Qwen3-VL
  moves its deepstack additions into the decoder layers, so that a layer's output is what the
  next layer receives).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # keep `import modalscope` light: analysis processes never need torch
    from torch import nn

SITES = ("residual", "mlp")


@dataclass(frozen=True)
class Site:
    """One recorded site of every decoder layer."""

    name: str  # as in tables and the CLI: "residual", "mlp"
    module: str  # dotted path relative to a decoder layer; "" is the layer itself
    tensor: Literal["input", "output"]  # the module's first input, or its output (first of a tuple)
    width: str  # field of the text config that holds the site's width


# The decoder layers of LLaMA, Mistral and Qwen2 alike: the residual stream after each layer,
# and the MLP neurons act(gate_proj(x)) * up_proj(x), the input of down_proj.
DECODER_SITES = (
    Site("residual", "", "output", "hidden_size"),
    Site("mlp", "mlp.down_proj", "input", "intermediate_size"),
)


def first_line(err: BaseException) -> str:
    """An exception's message as one line (its first, without a closing period), for the
    one-line errors and skip reasons that quote a library's message."""
    text = str(err).strip()
    return text.splitlines()[0].rstrip(".:") if text else type(err).__name__


def user_turn(text: str | None, image: bool) -> list[dict[str, Any]]:
    """One user turn in the transformers chat format: an image item first, then the text."""
    content: list[dict[str, str]] = [{"type": "image"}] if image else []
    if text is not None:
        content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


@dataclass(frozen=True)
class ModelAdapter:
    """A model family's facts (see the module docstring); one instance per family file."""

    family: str  # a readable name, e.g. "LLaVA-1.5"
    model_types: tuple[str, ...]  # config.model_type values it serves
    decoder_layers: str  # dotted path from the top model to the ModuleList of decoder layers
    forward: str  # dotted path of the module called with a batch (decoder stack and vision)
    final_norm: str  # norm applied after the last decoder layer
    vision_modules: tuple[str, ...]  # what a text-only input must never run
    vision_inputs: tuple[str, ...]  # processor outputs the forward needs with images
    token_inputs: tuple[str, ...] = ()  # per-token processor outputs the forward needs
    image_token: str = "image_token_id"  # config field of the image placeholder token id
    never_content: tuple[str, ...] = ()  # token strings that are never content (BOS always is not)
    sites: tuple[Site, ...] = DECODER_SITES
    text_config: str = "text_config"  # config field of the language model's config
    image_only_text: str | None = ""  # the text item of the minimal image-only turn (None: none)
    model_class: str = "AutoModelForImageTextToText"  # the transformers Auto class that loads it
    load_processor: Callable[..., Any] | None = None  # when AutoProcessor cannot build it
    shrink: Callable[[Any, Any], None] | None = None  # (config, ShrunkSizes): a laptop-sized copy
    # (processor, processor outputs, is_image [batch, tokens]) -> the image content positions,
    # when not every image placeholder is content (LLaVA-NeXT's row-ending newlines)
    image_content: Callable[[Any, Any, Any], Any] | None = None
    prepare: Callable[[Any], None] | None = None  # (model) -> None, once after loading, in place
    notes: dict[str, str] = field(default_factory=dict)  # what "content tokens" means, for docs

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.decoder_layers)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.layers(model))

    def forward_module(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.forward)

    def site(self, name: str) -> Site:
        for site in self.sites:
            if site.name == name:
                return site
        raise ValueError(f"site {name!r}: {self.family} has {', '.join(s.name for s in self.sites)}")

    def width(self, model: nn.Module, site: str) -> int:
        """Number of neurons recorded at `site` (hidden size or MLP intermediate size)."""
        text_config = getattr(model.config, self.text_config, model.config)
        return int(getattr(text_config, self.site(site).width))

    def site_module(self, layer: nn.Module, site: str) -> nn.Module:
        path = self.site(site).module
        return layer.get_submodule(path) if path else layer

    @property
    def has_vision(self) -> bool:
        return bool(self.vision_inputs)

    def image_token_id(self, config: Any) -> int | None:
        """The image placeholder's id; None for a family without vision."""
        value = getattr(config, self.image_token, None) if self.has_vision else None
        return None if value is None else int(value)

    def conversation(self, text: str | None, image: bool) -> list[dict[str, Any]]:
        """The messages of one user turn: caption alone, image alone (the minimal prompt,
        `image_only_text`), or both."""
        return user_turn(self.image_only_text if image and text is None else text, image)


# The facts a PromptBuilder made by hand (without a loaded model) assumes: a LLaVA-style
# processor (pixel_values), the chat format above, BOS the only never-content token.
GENERIC = ModelAdapter(family="generic", model_types=(), decoder_layers="", forward="", final_norm="",
                       vision_modules=(), vision_inputs=("pixel_values",))
