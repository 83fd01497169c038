"""The contenders of the benchmarks: each way of getting per-neuron max and mean over content
tokens at both sites (`residual` = decoder layer output, `mlp` = input of `down_proj`).

Why one module: every benchmark script (CPU peers, GPU) and the smoke test must run the
same contenders on the same model and inputs, and compare their reductions. Each contender
loads its own copy of the checkpoint through `from_pretrained` and has one method,
`run(batch)`, that takes a `ModelBatch` (inputs + content mask, as modalscope's
PromptBuilder makes it) and returns {site: {stat: [batch, layer, neuron]}} float32 on the
host (the bare forward returns None).

- `bare`: the decoder stack alone (`model.model`, no lm_head), no recording: the floor.
- `hf`: the plain Hugging Face way: `output_hidden_states=True`, then masked max/mean over
  tokens afterwards (hidden_states[-1] is after the final norm, so the last layer's output
  is kept by a hook); for `mlp`, hooks that keep the whole [batch, tokens, neurons] tensor
  and reduce after the forward (what TransformerLens's `run_with_cache` does).
- `nnsight`: an nnsight 0.8 trace that reduces each site inside the trace and saves only
  the reductions.
- `tl`: the TransformerLens 4 bridge for LLaVA, `run_with_cache` with a names filter, then
  reduced. The bridge forces eager attention (so its hook_pattern fires) and runs the whole
  `LlavaForConditionalGeneration` (lm_head included); both are part of its cost.
- `modalscope`: `Recorder` + `reduce_content`, modalscope's own extraction code path.

All of them run under `torch.inference_mode()` with `use_cache=False`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SITES = ("residual", "mlp")
STATS = ("max", "mean")
ALL = ("bare", "hf", "nnsight", "tl", "modalscope")
PEERS = ("hf", "nnsight", "tl")  # the contenders modalscope's throughput is compared with
LABELS = {
    "bare": "bare forward (floor)",
    "hf": "HF hidden states + hooks",
    "nnsight": "nnsight 0.8.1 trace",
    "tl": "TransformerLens 4.3 bridge",
    "modalscope": "modalscope Recorder",
}
# The package each optional contender needs (pip install 'modalscope[bench]').
NEEDS = {"nnsight": "nnsight", "tl": "transformer_lens"}

Reductions = dict[str, dict[str, torch.Tensor]]  # {site: {stat: [batch, layer, neuron]}}


def available(names: tuple[str, ...] = ALL) -> tuple[list[str], dict[str, str]]:
    """(contenders that can run here, {skipped contender: why})."""
    ok, skipped = [], {}
    for name in names:
        module = NEEDS.get(name)
        if module and importlib.util.find_spec(module) is None:
            skipped[name] = f"{module} not installed (pip install 'modalscope[bench]')"
        else:
            ok.append(name)
    return ok, skipped


def masked_max_mean(activations: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The peers' reduction: max and mean over the tokens where mask [batch, tokens] is true,
    float32 [batch, neurons] (max in the model's dtype, sum accumulated in float32)."""
    keep = mask.to(activations.device).unsqueeze(-1)
    maxes = activations.masked_fill(~keep, float("-inf")).amax(dim=1).float()
    sums = activations.masked_fill(~keep, 0).sum(dim=1, dtype=torch.float32)
    return maxes, sums / keep.sum(dim=1)


def stack(per_layer: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]) -> Reductions:
    """{site: [(max, mean) per layer]} -> {site: {stat: [batch, layer, neuron]}} on the host."""
    out: Reductions = {}
    for site, pairs in per_layer.items():
        out[site] = {
            stat: torch.stack([pair[i] for pair in pairs], dim=1).cpu()
            for i, stat in enumerate(STATS)
        }
    return out


def load(model_dir: Path, dtype: torch.dtype, device: torch.device):
    """A fresh `LoadedModel` (model, processor, adapter) from the checkpoint folder."""
    from modalscope.models.loading import load_model

    name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    return load_model(str(model_dir), dtype=name, device=str(device))


class Contender:
    name = ""

    def __init__(self, loaded):
        self.loaded = loaded
        self.model = loaded.model
        self.layers = loaded.adapter.layers(loaded.model)

    def run(self, batch) -> Reductions | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Bare(Contender):
    name = "bare"

    def run(self, batch) -> None:
        with torch.inference_mode():
            self.model.model(**batch.inputs, use_cache=False)
        return None


