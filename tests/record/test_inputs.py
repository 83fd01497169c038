"""Unimodal inputs: the right tokens are content, and text-only never touches the vision path."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from modalscope.record.extract import reduce_content
from modalscope.record.hooks import Recorder
from modalscope.record.inputs import PromptBuilder

CAPTIONS = ["Two red circles on a white background.", "A blue square in the top left corner."]


@pytest.fixture(scope="module")
def images():
    return [Image.new("RGB", (200, 150), (200, 30, 30)), Image.new("RGB", (64, 256), (0, 0, 255))]


def _builder(loaded, tokens="content"):
    return PromptBuilder(loaded.processor, loaded.model.config.image_token_id, tokens)


def _user_turn(loaded, caption, image=False):
    """The chat template's own rendering of one user turn, tokenized whole by the processor:
    the independent reference for what the builder assembles piece by piece."""
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": caption}]
    text = loaded.processor.apply_chat_template([{"role": "user", "content": content}],
                                                add_generation_prompt=True, tokenize=False)
    return text


def _count_calls(loaded):
    counts = {name: 0 for name in loaded.adapter.vision_modules}
    handles = []
    for name in counts:
        def hook(module, args, output, name=name):
            counts[name] += 1
        handles.append(loaded.model.get_submodule(name).register_forward_hook(hook))
    return counts, handles


def test_text_only_never_runs_vision_tower_or_projector(loaded, images):
    builder = _builder(loaded)
    counts, handles = _count_calls(loaded)
    try:
        with Recorder(loaded.model, loaded.adapter, ["residual"]) as rec:
            reduce_content(loaded, rec, builder.text_batch(CAPTIONS))
            assert all(c == 0 for c in counts.values()), counts
            reduce_content(loaded, rec, builder.image_batch(images))
    finally:
        for h in handles:
            h.remove()
    # The same hooks do fire for the image condition, so the zero above is meaningful.
    assert all(c == 1 for c in counts.values()), counts


def test_text_prompt_is_the_chat_template_with_only_the_caption(any_loaded):
    builder = _builder(any_loaded)
    assert builder.text_prefix + "X" + builder.text_suffix == "USER: X ASSISTANT:"
    assert builder.image_prompt == "USER: <image>\n ASSISTANT:"
    batch = builder.text_batch(CAPTIONS + ["TWO DOGS PLAYING"])
    assert set(batch.inputs) == {"input_ids", "attention_mask"}
    tokenizer = any_loaded.processor.tokenizer
    for row, caption in enumerate(CAPTIONS + ["TWO DOGS PLAYING"]):
        want = tokenizer(_user_turn(any_loaded, caption))["input_ids"]
        got = batch.inputs["input_ids"][row][batch.inputs["attention_mask"][row].bool()].tolist()
        assert got == want


def test_joint_prompt_and_image_tokens_are_what_the_processor_makes(any_loaded, images):
    """The image-and-caption input equals the processor's own on the whole chat-template
    prompt: the same ids (image placeholder expanded where the processor put it) and pixels."""
    builder = _builder(any_loaded)
    captions = ["TWO DOGS PLAYING", "APPLE logo on a laptop"]
    batch, streams = builder.image_text_batch(images, captions)
    for row, (image, caption) in enumerate(zip(images, captions)):
        ref = any_loaded.processor(text=[_user_turn(any_loaded, caption, image=True)], images=[image],
                                   return_tensors="pt")
        got = batch.inputs["input_ids"][row][batch.inputs["attention_mask"][row].bool()]
        assert got.tolist() == ref["input_ids"][0].tolist()
        is_image = ref["input_ids"][0] == any_loaded.model.config.image_token_id
        assert streams["image_text_image"][row, : len(got)].tolist() == is_image.tolist()
        assert int(is_image.sum()) == any_loaded.model.config.image_seq_length == 576
        torch.testing.assert_close(batch.inputs["pixel_values"][row], ref["pixel_values"][0])


def test_text_content_tokens_are_exactly_the_caption(any_loaded):
    builder = _builder(any_loaded)
    captions = CAPTIONS + ["TWO DOGS PLAYING", "APPLE logo on a laptop"]
    batch = builder.text_batch(captions)
    tokenizer = any_loaded.processor.tokenizer
    for row, caption in enumerate(captions):
        ref = tokenizer(_user_turn(any_loaded, caption), return_offsets_mapping=True)
        start = len(builder.text_prefix)
        span = [a < start + len(caption) and b > start for a, b in ref["offset_mapping"]]
        assert batch.content[row, : len(span)].tolist() == span  # the caption's span, by offsets
        ids = batch.inputs["input_ids"][row][batch.content[row]]
        assert tokenizer.decode(ids).strip() == caption
        assert batch.inputs["input_ids"][row, 0] == tokenizer.bos_token_id
        assert not batch.content[row, 0]  # BOS is never content


def test_image_only_has_exactly_image_seq_length_content_tokens(any_loaded, images):
    loaded = any_loaded
    batch = _builder(loaded).image_batch(images)
    expected = loaded.model.config.image_seq_length
    assert expected == 576
    assert batch.n_content.tolist() == [expected] * len(images)
    ids = batch.inputs["input_ids"]
    assert (ids[batch.content] == loaded.model.config.image_token_id).all()
    assert batch.inputs["pixel_values"].shape == (2, 3, 336, 336)


def test_all_scope_sees_every_real_token_but_bos(any_loaded, images):
    loaded = any_loaded
    batch = _builder(loaded, "all").text_batch(CAPTIONS)
    mask = batch.inputs["attention_mask"].bool()
    assert batch.content[:, 1:].eq(mask[:, 1:]).all()
    assert not batch.content[:, 0].any()
    image = _builder(loaded, "all").image_batch(images)
    assert (image.n_content > loaded.model.config.image_seq_length).all()


def test_right_padding_keeps_content_positions(loaded):
    builder = _builder(loaded)
    alone = builder.text_batch(CAPTIONS[:1])
    padded = builder.text_batch([CAPTIONS[0], CAPTIONS[0] + " And a long tail of words follows here."])
    width = alone.content.shape[1]
    assert torch.equal(padded.content[0, :width], alone.content[0])
    assert not padded.content[0, width:].any()


def test_image_text_streams_mask_caption_and_image_tokens(any_loaded, images):
    loaded = any_loaded
    builder = _builder(loaded)
    batch, streams = builder.image_text_batch(images, CAPTIONS)
    tokenizer = loaded.processor.tokenizer
    ids = batch.inputs["input_ids"]
    for row, caption in enumerate(CAPTIONS):
        assert tokenizer.decode(ids[row][streams["image_text_caption"][row]]).strip() == caption
    assert streams["image_text_image"].sum(1).tolist() == [576, 576]
    assert torch.equal(streams["image_text"], streams["image_text_caption"] | streams["image_text_image"])
    assert not (streams["image_text_caption"] & streams["image_text_image"]).any()
    assert builder.joint_prefix + "X" + builder.joint_suffix == "USER: <image>\nX ASSISTANT:"


def test_image_tokens_of_the_joint_input_equal_image_only_by_causality(loaded, images):
    """Image tokens precede the caption, so under causal attention they cannot see it: their
    reductions in the image_text input equal those of the image-only input."""
    from modalscope.record.extract import reduce_forward

    builder = _builder(loaded)
    joint, streams = builder.image_text_batch(images, CAPTIONS)
    k = torch.tensor([5, 7])
    with Recorder(loaded.model, loaded.adapter, ["residual", "mlp"], ["max", "mean", "matched_max"]) as rec:
        alone = reduce_content(loaded, rec, builder.image_batch(images), k)
        together = reduce_forward(loaded, rec, joint, streams, k)["image_text_image"]
    for site in ("residual", "mlp"):
        for stat in ("max", "mean", "matched_max"):
            torch.testing.assert_close(together[site][stat], alone[site][stat], rtol=1e-5, atol=1e-5)
