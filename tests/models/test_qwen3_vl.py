"""Qwen3-VL on its real files (Qwen/Qwen3-VL-4B-Instruct: tokenizer, template, image processor,
ids), shrunk to 2 decoder layers with random weights; deepstack feeds layer 0 from vision layer 0.

The references are independent of the recording: the processor's own outputs, transformers'
own hidden states from an unprepared copy of the model (loaded by transformers itself), and the
deepstack features computed by calling the vision tower by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modalscope.record.extract import reduce_content, reduce_forward
from modalscope.record.hooks import Recorder, vision_guard
from modalscope.record.inputs import PromptBuilder
from real_models import real_files

IMAGE_PAD = 151655
SIZES = [(300, 200), (64, 64), (200, 500)]  # (width, height)
CAPTIONS = ["A dog runs on the beach.", "TWO DOGS PLAYING", "A sign reading <|im_start|>system in red."]
SITES = ["residual", "mlp"]


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    from transformers import AutoModelForImageTextToText

    from modalscope.models.loading import load_model
    from modalscope.models.shrunk import build_shrunk

    folder = build_shrunk(real_files("qwen3-vl"), tmp_path_factory.mktemp("qwen3") / "qwen3-vl-shrunk")
    loaded = load_model(str(folder), device="cpu")
    plain = AutoModelForImageTextToText.from_pretrained(folder).eval()  # transformers' own, unprepared
    return loaded, plain, PromptBuilder.for_model(loaded, "content")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


@pytest.fixture(scope="module")
def batches(qwen3, images):
    builder = qwen3[2]
    return {"text": (builder.text_batch(CAPTIONS), None), "image": (builder.image_batch(images), None),
            "image_text": builder.image_text_batch(images, CAPTIONS)}


def _render(loaded, caption, image):
    content = ([{"type": "image"}] if image else []) + ([{"type": "text", "text": caption}] if caption else [])
    return loaded.processor.apply_chat_template([{"role": "user", "content": content}],
                                                add_generation_prompt=True, tokenize=False)


def _transformers_own(model, inputs):
    """transformers' hidden states (layer outputs, before any deepstack addition), what each
    decoder layer and the final norm receive, the MLP neurons (down_proj's input), the logits."""
    text = model.model.language_model
    received, neurons = {}, {}
    handles = [layer.register_forward_pre_hook(lambda m, a, i=i: received.setdefault(i, a[0]))
               for i, layer in enumerate(text.layers)]
    handles.append(text.norm.register_forward_pre_hook(lambda m, a: received.setdefault(len(text.layers), a[0])))
    handles += [layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: neurons.setdefault(i, a[0]))
                for i, layer in enumerate(text.layers)]
    try:
        with torch.inference_mode():
            out = model(**inputs, output_hidden_states=True, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return out.hidden_states, [received[i + 1] for i in range(len(text.layers))], \
        [neurons[i] for i in range(len(text.layers))], out.logits


def _check(got, per_layer, mask):
    for layer, values in enumerate(per_layer):
        for row in range(mask.shape[0]):
            rows = values[row][mask[row]]
            torch.testing.assert_close(got["max"][row, layer], rows.max(0).values)
            torch.testing.assert_close(got["mean"][row, layer], rows.mean(0))


def test_shrunk_checkpoint_keeps_the_real_files_with_deepstack_into_layer_0(qwen3):
    loaded, _, builder = qwen3
    config = loaded.model.config
    assert config.model_type == "qwen3_vl" and loaded.adapter.family == "Qwen3-VL"
    assert (config.text_config.num_hidden_layers, config.text_config.hidden_size) == (2, 64)
    assert config.vision_config.deepstack_visual_indexes == [0] and config.vision_config.out_hidden_size == 64
    assert config.text_config.rope_parameters["mrope_section"] == [3, 2, 3]  # sums to head_dim / 2 = 8
    assert type(loaded.processor).__name__ == "Qwen3VLImageOnlyProcessor"
    assert builder.image_prompt == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
                                    "<|im_start|>assistant\n")  # no default system turn, unlike Qwen2.5-VL
    assert builder.text_prefix == "<|im_start|>user\n" and builder.never_content.tolist() == [151652, 151653]


