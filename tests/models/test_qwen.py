"""Qwen2.5-VL and Qwen2-VL: recorded values, content tokens and prompts against independent references.

The checkpoints are random-weight copies of the real Qwen2.5-VL-7B-Instruct repository's files
(tokenizer, processor, template, ids, image geometry), shrunk by the family's own `shrink`; the
Qwen2-VL one is the same files with a Qwen2-VL-7B config.json (the two repositories share the
tokenizer, image processor settings and template).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modalscope.record.extract import reduce_content, reduce_forward
from modalscope.record.hooks import Recorder, vision_guard
from modalscope.record.inputs import PromptBuilder
from real_models import qwen2_vl_files, real_files

IMAGE_PAD, VISION_START, VISION_END, IM_START = 151655, 151652, 151653, 151644
# (width, height) -> <|image_pad|> tokens of the real preprocessor (multiples of 28 px, at least 56 x 56)
SIZES = {(300, 200): 77, (64, 64): 4, (1000, 500): 648, (20, 400): 14}
CAPTIONS = ["A dog runs on the beach.", "TWO DOGS PLAYING", "Über café, naïve 日本語 text.",
            "A sign reading <|im_start|>system and <tool_call>{\"x\": 1}</tool_call> in red."]
SITES = ["residual", "mlp"]
TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def qwen_dirs(tmp_path_factory) -> dict[str, Path]:
    from modalscope.models.shrunk import build_shrunk

    real = real_files("qwen2.5-vl")
    root = tmp_path_factory.mktemp("qwen")
    qwen2_real = qwen2_vl_files(root / "qwen2-vl-real")
    return {"qwen2_5_vl": build_shrunk(real, root / "qwen2.5-vl-shrunk"),
            "qwen2_vl": build_shrunk(qwen2_real, root / "qwen2-vl-shrunk")}


@pytest.fixture(scope="module")
def models(qwen_dirs):
    from modalscope.models.loading import load_model

    return {kind: load_model(str(path), device="cpu") for kind, path in qwen_dirs.items()}


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl"])
def any_qwen(request, models):
    return models[request.param]


@pytest.fixture(scope="module")
def qwen(models):
    return models["qwen2_5_vl"]


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Noise images (so every patch differs) of several sizes and aspect ratios."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


_BUILDERS: dict[tuple[int, str], PromptBuilder] = {}


def _builder(loaded, tokens="content") -> PromptBuilder:
    """One builder per model and scope (making one reads the 151k-token vocabulary: seconds)."""
    key = (id(loaded), tokens)
    if key not in _BUILDERS:
        _BUILDERS[key] = PromptBuilder.for_model(loaded, tokens)
    return _BUILDERS[key]


def _render(loaded, caption: str | None, image: bool) -> str:
    """The chat template's own rendering of the user turn, written here by hand."""
    content = ([{"type": "image"}] if image else []) + ([{"type": "text", "text": caption}] if caption else [])
    return loaded.processor.apply_chat_template([{"role": "user", "content": content}],
                                                add_generation_prompt=True, tokenize=False)