class HFBaseline(Contender):
    name = "hf"

    def run(self, batch) -> Reductions:
        kept: list[torch.Tensor] = []  # mlp: whole [batch, tokens, neurons] per layer
        last: list[torch.Tensor] = []  # the last layer's output, before the final norm
        handles = [layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: kept.append(a[0]))
                   for layer in self.layers]
        handles.append(self.layers[-1].register_forward_hook(lambda m, a, o: last.append(o)))
        try:
            with torch.inference_mode():
                out = self.model.model(**batch.inputs, output_hidden_states=True, use_cache=False)
                residual = list(out.hidden_states[1:-1]) + last
                return stack({
                    "residual": [masked_max_mean(h, batch.content) for h in residual],
                    "mlp": [masked_max_mean(x, batch.content) for x in kept],
                })
        finally:
            for handle in handles:
                handle.remove()


class NNsightTrace(Contender):
    name = "nnsight"

    def __init__(self, loaded):
        super().__init__(loaded)
        from nnsight import NNsight

        self.traced = NNsight(self.model.model)

    def run(self, batch) -> Reductions:
        import nnsight

        mask = batch.content
        with torch.inference_mode():
            with self.traced.trace(**batch.inputs, use_cache=False):
                saved = nnsight.save({"residual": [], "mlp": []})
                for layer in self.traced.language_model.layers:
                    # Execution order: the MLP's down_proj input comes before the layer output.
                    saved["mlp"].append(masked_max_mean(layer.mlp.down_proj.input, mask))
                    saved["residual"].append(masked_max_mean(layer.output, mask))
        return stack(saved)


class TLBridge(Contender):
    name = "tl"

    def __init__(self, loaded, model_dir: Path):
        super().__init__(loaded)
        from transformer_lens.model_bridge import TransformerBridge

        self.bridge = TransformerBridge.boot_transformers(
            str(model_dir), hf_model=self.model, tokenizer=loaded.processor.tokenizer,
            device=str(loaded.device),
        )
        n = len(self.layers)
        self.names = {"residual": [f"blocks.{i}.hook_out" for i in range(n)],
                      "mlp": [f"blocks.{i}.mlp.out.hook_in" for i in range(n)]}

    def run(self, batch) -> Reductions:
        inputs = batch.inputs
        wanted = self.names["residual"] + self.names["mlp"]
        with torch.inference_mode():
            _, cache = self.bridge.run_with_cache(
                inputs["input_ids"], attention_mask=inputs["attention_mask"],
                pixel_values=inputs.get("pixel_values"), names_filter=wanted,
            )
            return stack({site: [masked_max_mean(cache[name], batch.content) for name in names]
                          for site, names in self.names.items()})


class Modalscope(Contender):
    name = "modalscope"

    def __init__(self, loaded):
        super().__init__(loaded)
        from modalscope.record.hooks import Recorder

        self.recorder = Recorder(self.model, loaded.adapter, SITES, STATS).__enter__()

    def run(self, batch) -> Reductions:
        from modalscope.record.extract import reduce_content

        return reduce_content(self.loaded, self.recorder, batch)

    def close(self) -> None:
        self.recorder.__exit__(None, None, None)


def make(name: str, model_dir: Path, dtype: torch.dtype = torch.float32,
         device: torch.device | str = "cpu") -> Contender:
    """Contender `name` on its own copy of the checkpoint in `model_dir`."""
    loaded = load(model_dir, dtype, torch.device(device))
    if name == "tl":
        return TLBridge(loaded, model_dir)
    classes = {"bare": Bare, "hf": HFBaseline, "nnsight": NNsightTrace, "modalscope": Modalscope}
    return classes[name](loaded)


def tolerance(name: str, dtype: torch.dtype) -> dict[str, float]:
    """assert_close tolerances against the HF baseline. The TL bridge runs eager attention
    where the others run SDPA, so its values differ in the last bits of float32."""
    if dtype != torch.float32:
        return {"rtol": 2e-2, "atol": 2e-2}
    if name == "tl":
        return {"rtol": 1e-4, "atol": 1e-4}
    return {"rtol": 1e-5, "atol": 1e-5}


def check_equal(results: dict[str, Reductions], dtype: torch.dtype = torch.float32,
                reference: str = "hf") -> None:
    """Every contender's reductions equal the reference's (AssertionError naming the first
    difference otherwise)."""
    ref = results[reference]
    for name, got in results.items():
        if name == reference or got is None:
            continue
        for site in SITES:
            for stat in STATS:
                torch.testing.assert_close(
                    got[site][stat], ref[site][stat], **tolerance(name, dtype),
                    msg=lambda m, n=name, s=site, t=stat: f"{n} vs {reference}, {s}/{t}: {m}",
                )
