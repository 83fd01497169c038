"""Forward hooks that reduce each decoder layer's activations as the model runs.

Why: like baukit's `Trace`, recording is a context manager that always removes its hooks,
so a failed forward never leaves a model instrumented. Each hook reduces over the content
tokens of the current batch on the layer's own device (see `reductions/`) and keeps only
[batch, neurons] per layer; `collect()` moves everything to the host once per batch.

Sites come from the family's table (models/adapter.py `Site`): a site recorded at a module's
output is a forward hook, one recorded at its input a forward *pre*-hook (`mlp`: the input of
`down_proj`, act(gate_proj(x)) * up_proj(x)).

`vision_guard` makes "text-only never runs the vision tower" a run-time fact: while it is
active, a forward that reaches any of the family's vision modules raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from modalscope.models import ModelAdapter
from modalscope.record.reductions import ReductionSpec, reduce_view
from modalscope.record.tokens import StreamTokens, TokenView, shared_span


class Recorder(AbstractContextManager["Recorder"]):
    """Record the spec's reductions per site and layer for every forward inside the block.

    Usage:
        with Recorder(model, adapter, sites, ReductionSpec(("max", "matched_max"))) as rec:
            rec.select({"text": mask}, k)   # stream name -> [batch, tokens] bool (several masks
                                            # reduce one forward several ways); k [batch]: tokens
                                            # per pair, for the reductions that need it
            model.model(**batch.inputs)
            out = rec.collect()             # {stream: {site: {reduction: [batch, layer, neuron]}}}
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: ModelAdapter,
        sites: Sequence[str],
        reductions: ReductionSpec | Sequence[str] = ReductionSpec(),
    ):
        self.model = model
        self.adapter = adapter
        self.sites = tuple(sites)
        self.spec = ReductionSpec.of(reductions)
        self._needs_k = self.spec.needs_k
        self._streams: dict[str, torch.Tensor] = {}
        self._spans: dict[str, tuple[int, int] | None] = {}
        self._k: torch.Tensor | None = None
        self.layers = adapter.layers(model)
        self._masks: dict[torch.device, dict[str, StreamTokens]] = {}
        self._handles: list[RemovableHandle] = []
        self._results: dict[str, list[dict[str, dict[str, torch.Tensor]] | None]] = {}

    def select(self, masks: dict[str, torch.Tensor], k: torch.Tensor | None = None) -> None:
        """The next forward's streams, from host masks (before the batch moves to the device),
        so that a stream whose tokens are one shared run, as image tokens are, reduces a view
        (see tokens.shared_span)."""
        self._streams = dict(masks)
        self._spans = {name: shared_span(mask) for name, mask in self._streams.items()}
        self._k = k
        self._masks.clear()

    def __enter__(self) -> "Recorder":
        for index, layer in enumerate(self.layers):
            for site in self.sites:
                module = self.adapter.site_module(layer, site)
                if self.adapter.site(site).tensor == "output":
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

    def _mask_on(self, device: torch.device) -> dict[str, StreamTokens]:
        """Each stream's mask, k and what they imply (StreamTokens), copied to and derived on
        each device that holds layers once per batch, not per layer."""
        if not self._streams:
            raise RuntimeError("call Recorder.select(masks, k) before running the model")
        if device not in self._masks:
            if self._needs_k and self._k is None:
                raise RuntimeError("Recorder.select needs k (tokens per pair) to record matched_max")
            k = None if self._k is None else self._k.to(device, non_blocking=True)
            # A span stream's mask is cut to its span here, once per batch, not per layer.
            self._masks[device] = {
                n: StreamTokens((m if self._spans[n] is None else m[:, slice(*self._spans[n])]).to(
                    device, non_blocking=True), k, span=self._spans[n] is not None)
                for n, m in self._streams.items()}
        return self._masks[device]

    def _reduce(self, site: str, index: int, activations: torch.Tensor) -> None:
        streams = self._mask_on(activations.device)
        self._results[site][index] = {
            name: reduce_view(TokenView.of(activations, tokens, self._spans[name]), self.spec)
            for name, tokens in streams.items()
        }

    def _output_hook(self, site: str, index: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            self._reduce(site, index, hidden)

        return hook

    def _input_hook(self, site: str, index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            self._reduce(site, index, args[0])

        return hook

    def collect(self) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
        """This batch's reductions as {stream: {site: {reduction: [batch, layer, neuron]}}} on the
        host: everything is packed into one tensor and copied once per batch (one host sync),
        then split; then reset."""
        keys, parts = [], []
        for site, per_layer in self._results.items():
            if any(r is None for r in per_layer):
                raise RuntimeError(f"site {site!r}: some layers did not run in this forward")
            home = per_layer[0][next(iter(self._streams))][self.spec.names[0]].device  # type: ignore[index]
            for name in self._streams:
                for reduction in self.spec.names:
                    stacked = torch.stack([r[name][reduction].to(home) for r in per_layer], dim=1)  # type: ignore[index]
                    keys.append((name, site, reduction, stacked.shape))
                    parts.append(stacked.flatten(1))  # [batch, layer * neuron]
        host = torch.cat(parts, dim=1).cpu().split([p.shape[1] for p in parts], dim=1)
        out: dict[str, dict[str, dict[str, torch.Tensor]]] = {n: {} for n in self._streams}
        for (name, site, reduction, shape), values in zip(keys, host):
            out[name].setdefault(site, {})[reduction] = values.reshape(shape)
        self._reset()
        return out


@contextmanager
def vision_guard(model: nn.Module, adapter: ModelAdapter) -> Iterator[None]:
    """Inside the block, a forward that reaches a vision module raises instead of running it:
    the text-only condition must see token ids only."""

    def refuse(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            raise RuntimeError(f"bug: a text-only input reached {name}, which it must never run")

        return hook

    handles = [model.get_submodule(name).register_forward_pre_hook(refuse(name)) for name in adapter.vision_modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
