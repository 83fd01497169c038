"""Hooks that ablate neurons at the recorded sites, a different set in each row of a batch.

Why: ablation must act where the statistics looked. The sites come from the family's table
(models/adapter.py `Site`), exactly as the recording hooks find them (record/hooks.py): `mlp`
is the input of `down_proj`, act(gate)·up, so it is ablated by a forward *pre*-hook that
rewrites that input; `residual` is the decoder layer's output, ablated by a forward hook that
rewrites it (what the next layer receives; for Qwen3-VL after its deepstack addition).

A neuron is ablated at every position of the sequence (template tokens and BOS included): the
question is what the model loses without the neuron, not without it on some tokens. It is set
to a value per row: 0 (zero ablation) or its mean over the study's inputs (mean ablation,
run.py says which inputs), so one forward can hold the target set, its random twins and both
methods side by side, one per row. Rows whose mask is empty pass through unchanged
(`torch.where` copies them bit for bit).

Like the recorder, `Ablation` is a context manager that always removes its hooks, also when the
forward fails, and hooks only the (site, layer) pairs some row ablates.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from modalscope.models import ModelAdapter


class RowAblation:
    """What one (site, layer) does to each row: mask [rows, width] bool, values [rows, width]."""

    def __init__(self, mask: torch.Tensor, values: torch.Tensor) -> None:
        self.mask = mask
        self.values = values
        self._on: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        key = (hidden.device, hidden.dtype)
        if key not in self._on:  # copied once per device and dtype, not per call
            self._on[key] = (self.mask.to(hidden.device)[:, None, :],
                             self.values.to(hidden.device, hidden.dtype)[:, None, :])
        mask, values = self._on[key]
        if mask.shape[0] != hidden.shape[0]:
            raise RuntimeError(f"ablation planned for {mask.shape[0]} rows, the forward has {hidden.shape[0]}")
        return torch.where(mask, values, hidden)


class Ablation(AbstractContextManager["Ablation"]):
    """Ablate per row during every forward inside the block.

    Usage:
        plan = {("mlp", 3): RowAblation(mask, values), ...}
        with Ablation(model, adapter, plan):
            model.model(**inputs)
    """

    def __init__(self, model: nn.Module, adapter: ModelAdapter, plan: dict[tuple[str, int], RowAblation]):
        self.model = model
        self.adapter = adapter
        self.plan = plan
        self._handles: list[RemovableHandle] = []

    def __enter__(self):  # -> Ablation
        layers = self.adapter.layers(self.model)
        try:
            for (site, index), rows in sorted(self.plan.items()):
                module = self.adapter.site_module(layers[index], site)
                if self.adapter.site(site).tensor == "output":
                    self._handles.append(module.register_forward_hook(_output_hook(rows)))
                else:
                    self._handles.append(module.register_forward_pre_hook(_input_hook(rows)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _output_hook(rows: RowAblation):
    def hook(module: nn.Module, args: tuple, output):
        if isinstance(output, tuple):
            return (rows.apply(output[0]), *output[1:])
        if isinstance(output, torch.Tensor):
            return rows.apply(output)
        # a ModelOutput-like object: its first field is the hidden state
        key = next(iter(output.keys()))
        output[key] = rows.apply(output[key])
        return output

    return hook


def _input_hook(rows: RowAblation):
    def hook(module: nn.Module, args: tuple):
        return (rows.apply(args[0]), *args[1:])

    return hook


def build_plan(specs: list[dict[tuple[str, int], torch.Tensor]], values: list[dict[tuple[str, int], torch.Tensor]],
               widths: dict[str, int], repeat: int) -> dict[tuple[str, int], RowAblation]:
    """The plan of a forward whose rows are `repeat` pairs for each spec in turn (spec-major:
    row c * repeat + p is pair p under spec c). specs[c][(site, layer)]: neuron indices;
    values[c][(site, layer)]: [width] what they are set to (only the indexed entries matter)."""
    keys = sorted({key for spec in specs for key in spec})
    plan = {}
    for key in keys:
        width = widths[key[0]]
        mask = torch.zeros((len(specs), width), dtype=torch.bool)
        vals = torch.zeros((len(specs), width), dtype=torch.float32)
        for c, spec in enumerate(specs):
            if key in spec and len(spec[key]):
                index = torch.as_tensor(spec[key], dtype=torch.long)
                mask[c, index] = True
                vals[c] = values[c][key].float()
        plan[key] = RowAblation(mask.repeat_interleave(repeat, dim=0), vals.repeat_interleave(repeat, dim=0))
    return plan
