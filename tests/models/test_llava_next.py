"""LLaVA-NeXT on its real files (llava-hf/llava-v1.6-mistral-7b-hf: Mistral tokenizer and
`[INST]` template, any-resolution processor), shrunk to 2 layers with random weights."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from modalscope.record.extract import reduce_content, reduce_forward
from modalscope.record.hooks import Recorder, vision_guard
from modalscope.record.inputs import PromptBuilder
from real_models import real_files

SIZES = [(300, 200), (336, 336), (1000, 500), (200, 800)]  # (width, height): 2x1, 1x1, 1x2 grids...
CAPTIONS = ["TWO DOGS PLAYING", "a red <image> car", "[INST] nested [/INST] text", "A cat."]


@pytest.fixture(scope="module")
def next_loaded(tmp_path_factory):
    from modalscope.models.loading import load_model
    from modalscope.models.shrunk import build_shrunk

    folder = build_shrunk(real_files("llava-next"), tmp_path_factory.mktemp("next") / "llava-next-shrunk")
    return load_model(str(folder), device="cpu")


@pytest.fixture(scope="module")
def builder(next_loaded):
    return PromptBuilder.for_model(next_loaded, "content")


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(0)
    return [Image.fromarray(torch.randint(0, 255, (h, w, 3), generator=gen, dtype=torch.uint8).numpy())
            for w, h in SIZES]


def _turn(loaded, caption, image):
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": caption}]
    return loaded.processor.apply_chat_template([{"role": "user", "content": content}],
                                                add_generation_prompt=True, tokenize=False)


def _newline_positions(loaded, batch) -> torch.Tensor:
    """Where the model itself put its `image_newline` vector: the language model's input
    embeddings equal to that parameter (an independent reference for the layout)."""
    seen = {}
    lm = loaded.model.model.language_model
    def keep(module, args, kwargs):
        seen["e"] = kwargs["inputs_embeds"]

    handle = lm.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.inference_mode():
            loaded.adapter.forward_module(loaded.model)(**batch.inputs, use_cache=False)
    finally:
        handle.remove()
    return (seen["e"] == loaded.model.model.image_newline).all(dim=-1)


def test_prompts_and_image_tokens_are_what_the_template_and_processor_make(next_loaded, builder, images):
    tokenizer = next_loaded.processor.tokenizer
    text = builder.text_batch(CAPTIONS)
    joint, streams = builder.image_text_batch(images, CAPTIONS)
    for row, (image, caption) in enumerate(zip(images, CAPTIONS)):
        if "<image>" not in caption and "[INST]" not in caption:  # whole-string tokenizing parses those
            got = text.inputs["input_ids"][row][text.inputs["attention_mask"][row].bool()]
            assert got.tolist() == tokenizer(_turn(next_loaded, caption, False))["input_ids"]
            ref = next_loaded.processor(text=[_turn(next_loaded, caption, True)], images=[image], return_tensors="pt")
            got = joint.inputs["input_ids"][row][joint.inputs["attention_mask"][row].bool()]
            assert got.tolist() == ref["input_ids"][0].tolist()
            assert joint.inputs["image_sizes"][row].tolist() == ref["image_sizes"][0].tolist()
        ids = text.inputs["input_ids"][row]
        assert tokenizer.decode(ids[text.content[row]]).strip() == caption
        assert tokenizer.decode(joint.inputs["input_ids"][row][streams["image_text_caption"][row]]).strip() == caption
    assert builder.image_prompt == "[INST] <image>\n [/INST]"


def test_image_content_is_every_placeholder_but_the_newlines_the_model_inserts(next_loaded, builder, images):
    batch = builder.image_batch(images)
    ids = batch.inputs["input_ids"]
    placeholders = ids == next_loaded.model.config.image_token_id
    newline = _newline_positions(next_loaded, batch)
    for row, image in enumerate(images):
        inserted = next_loaded.processor(text=["<image>"], images=[image])["input_ids"][0]
        assert int(placeholders[row].sum()) == sum(1 for t in inserted if t == next_loaded.model.config.image_token_id)
    assert placeholders.sum(1).tolist() == [1464, 1176, 1752, 1944]  # varies with each image's size
    assert torch.equal(batch.content, placeholders & ~newline)
    assert (newline & placeholders).sum(1).tolist() == [24, 24, 24, 72]  # one per tile row


@pytest.mark.parametrize("condition", ["text", "image", "image_text"])
def test_recording_equals_output_hidden_states(next_loaded, builder, images, condition):
    if condition == "text":
        batch, streams = builder.text_batch(CAPTIONS), None
    elif condition == "image":
        batch, streams = builder.image_batch(images), None
    else:
        batch, streams = builder.image_text_batch(images, CAPTIONS)
    masks = streams or {"content": batch.content}
    with Recorder(next_loaded.model, next_loaded.adapter, ["residual"]) as rec:
        got = reduce_forward(next_loaded, rec, batch, masks)
    with torch.inference_mode():
        hidden = next_loaded.adapter.forward_module(next_loaded.model)(
            **batch.inputs, output_hidden_states=True, use_cache=False).hidden_states
    for name, mask in masks.items():
        layer = 0  # the last layer's output is before the final norm; layer 0's is hidden_states[1]
        for b in range(len(mask)):
            rows = hidden[layer + 1][b][mask[b]]
            torch.testing.assert_close(got[name]["residual"]["max"][b, layer], rows.max(0).values)
            torch.testing.assert_close(got[name]["residual"]["mean"][b, layer], rows.mean(0))


def test_batched_equals_unbatched_across_image_sizes(next_loaded, builder, images):
    with Recorder(next_loaded.model, next_loaded.adapter, ["residual", "mlp"]) as rec:
        together = reduce_content(next_loaded, rec, builder.image_batch(images))
        alone = [reduce_content(next_loaded, rec, builder.image_batch([image])) for image in images]
    for site in ("residual", "mlp"):
        for stat in ("max", "mean"):
            torch.testing.assert_close(together[site][stat], torch.cat([a[site][stat] for a in alone]),
                                       rtol=1e-5, atol=1e-5)


def test_text_only_never_runs_a_vision_module_and_the_guard_says_so(next_loaded, builder, images):
    calls = {name: 0 for name in next_loaded.adapter.vision_modules}
    handles = [next_loaded.model.get_submodule(name).register_forward_hook(
        lambda m, a, o, name=name: calls.__setitem__(name, calls[name] + 1)) for name in calls]
    try:
        with Recorder(next_loaded.model, next_loaded.adapter, ["residual"]) as rec:
            reduce_content(next_loaded, rec, builder.text_batch(CAPTIONS))
            assert set(calls.values()) == {0}
            reduce_content(next_loaded, rec, builder.image_batch(images[:1]))
            assert set(calls.values()) == {1}
    finally:
        for handle in handles:
            handle.remove()
    image = builder.image_batch(images[:1])
    with pytest.raises(RuntimeError, match="bug: a text-only input reached model.vision_tower"):
        with torch.inference_mode(), vision_guard(next_loaded.model, next_loaded.adapter):
            next_loaded.adapter.forward_module(next_loaded.model)(**image.inputs, use_cache=False)


def test_the_joint_image_tokens_are_the_image_forwards(next_loaded, builder, images):
    """derived.py's claim for LLaVA-NeXT's template (`[INST] <image>\\n` before the caption): the
    joint forward's image rows agree with the image forward's, so the store derives them."""
    from modalscope import derived
    from reducing import joint_image_and_image

    records = joint_image_and_image(next_loaded, builder, images, CAPTIONS, ["residual", "mlp"])
    assert derived.joint_matches(records).all()