def test_ids_pixels_and_image_content_are_the_processors_own(qwen3, images, batches):
    loaded, _, builder = qwen3
    tokenizer = loaded.processor.tokenizer
    (text, _), (image, _), (joint, streams) = batches["text"], batches["image"], batches["image_text"]
    assert image.n_content.tolist() == [70, 64, 96]  # 300 x 200: grid 1 x 14 x 20, 2 x 2 merged
    pixels = []
    for row, (im, caption) in enumerate(zip(images, CAPTIONS)):
        alone = loaded.processor(text=[_render(loaded, None, True)], images=[im], return_tensors="pt")
        real = image.inputs["attention_mask"][row].bool()
        assert image.inputs["input_ids"][row][real].tolist() == alone["input_ids"][0].tolist()
        assert image.inputs["image_grid_thw"][row].tolist() == alone["image_grid_thw"][0].tolist()
        pads = alone["input_ids"][0] == IMAGE_PAD
        assert image.content[row, : len(pads)].tolist() == pads.tolist() and not image.content[row, len(pads):].any()
        pixels.append(alone["pixel_values"])
        whole = loaded.processor(text=[_render(loaded, caption, True)], images=[im], return_tensors="pt")
        real = joint.inputs["attention_mask"][row].bool()
        if "<|" not in caption:  # the processor would read a caption's control strings as control
            assert joint.inputs["input_ids"][row][real].tolist() == whole["input_ids"][0].tolist()
            assert joint.inputs["mm_token_type_ids"][row][real].tolist() == whole["mm_token_type_ids"][0].tolist()
            assert text.inputs["input_ids"][row][text.inputs["attention_mask"][row].bool()].tolist() == \
                tokenizer(_render(loaded, caption, False))["input_ids"]
        assert streams["image_text_image"][row].sum() == pads.sum()
        for ids, mask in ((text.inputs["input_ids"][row], text.content[row]),
                          (joint.inputs["input_ids"][row], streams["image_text_caption"][row])):
            assert tokenizer.decode(ids[mask].tolist(), skip_special_tokens=False) == caption
    torch.testing.assert_close(image.inputs["pixel_values"], torch.cat(pixels), rtol=0, atol=0)
    assert torch.equal(image.inputs["mm_token_type_ids"].bool(), image.inputs["input_ids"] == IMAGE_PAD)


def _deepstack_by_hand(plain, inputs):
    """Layer 0's deepstack features, from the vision tower called by hand, at the image positions."""
    with torch.inference_mode():
        features = plain.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
    added = torch.zeros(*inputs["input_ids"].shape, plain.config.text_config.hidden_size)
    added[inputs["input_ids"] == IMAGE_PAD] = torch.cat(features.deepstack_features[0])
    return added


@pytest.mark.parametrize("condition", ["text", "image", "image_text"])
def test_residual_is_what_the_next_layer_receives_and_equals_hidden_states_plus_deepstack(qwen3, batches, condition):
    """`residual` at layer 0 = transformers' hidden_states[1] plus layer 0's deepstack features at
    the image positions (by hand) = what layer 1 receives; at layer 1 = the layer's output; mlp =
    down_proj's input. A text input gets nothing added."""
    loaded, plain, builder = qwen3
    batch, masks = batches[condition]
    masks = masks or {"content": batch.content}
    with Recorder(loaded.model, loaded.adapter, SITES) as rec:
        got = reduce_forward(loaded, rec, batch, masks)
    hidden, received, neurons, logits = _transformers_own(plain, batch.inputs)
    added = _deepstack_by_hand(plain, batch.inputs) if condition != "text" else torch.zeros_like(hidden[1])
    by_hand = hidden[1] + added
    torch.testing.assert_close(by_hand, received[0], rtol=1e-6, atol=1e-6)  # what layer 1 receives
    if condition != "text":
        assert added.abs().sum() > 0 and not torch.allclose(by_hand, hidden[1])
    for name, mask in masks.items():
        _check(got[name]["residual"], [by_hand, received[1]], mask)
        _check(got[name]["mlp"], neurons, mask)
    with torch.inference_mode():  # the prepared model computes what transformers' own does
        ours = loaded.model(**batch.inputs, output_hidden_states=True, use_cache=False)
    torch.testing.assert_close(ours.logits, logits, rtol=0, atol=0)
    torch.testing.assert_close(ours.hidden_states[1], by_hand, rtol=1e-6, atol=1e-6)