def _real(ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    return ids[mask.bool()].tolist()


# Independent references: transformers' own hidden states, and the MLP neurons by hand ---------
def _reference(loaded, inputs: dict) -> dict[str, list[torch.Tensor]]:
    """Per layer [batch, tokens, neurons]: the residual from `output_hidden_states` (the last
    layer's from a hook, checked to be what the final norm turns into the last hidden state),
    and the MLP neurons silu(x W_gate) * (x W_up) from each MLP's input."""
    adapter, model = loaded.adapter, loaded.model
    layers = adapter.layers(model)
    last, mlp_inputs = {}, {}
    handles = [layers[-1].register_forward_hook(lambda m, a, o: last.setdefault("h", o))]
    handles += [layer.mlp.register_forward_pre_hook(lambda m, a, i=i: mlp_inputs.setdefault(i, a[0]))
                for i, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            out = adapter.forward_module(model)(**inputs, output_hidden_states=True, use_cache=False)
            hidden = out.hidden_states
            assert len(hidden) == len(layers) + 1
            torch.testing.assert_close(model.get_submodule(adapter.final_norm)(last["h"]), hidden[-1])
            mlp = [torch.nn.functional.silu(x @ layer.mlp.gate_proj.weight.T) * (x @ layer.mlp.up_proj.weight.T)
                   for x, layer in zip((mlp_inputs[i] for i in range(len(layers))), layers)]
    finally:
        for handle in handles:
            handle.remove()
    return {"residual": [*hidden[1:-1], last["h"]], "mlp": mlp}


def _assert_reductions(got: dict, reference: dict, mask: torch.Tensor) -> None:
    """got {site: {stat: [batch, layer, neuron]}} equals a per-sample loop over the masked rows."""
    for site, per_layer in reference.items():
        for layer, values in enumerate(per_layer):
            for row in range(mask.shape[0]):
                rows = values[row][mask[row]].float()
                torch.testing.assert_close(got[site]["max"][row, layer], rows.max(dim=0).values)
                torch.testing.assert_close(got[site]["mean"][row, layer], rows.mean(dim=0))


# (a) recorded values ---------------------------------------------------------------------------
def test_recorded_sites_equal_hidden_states_and_neurons_by_hand(any_qwen, images):
    loaded = any_qwen
    builder = _builder(loaded)
    text = builder.text_batch(CAPTIONS)
    image = builder.image_batch(images)
    joint, streams = builder.image_text_batch(images, CAPTIONS)
    with Recorder(loaded.model, loaded.adapter, SITES) as rec:
        got_text = reduce_content(loaded, rec, text)
        got_image = reduce_content(loaded, rec, image)
        got_joint = reduce_forward(loaded, rec, joint, streams)
        again = reduce_content(loaded, rec, text)  # after image forwards (the model caches rope_deltas)
    assert got_text["residual"]["max"].shape == (len(CAPTIONS), 2, 64)
    assert got_text["mlp"]["max"].shape == (len(CAPTIONS), 2, 176)
    assert (loaded.adapter.width(loaded.model, "residual"), loaded.adapter.width(loaded.model, "mlp")) == (64, 176)
    _assert_reductions(got_text, _reference(loaded, text.inputs), text.content)
    _assert_reductions(got_image, _reference(loaded, image.inputs), image.content)
    joint_reference = _reference(loaded, joint.inputs)
    for name, mask in streams.items():
        _assert_reductions(got_joint[name], joint_reference, mask)
    for site in SITES:
        for stat in ("max", "mean"):
            torch.testing.assert_close(again[site][stat], got_text[site][stat], rtol=0, atol=0)


def _mrope_positions(ids: torch.Tensor, mask: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    """M-RoPE positions [3, batch, tokens] by hand for rows with one image each: text counts up;
    an image of h x w merged patches starting at s has (t, h, w) = (s, s + row, s + column); the
    text after it continues from s + max(h, w). Padding gets 0."""
    positions = torch.zeros((3, *ids.shape), dtype=torch.long)
    for row, (_, h, w) in enumerate((grids // torch.tensor([1, 2, 2])).tolist()):
        length = int(mask[row].sum())
        start = int((ids[row] == IMAGE_PAD).nonzero()[0])
        positions[:, row, :start] = torch.arange(start)
        grid = torch.arange(h * w)
        positions[0, row, start : start + h * w] = start
        positions[1, row, start : start + h * w] = start + grid // w
        positions[2, row, start : start + h * w] = start + grid % w
        positions[:, row, start + h * w : length] = start + max(h, w) + torch.arange(length - start - h * w)
    return positions


@pytest.mark.parametrize("condition", ["image", "image_text"])
def test_image_inputs_run_with_m_rope_positions(any_qwen, images, condition):
    """The batch carries `mm_token_type_ids`, so the model's positions are the 3-D ones
    (checked against positions made by hand and passed in instead)."""
    loaded = any_qwen
    builder = _builder(loaded)
    batch = builder.image_batch(images) if condition == "image" else builder.image_text_batch(images, CAPTIONS)[0]
    inputs = batch.inputs
    types = inputs["mm_token_type_ids"]
    assert torch.equal(types, (inputs["input_ids"] == IMAGE_PAD).to(types.dtype))
    by_hand = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    by_hand["position_ids"] = _mrope_positions(inputs["input_ids"], inputs["attention_mask"], inputs["image_grid_thw"])
    real = inputs["attention_mask"].bool()
    ours, ref = _reference(loaded, inputs)["residual"], _reference(loaded, by_hand)["residual"]
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a[real], b[real])
    if loaded.model.config.model_type == "qwen2_5_vl":  # without them, 1-D positions: silently other values
        flat = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
        assert not torch.allclose(_reference(loaded, flat)["residual"][-1][real], ours[-1][real])


# (b) the vision tower ----------------------------------------------------------------------------
def test_text_only_never_runs_the_vision_tower_and_the_guard_refuses_it(qwen, images):
    loaded = qwen
    builder = _builder(loaded)
    assert loaded.adapter.vision_modules == ("model.visual",)
    calls = {"visual": 0, "merger": 0}
    visual = loaded.model.get_submodule("model.visual")
    handles = [visual.register_forward_hook(lambda *a: calls.__setitem__("visual", calls["visual"] + 1)),
               visual.merger.register_forward_hook(lambda *a: calls.__setitem__("merger", calls["merger"] + 1))]
    try:
        text = builder.text_batch(CAPTIONS)
        assert set(text.inputs) == {"input_ids", "attention_mask"}
        with Recorder(loaded.model, loaded.adapter, SITES) as rec:
            reduce_content(loaded, rec, text)
            assert calls == {"visual": 0, "merger": 0}
            reduce_content(loaded, rec, builder.image_batch(images))
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"visual": 1, "merger": 1}  # the same hooks fire for images: the zeros mean something
    image = builder.image_batch(images[:1])
    with vision_guard(loaded.model, loaded.adapter), torch.inference_mode():
        loaded.adapter.forward_module(loaded.model)(**text.inputs, use_cache=False)
        with pytest.raises(RuntimeError, match="text-only input reached model.visual"):
            loaded.adapter.forward_module(loaded.model)(**image.inputs, use_cache=False)


# (c) image content and the joint input -----------------------------------------------------------
def test_image_content_is_each_images_own_image_pads(any_qwen, images):
    loaded = any_qwen
    builder = _builder(loaded)
    batch = builder.image_batch(images)
    assert builder.image_prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                                    "<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n")
    assert set(batch.inputs) == {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
    assert batch.n_content.tolist() == list(SIZES.values())
    ids = batch.inputs["input_ids"]
    for row, image in enumerate(images):
        alone = loaded.processor(text=[_render(loaded, None, True)], images=[image], return_tensors="pt")
        pads = alone["input_ids"][0] == IMAGE_PAD
        assert int(pads.sum()) == int(batch.n_content[row]) == int(alone["image_grid_thw"].prod()) // 4
        assert _real(ids[row], batch.inputs["attention_mask"][row]) == alone["input_ids"][0].tolist()
        assert batch.content[row, : pads.shape[0]].tolist() == pads.tolist()
        assert not batch.content[row, pads.shape[0] :].any()
    assert (ids[batch.content] == IMAGE_PAD).all()
    assert batch.inputs["image_grid_thw"].tolist() == [[1, 14, 22], [1, 4, 4], [1, 36, 72], [1, 28, 2]]


def test_joint_input_is_the_processors_own_for_the_whole_prompt(any_qwen, images):
    loaded = any_qwen
    builder = _builder(loaded)
    batch, streams = builder.image_text_batch(images, CAPTIONS)
    inputs = batch.inputs
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
    whole = [_render(loaded, caption, True) for caption in CAPTIONS]
    assert whole[0].endswith("<|vision_start|><|image_pad|><|vision_end|>A dog runs on the beach.<|im_end|>\n"
                             "<|im_start|>assistant\n")
    pixels = []
    for row, (image, caption) in enumerate(zip(images, CAPTIONS)):
        ref = loaded.processor(text=[whole[row]], images=[image], return_tensors="pt")
        mask = inputs["attention_mask"][row]
        if "<|" not in caption:  # the processor would read a caption's control strings as control
            assert _real(inputs["input_ids"][row], mask) == ref["input_ids"][0].tolist()
            assert _real(inputs["mm_token_type_ids"][row], mask) == ref["mm_token_type_ids"][0].tolist()
        pads = ref["input_ids"][0] == IMAGE_PAD
        assert streams["image_text_image"][row, : pads.shape[0]].tolist() == pads.tolist()
        assert int(pads.sum()) == list(SIZES.values())[row]
        assert inputs["image_grid_thw"][row].tolist() == ref["image_grid_thw"][0].tolist()
        pixels.append(ref["pixel_values"])
    torch.testing.assert_close(inputs["pixel_values"], torch.cat(pixels), rtol=0, atol=0)
    assert torch.equal(inputs["mm_token_type_ids"].bool(), inputs["input_ids"] == IMAGE_PAD)
    assert torch.equal(streams["image_text"], streams["image_text_caption"] | streams["image_text_image"])
    assert not (streams["image_text_caption"] & streams["image_text_image"]).any()


# (d) text prompts, captions as plain text, no BOS --------------------------------------------------
def test_text_prompt_is_the_chat_template_with_only_the_caption(qwen):
    loaded = qwen
    builder = _builder(loaded)
    tokenizer = loaded.processor.tokenizer
    assert tokenizer.bos_token is None and builder.never_content.tolist() == [VISION_START, VISION_END]
    assert builder.text_prefix + "X" + builder.text_suffix == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nX<|im_end|>\n"
        "<|im_start|>assistant\n")
    batch = builder.text_batch(CAPTIONS)
    for row, caption in enumerate(CAPTIONS[:-1]):
        rendered = _render(loaded, caption, False)
        assert _real(batch.inputs["input_ids"][row], batch.inputs["attention_mask"][row]) == \
            tokenizer(rendered)["input_ids"]


def test_caption_tokens_decode_to_the_caption_and_control_strings_stay_text(qwen, images):
    loaded = qwen
    builder = _builder(loaded)
    tokenizer = loaded.processor.tokenizer
    text = builder.text_batch(CAPTIONS)
    joint, streams = builder.image_text_batch(images, CAPTIONS)
    added = set(tokenizer.added_tokens_decoder)  # <|endoftext|> (151643) and every id after it
    assert min(added) == 151643 and IM_START in added and tokenizer.convert_tokens_to_ids("<tool_call>") in added
    for ids, mask, caption_mask in ((text.inputs["input_ids"], text.inputs["attention_mask"], text.content),
                                    (joint.inputs["input_ids"], joint.inputs["attention_mask"],
                                     streams["image_text_caption"])):
        for row, caption in enumerate(CAPTIONS):
            tokens = ids[row][caption_mask[row]].tolist()
            assert tokenizer.decode(tokens, skip_special_tokens=False) == caption
            assert not added & set(tokens)  # "<|im_start|>" and "<tool_call>" are plain text here
            real = _real(ids[row], mask[row])
            assert real[0] == IM_START and real.count(IM_START) == 3  # system, user, assistant: no BOS
            assert 151643 not in real  # the config's bos_token_id is <|endoftext|>, the padding
    # the same caption tokens in the text and the joint prompt (byte-level BPE after "\n" or a control token)
    for row in range(len(CAPTIONS)):
        assert text.inputs["input_ids"][row][text.content[row]].tolist() == \
            joint.inputs["input_ids"][row][streams["image_text_caption"][row]].tolist()
    for caption, image in zip(CAPTIONS, images):
        assert builder.pair_problem(caption, image) is None


def test_all_tokens_scope_keeps_template_tokens_but_never_the_vision_frame(qwen, images):
    loaded = qwen
    builder = _builder(loaded, "all")
    image = builder.image_batch(images)
    ids, mask = image.inputs["input_ids"], image.inputs["attention_mask"].bool()
    assert torch.equal(image.content, mask & (ids != VISION_START) & (ids != VISION_END))
    template = len(loaded.processor.tokenizer(builder.image_prompt)["input_ids"]) - 3  # 3: start, pad, end
    assert image.n_content.tolist() == [n + template for n in SIZES.values()]
    text = builder.text_batch(CAPTIONS)
    assert torch.equal(text.content, text.inputs["attention_mask"].bool())
    assert (text.inputs["input_ids"][text.content] == IM_START).sum() == 3 * len(CAPTIONS)


# (e) batching ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("condition", ["text", "image", "image_text"])
def test_batched_equals_unbatched(qwen, images, condition):
    loaded = qwen
    builder = _builder(loaded)

    def record(indices):
        caps, ims = [CAPTIONS[i] for i in indices], [images[i] for i in indices]
        if condition == "text":
            return reduce_content(loaded, rec, builder.text_batch(caps))
        if condition == "image":
            return reduce_content(loaded, rec, builder.image_batch(ims))
        return reduce_forward(loaded, rec, *builder.image_text_batch(ims, caps))["image_text"]

    with Recorder(loaded.model, loaded.adapter, SITES) as rec:
        together = record(range(len(images)))
        alone = [record([i]) for i in range(len(images))]
    for site in SITES:
        for stat in ("max", "mean"):
            torch.testing.assert_close(together[site][stat], torch.cat([a[site][stat] for a in alone]), **TOL)


def test_image_tokens_of_the_joint_input_equal_image_only_by_causality(qwen, images):
    """The caption follows the image: its image tokens (same positions, M-RoPE included) cannot see it."""
    loaded = qwen
    builder = _builder(loaded)
    joint, streams = builder.image_text_batch(images, CAPTIONS)
    with Recorder(loaded.model, loaded.adapter, SITES) as rec:
        alone = reduce_content(loaded, rec, builder.image_batch(images))
        together = reduce_forward(loaded, rec, joint, streams)["image_text_image"]
    for site in SITES:
        for stat in ("max", "mean"):
            torch.testing.assert_close(together[site][stat], alone[site][stat], **TOL)


# The checkpoints and the loader --------------------------------------------------------------------
def test_shrunk_checkpoints_keep_the_real_files_but_depth_and_width(qwen_dirs, models):
    real = json.loads((real_files("qwen2.5-vl") / "config.json").read_text())
    for kind, loaded in models.items():
        config = loaded.model.config
        text, vision = config.text_config, config.vision_config
        assert config.model_type == kind and type(loaded.processor).__name__.endswith("ImageOnlyProcessor")
        assert not hasattr(loaded.processor, "video_processor")
        assert (text.num_hidden_layers, text.hidden_size, text.intermediate_size) == (2, 64, 176)
        assert (text.num_attention_heads, text.num_key_value_heads, len(text.layer_types)) == (4, 2, 2)
        assert text.rope_parameters["mrope_section"] == [2, 3, 3]  # sums to head_dim / 2 = 8
        assert (text.vocab_size, text.max_position_embeddings) == (real["vocab_size"], real["max_position_embeddings"])
        for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
            assert getattr(config, key) == real[key]
        assert (vision.depth, vision.patch_size, vision.spatial_merge_size) == (2, 14, 2)
        assert len(loaded.adapter.layers(loaded.model)) == 2
        assert sum(p.numel() for p in loaded.model.parameters()) < 25e6
        assert loaded.adapter.image_token_id(config) == IMAGE_PAD
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "chat_template.json"):
            assert (qwen_dirs[kind] / name).read_bytes() == (real_files("qwen2.5-vl") / name).read_bytes()
    v25, v2 = models["qwen2_5_vl"].model.config.vision_config, models["qwen2_vl"].model.config.vision_config
    assert (v25.hidden_size, v25.out_hidden_size, v25.fullatt_block_indexes, v25.window_size) == (32, 64, [1], 112)
    assert (v2.embed_dim, v2.hidden_size, v2.mlp_ratio) == (32, 64, 2)


def test_loader_builds_the_image_only_processor_from_the_real_files():
    """The real repository's processor without torchvision: a turn with an image is processed."""
    from modalscope.models import adapter_for
    from modalscope.models.loading import load_processor

    folder = real_files("qwen2.5-vl")
    processor = load_processor(str(folder), adapter=adapter_for("qwen2_5_vl"))
    assert type(processor).__name__ == "Qwen2_5_VLImageOnlyProcessor"
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    enc = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[Image.new("RGB", (300, 200))])
    assert enc["input_ids"][0].count(IMAGE_PAD) == 77 and enc["image_grid_thw"].tolist() == [[1, 14, 22]]


def test_the_joint_image_tokens_are_the_image_forwards(any_qwen, images):
    """derived.py's claim for Qwen2-VL's template (the vision block before the caption): the
    joint forward's image rows agree with the image forward's, so the store derives them."""
    from modalscope import derived
    from reducing import joint_image_and_image

    records = joint_image_and_image(any_qwen, _builder(any_qwen), images, CAPTIONS, SITES)
    assert derived.joint_matches(records).all()
