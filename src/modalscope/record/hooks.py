"""Forward hooks that reduce each decoder layer's activations as the model runs.

Why: like baukit's `Trace`, recording is a context manager that always removes its hooks,
so a failed forward never leaves a model instrumented. Each hook reduces over the content
tokens of the current batch on the layer's own device (see `reduce.py`) and keeps only
[batch, neurons] per layer; `collect()` moves everything to the host once per batch.

Sites: `residual` hooks the decoder layer's output; `mlp` is a forward *pre*-hook on
`down_proj`, whose input is act(gate_proj(x)) * up_proj(x).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from modalscope.models import ModelAdapter
from modalscope.record.reduce import masked_max_mean


class Recorder(AbstractContextManager["Recorder"]):
    """Record masked max/mean per site and layer for every forward inside the block.

    Usage:
        with Recorder(model, adapter, sites) as rec:
            rec.content = batch.content       # [batch, tokens] bool
            model.model(**batch.inputs)
            out = rec.collect()               # {site: {"max"|"mean": [batch, layer, neuron]}}
    """

    def __init__(self, model: nn.Module, adapter: ModelAdapter, sites: Sequence[str]):
        self.model = model
        self.adapter = adapter
        self.sites = tuple(sites)
        self._content: torch.Tensor | None = None
        self.layers = adapter.layers(model)
        self._handles: list[RemovableHandle] = []
        self._masks: dict[torch.device, torch.Tensor] = {}
        self._results: dict[str, list[tuple[torch.Tensor, torch.Tensor] | None]] = {}

    @property
    def content(self) -> torch.Tensor | None:
        return self._content

    @content.setter
    def content(self, mask: torch.Tensor) -> None:
        self._content = mask
        self._masks.clear()

    def __enter__(self) -> "Recorder":
        for index, layer in enumerate(self.layers):
            for site in self.sites:
                module = self.adapter.site_module(layer, site)
                if site == "residual":
                    handle = module.register_forward_hook(self._output_hook(site, index))
                else:
                    handle = module.register_forward_pre_hook(self._input_hook(site, index))
                self._handles.append(handle)
        self._reset()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _reset(self) -> None:
        self._masks.clear()
        self._results = {site: [None] * len(self.layers) for site in self.sites}

    def _mask_on(self, device: torch.device) -> torch.Tensor:
        """The content mask, copied once per batch to each device that holds layers."""
        if self._content is None:
            raise RuntimeError("set Recorder.content before running the model")
        if device not in self._masks:
            self._masks[device] = self._content.to(device, non_blocking=True)
        return self._masks[device]

    def _record(self, site: str, index: int, activations: torch.Tensor) -> None:
        mask = self._mask_on(activations.device)
        self._results[site][index] = masked_max_mean(activations, mask)

    def _output_hook(self, site: str, index: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            self._record(site, index, hidden)

        return hook

    def _input_hook(self, site: str, index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            self._record(site, index, args[0])

        return hook

    def collect(self) -> dict[str, dict[str, torch.Tensor]]:
        """Stack this batch's reductions to [batch, layer, neuron] on the host and reset."""
        out: dict[str, dict[str, torch.Tensor]] = {}
        for site, per_layer in self._results.items():
            if any(r is None for r in per_layer):
                raise RuntimeError(f"site {site!r}: some layers did not run in this forward")
            home = per_layer[0][0].device  # type: ignore[index]
            # One host copy per site and statistic, not one per layer.
            maxes = torch.stack([r[0].to(home) for r in per_layer], dim=1)  # type: ignore[index]
            means = torch.stack([r[1].to(home) for r in per_layer], dim=1)  # type: ignore[index]
            out[site] = {"max": maxes.cpu(), "mean": means.cpu()}
        self._reset()
        return out