def test_text_only_never_runs_nor_receives_deepstack(qwen3, images, batches):
    """Text: the vision tower (deepstack mergers included) never runs, and layer 1 receives layer
    0's output unchanged, also right after an image forward; images: both differ."""
    loaded, _, builder = qwen3
    visual = loaded.model.get_submodule("model.visual")
    layers = loaded.model.get_submodule("model.language_model").layers
    calls, raw, received = {"visual": 0, "deepstack": 0}, [], []
    handles = [visual.register_forward_hook(lambda *a: calls.__setitem__("visual", calls["visual"] + 1)),
               visual.deepstack_merger_list[0].register_forward_hook(
                   lambda *a: calls.__setitem__("deepstack", calls["deepstack"] + 1)),
               # prepended: layer 0's own output, before the hook that adds the deepstack features
               layers[0].register_forward_hook(lambda m, a, o: raw.append(o.clone()), prepend=True),
               layers[1].register_forward_pre_hook(lambda m, a: received.append(a[0].clone()))]
    text = batches["text"][0]
    try:
        with Recorder(loaded.model, loaded.adapter, SITES) as rec:
            first = reduce_content(loaded, rec, text)
            assert calls == {"visual": 0, "deepstack": 0}
            reduce_content(loaded, rec, builder.image_batch(images[:1]))
            assert calls == {"visual": 1, "deepstack": 1}  # the same hooks fire for images
            again = reduce_content(loaded, rec, text)  # right after an image forward: nothing left over
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"visual": 1, "deepstack": 1}
    for text_forward in (0, 2):
        torch.testing.assert_close(received[text_forward], raw[text_forward], rtol=0, atol=0)
    assert not torch.equal(received[1], raw[1])
    for site in SITES:
        for stat in ("max", "mean"):
            torch.testing.assert_close(again[site][stat], first[site][stat], rtol=0, atol=0)
    with vision_guard(loaded.model, loaded.adapter), torch.inference_mode():
        loaded.adapter.forward_module(loaded.model)(**text.inputs, use_cache=False)
        with pytest.raises(RuntimeError, match="text-only input reached model.visual"):
            loaded.adapter.forward_module(loaded.model)(**builder.image_batch(images[:1]).inputs, use_cache=False)


def test_a_qwen3_base_reads_the_text_input_as_the_vlm_does(qwen3, batches, tmp_path):
    """`--base-model` of Qwen3-VL is a Qwen3 (`qwen3`, a plain causal LM): one holding the VLM's
    own decoder weights, with its tokenizer, is accepted and records the VLM's text values."""
    import shutil

    from transformers import Qwen3Config, Qwen3ForCausalLM

    from modalscope.models.loading import load_model
    from modalscope.record.extract import for_base
    from modalscope.record.inputs import BaseTokens

    loaded, _, builder = qwen3
    text_config = loaded.model.config.text_config.to_dict()
    rope = text_config.pop("rope_parameters")
    keep = {k: v for k, v in text_config.items() if k not in ("model_type", "architectures")}
    base = Qwen3ForCausalLM(Qwen3Config(**keep, rope_theta=rope["rope_theta"]))
    base.model.load_state_dict(loaded.model.model.language_model.state_dict())
    base.save_pretrained(tmp_path / "qwen3")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(real_files("qwen3-vl") / name, tmp_path / "qwen3" / name)
    base = load_model(str(tmp_path / "qwen3"), device="cpu")
    assert base.adapter.family == "causal LM" and base.model.config.model_type == "qwen3"
    assert BaseTokens(builder, base.processor.tokenizer).mismatch(CAPTIONS) is None
    text = batches["text"][0]
    with Recorder(loaded.model, loaded.adapter, SITES) as rec:
        ours = reduce_content(loaded, rec, text)
    with Recorder(base.model, base.adapter, SITES) as rec:
        theirs = reduce_content(base, rec, for_base(text, base))
    for site in SITES:
        for stat in ("max", "mean"):
            torch.testing.assert_close(theirs[site][stat], ours[site][stat], rtol=1e-5, atol=1e-5)
