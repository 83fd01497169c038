"""The recorded sites equal independent references from transformers and by-hand maths."""

from __future__ import annotations

import json

import pytest
import torch

from modalscope.record.extract import reduce_content
from modalscope.record.hooks import Recorder
from modalscope.data.images import load_rgb
from modalscope.record.inputs import PromptBuilder
from reducing import masked_max_mean


@pytest.fixture(scope="module")
def pairs(coco_files):
    captions, images = coco_files
    data = json.loads(captions.read_text())
    files = {im["id"]: images / im["file_name"] for im in data["images"]}
    first = {}
    for ann in data["annotations"]:
        first.setdefault(ann["image_id"], ann["caption"])
    ids = sorted(first)[:5]
    return [first[i] for i in ids], [load_rgb(str(files[i])) for i in ids]


@pytest.fixture(scope="module")
def builder(loaded):
    return PromptBuilder(loaded.processor, loaded.model.config.image_token_id, "content")


@pytest.fixture(scope="module")
def any_builder(any_loaded):
    """The builder of the tiny demo model or of the real LLaVA-1.5 files (see conftest)."""
    return PromptBuilder.for_model(any_loaded, "content")


def _masked_reference(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample loop: select the masked rows, then max and mean."""
    maxes, means = [], []
    for b in range(hidden.shape[0]):
        rows = hidden[b][mask[b]].float()
        maxes.append(rows.max(dim=0).values)
        means.append(rows.mean(dim=0))
    return torch.stack(maxes), torch.stack(means)


@pytest.mark.parametrize("condition", ["text", "image"])
def test_residual_site_equals_output_hidden_states(any_loaded, any_builder, pairs, condition):
    captions, images = pairs
    batch = any_builder.text_batch(captions) if condition == "text" else any_builder.image_batch(images)
    with Recorder(any_loaded.model, any_loaded.adapter, ["residual"]) as rec:
        got = reduce_content(any_loaded, rec, batch)["residual"]
    with torch.inference_mode():
        out = any_loaded.model.model(**batch.inputs, output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states
    n_layers = any_loaded.adapter.num_layers(any_loaded.model)
    norm = any_loaded.model.get_submodule(any_loaded.adapter.final_norm)
    for layer in range(n_layers - 1):
        ref_max, ref_mean = _masked_reference(hidden[layer + 1], batch.content)
        torch.testing.assert_close(got["max"][:, layer], ref_max)
        torch.testing.assert_close(got["mean"][:, layer], ref_mean)
    # The last layer's hook output is before the final norm: norm(it) is hidden_states[-1].
    last_output = {}
    layer = any_loaded.adapter.layers(any_loaded.model)[-1]
    handle = layer.register_forward_hook(lambda m, a, o: last_output.setdefault("h", o))
    try:
        with torch.inference_mode():
            any_loaded.model.model(**batch.inputs, use_cache=False)
    finally:
        handle.remove()
    with torch.inference_mode():
        torch.testing.assert_close(norm(last_output["h"]), hidden[-1])
    ref_max, ref_mean = _masked_reference(last_output["h"], batch.content)
    torch.testing.assert_close(got["max"][:, -1], ref_max)
    torch.testing.assert_close(got["mean"][:, -1], ref_mean)


def test_mlp_site_equals_gated_product_by_hand(any_loaded, any_builder, pairs):
    captions, _ = pairs
    batch = any_builder.text_batch(captions)
    layers = any_loaded.adapter.layers(any_loaded.model)
    mlp_inputs: dict[int, torch.Tensor] = {}
    handles = [
        layer.mlp.register_forward_pre_hook(lambda m, a, i=i: mlp_inputs.setdefault(i, a[0]))
        for i, layer in enumerate(layers)
    ]
    try:
        with Recorder(any_loaded.model, any_loaded.adapter, ["mlp"]) as rec:
            got = reduce_content(any_loaded, rec, batch)["mlp"]
    finally:
        for h in handles:
            h.remove()
    assert got["max"].shape == (len(captions), len(layers), any_loaded.model.config.text_config.intermediate_size)
    with torch.no_grad():
        for i, layer in enumerate(layers):
            x = mlp_inputs[i]
            neurons = torch.nn.functional.silu(x @ layer.mlp.gate_proj.weight.T) * (
                x @ layer.mlp.up_proj.weight.T
            )
            ref_max, ref_mean = _masked_reference(neurons, batch.content)
            torch.testing.assert_close(got["max"][:, i], ref_max)
            torch.testing.assert_close(got["mean"][:, i], ref_mean)


@pytest.mark.parametrize("condition", ["text", "image"])
def test_batched_equals_unbatched(any_loaded, any_builder, pairs, condition):
    captions, images = pairs
    make = any_builder.text_batch if condition == "text" else any_builder.image_batch
    items = captions if condition == "text" else images
    with Recorder(any_loaded.model, any_loaded.adapter, ["residual", "mlp"]) as rec:
        together = reduce_content(any_loaded, rec, make(items))
        alone = [reduce_content(any_loaded, rec, make([item])) for item in items]
    for site in ("residual", "mlp"):
        for stat in ("max", "mean"):
            stacked = torch.cat([a[site][stat] for a in alone])
            torch.testing.assert_close(together[site][stat], stacked, rtol=1e-5, atol=1e-5)


def test_masked_max_mean_equals_per_sample_loop_and_flags_empty_rows():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, 6, generator=gen)
    mask = torch.rand(4, 9, generator=gen) > 0.4
    mask[0] = False  # an input with no content tokens
    mask[1, 3] = True
    maxes, means = masked_max_mean(x, mask)
    for b in range(1, 4):
        torch.testing.assert_close(maxes[b], x[b][mask[b]].max(dim=0).values)
        torch.testing.assert_close(means[b], x[b][mask[b]].mean(dim=0))
    assert torch.isnan(maxes[0]).all() and torch.isnan(means[0]).all()


def test_reductions_accumulate_in_float32_for_half_models():
    x = torch.full((1, 4096, 3), 1.0001, dtype=torch.bfloat16)  # bf16 rounds 1.0001 to 1.0
    x[0, :, 1] = 2.0 ** 10
    mask = torch.ones(1, 4096, dtype=torch.bool)
    maxes, means = masked_max_mean(x, mask)
    assert maxes.dtype == torch.float32 and means.dtype == torch.float32
    # A bf16 running sum of 4096 values of 1024 would lose integers; float32 keeps it exact.
    assert means[0, 1].item() == 1024.0
    assert means[0, 0].item() == pytest.approx(1.0, abs=1e-6)


def test_hooks_are_removed_even_when_the_forward_fails(loaded, builder, pairs):
    layers = loaded.adapter.layers(loaded.model)
    before = [len(l._forward_hooks) + len(l.mlp.down_proj._forward_pre_hooks) for l in layers]
    with pytest.raises(RuntimeError):
        with Recorder(loaded.model, loaded.adapter, ["residual", "mlp"]):
            raise RuntimeError("boom")
    after = [len(l._forward_hooks) + len(l.mlp.down_proj._forward_pre_hooks) for l in layers]
    assert after == before


def test_device_map_auto_records_the_same_values(tiny_model_dir, loaded, builder, pairs):
    """`--device-map auto` goes through accelerate's placement; on one device it must
    change nothing, and the hooks must reduce wherever each layer sits."""
    from modalscope.models.loading import load_model

    placed = load_model(str(tiny_model_dir), dtype="float32", device_map="auto")
    assert placed.device == torch.device("cpu")
    captions, images = pairs
    k = torch.tensor([3] * len(captions))
    with Recorder(placed.model, placed.adapter, ["residual", "mlp"], ["max", "matched_max"]) as rec:
        got = reduce_content(placed, rec, builder.image_batch(images), k)
    with Recorder(loaded.model, loaded.adapter, ["residual", "mlp"], ["max", "matched_max"]) as rec:
        ref = reduce_content(loaded, rec, builder.image_batch(images), k)
    for site in ("residual", "mlp"):
        for stat in ("max", "matched_max"):
            torch.testing.assert_close(got[site][stat], ref[site][stat])


def test_quantization_without_bitsandbytes_is_one_line(tiny_model_dir):
    from modalscope.models.loading import quantization_config

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"needs bitsandbytes: pip install 'modalscope\[quant\]'"):
            quantization_config("8bit")
    with pytest.raises(ValueError, match="choose 8bit or 4bit"):
        quantization_config("2bit")
