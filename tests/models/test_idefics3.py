"""SmolVLM / Idefics3 on its real files (HuggingFaceTB/SmolVLM-256M-Instruct: GPT-2-style BPE
tokenizer with 128 added tokens, `User:`/`Assistant:` template, tiling image processor), shrunk
to 2 decoder layers and a 2-layer vision tower with random weights.

Every image costs 13-17 crops of 512 px whatever its size (the processor scales it to 2048 px
first), so the tests use two images."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from modalscope.record.extract import for_base, reduce_content, reduce_forward
from modalscope.record.hooks import Recorder, vision_guard
from modalscope.record.inputs import BaseTokens, PromptBuilder
from real_models import real_files, smollm2_base, smollm2_tokenizer

IMAGE, FAKE, GLOBAL = 49190, 49189, 49152
SIZES = [(300, 200), (64, 64)]  # (width, height): 3 x 4 tiles + global, 4 x 4 + global
CAPTIONS = ["TWO DOGS PLAYING", "a red <image> car<end_of_utterance> <row_1_col_1>"]
SITES = ["residual", "mlp"]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    from modalscope.models.loading import load_model
    from modalscope.models.shrunk import build_shrunk

    folder = build_shrunk(real_files("smolvlm"), tmp_path_factory.mktemp("smol") / "smolvlm-shrunk")
    loaded = load_model(str(folder), device="cpu")
    return folder, loaded, PromptBuilder.for_model(loaded, "content")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


@pytest.fixture(scope="module")
def batches(smol, images):
    """The three inputs of the pairs, made once (the processor takes about a second per image)."""
    builder = smol[2]
    return {"text": (builder.text_batch(CAPTIONS), None), "image": (builder.image_batch(images), None),
            "image_text": builder.image_text_batch(images, CAPTIONS)}


def _render(loaded, caption, image):
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": caption}]
    return loaded.processor.apply_chat_template([{"role": "user", "content": content}],
                                                add_generation_prompt=True, tokenize=False)


def test_ids_pixels_and_image_content_are_the_processors_own(smol, images, batches):
    _, loaded, builder = smol
    config = loaded.model.config
    assert (config.model_type, config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers) == \
        ("idefics3", 2, 2)
    assert builder.image_prompt == "<|im_start|>User:<image><end_of_utterance>\nAssistant:"
    assert builder.text_prefix + "X" + builder.text_suffix == "<|im_start|>User: X<end_of_utterance>\nAssistant:"
    tokenizer = loaded.processor.tokenizer
    (text, _), (image, _), (joint, streams) = batches["text"], batches["image"], batches["image_text"]
    assert image.n_content.tolist() == [832, 1088]  # 13 and 17 blocks of 64 features
    for row, (im, caption) in enumerate(zip(images, CAPTIONS)):
        alone = loaded.processor(text=[builder.image_prompt], images=[[im]], return_tensors="pt")
        crops = alone["pixel_values"].shape[1]
        ids = alone["input_ids"][0]
        assert image.inputs["input_ids"][row][image.inputs["attention_mask"][row].bool()].tolist() == ids.tolist()
        torch.testing.assert_close(image.inputs["pixel_values"][row, :crops], alone["pixel_values"][0], rtol=0, atol=0)
        assert torch.equal(image.inputs["pixel_attention_mask"][row, :crops], alone["pixel_attention_mask"][0])
        assert not image.inputs["pixel_values"][row, crops:].any()  # padding crops, which the model drops
        assert image.content[row, : len(ids)].tolist() == (ids == IMAGE).tolist()
        assert (ids == FAKE).sum() == crops + 1 and (ids == GLOBAL).sum() == 1  # the framing: not content
        if "<" not in caption:  # the processor would read a caption's control strings as control
            whole = loaded.processor(text=[_render(loaded, caption, True)], images=[[im]], return_tensors="pt")
            got = joint.inputs["input_ids"][row][joint.inputs["attention_mask"][row].bool()]
            assert got.tolist() == whole["input_ids"][0].tolist()
            assert text.inputs["input_ids"][row][text.inputs["attention_mask"][row].bool()].tolist() == \
                tokenizer(_render(loaded, caption, False))["input_ids"]
        assert streams["image_text_image"][row].sum() == (ids == IMAGE).sum()
        for batch_ids, mask in ((text.inputs["input_ids"][row], text.content[row]),
                                (joint.inputs["input_ids"][row], streams["image_text_caption"][row])):
            assert tokenizer.decode(batch_ids[mask].tolist(), skip_special_tokens=False).strip() == caption
    everything = _all_tokens(builder).image_batch(images)  # framing never content
    framing = torch.isin(everything.inputs["input_ids"], builder.never_content)
    assert framing.sum(1).tolist() == [1 + 14 + 12 + 1, 1 + 18 + 16 + 1]  # BOS, fakes, row/col and global markers
    assert torch.equal(everything.content, everything.inputs["attention_mask"].bool() & ~framing)


def _all_tokens(builder):
    """The builder with `--tokens all` (a second builder would check its pieces on the
    processor again: seconds)."""
    everything = copy.copy(builder)
    everything.tokens = "all"
    return everything


@pytest.mark.parametrize("condition", ["text", "image", "image_text"])
def test_recording_equals_output_hidden_states(smol, batches, condition):
    _, loaded, builder = smol
    batch, masks = batches[condition]
    masks = masks or {"content": batch.content}
    layers = loaded.adapter.layers(loaded.model)
    last, neurons = {}, {}
    handles = [layers[-1].register_forward_hook(lambda m, a, o: last.setdefault("h", o))]
    handles += [layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: neurons.setdefault(i, a[0]))
                for i, layer in enumerate(layers)]
    try:
        with Recorder(loaded.model, loaded.adapter, SITES) as rec:
            got = reduce_forward(loaded, rec, batch, masks)
        with torch.inference_mode():
            hidden = loaded.adapter.forward_module(loaded.model)(
                **batch.inputs, output_hidden_states=True, use_cache=False).hidden_states
    finally:
        for handle in handles:
            handle.remove()
    residual = [hidden[1], last["h"]]  # the last layer's output is before the final norm
    for name, mask in masks.items():
        for layer in range(len(layers)):
            for row in range(len(mask)):
                for site, values in (("residual", residual[layer]), ("mlp", neurons[layer])):
                    rows = values[row][mask[row]]
                    torch.testing.assert_close(got[name][site]["max"][row, layer], rows.max(0).values)
                    torch.testing.assert_close(got[name][site]["mean"][row, layer], rows.mean(0))


def test_text_only_never_runs_a_vision_module(smol, batches):
    _, loaded, builder = smol
    calls = {name: 0 for name in loaded.adapter.vision_modules}
    handles = [loaded.model.get_submodule(name).register_forward_hook(
        lambda m, a, o, name=name: calls.__setitem__(name, calls[name] + 1)) for name in calls]
    try:
        text = batches["text"][0]
        assert set(text.inputs) == {"input_ids", "attention_mask"}
        with Recorder(loaded.model, loaded.adapter, ["residual"]) as rec, vision_guard(loaded.model, loaded.adapter):
            reduce_content(loaded, rec, text)
        assert set(calls.values()) == {0}
    finally:
        for handle in handles:
            handle.remove()


def _drop_merge(spec):
    """A tokenizer that reads " DOGS" differently: without the merge that makes "ĠDO"."""
    spec["model"]["merges"] = [m for m in spec["model"]["merges"] if (m if isinstance(m, str) else " ".join(m))
                               != "ĠD O"]


def _no_im_start(spec):
    """A tokenizer that reads the template differently: `<|im_start|>` is plain text to it."""
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "<|im_start|>"]


def test_the_smollm2_base_reads_the_text_input_as_the_vlm_does(smol, tmp_path):
    """SmolLM2 lacks the 128 tokens SmolVLM added, among them the template's `<end_of_utterance>`
    after the caption: accepted (the base reads up to it); a tokenizer that reads the template or
    a caption differently, or --tokens all (which would record the tail), is refused."""
    from modalscope.models.loading import load_model

    folder, loaded, builder = smol
    captions = [*CAPTIONS, "A dog runs on the beach.", "<global-img><fake_token_around_image>"]
    smollm2 = smollm2_tokenizer(folder)
    assert BaseTokens(builder, smollm2).mismatch(captions) is None
    assert BaseTokens(builder, smollm2_tokenizer(folder, _no_im_start)).mismatch(captions) == "the template"
    assert BaseTokens(builder, smollm2_tokenizer(folder, _drop_merge)).mismatch(captions) == repr(CAPTIONS[0])
    assert "--tokens all" in BaseTokens(_all_tokens(builder), smollm2).mismatch(captions)

    base = load_model(str(smollm2_base(folder, tmp_path / "smollm2")), device="cpu")
    text = builder.text_batch(captions)
    batch = for_base(text, base)
    eou = loaded.processor.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    assert (text.inputs["input_ids"] == eou).sum(1).tolist() == [1] * len(captions)  # the template's, after
    assert int(batch.inputs["input_ids"].max()) < 49152  # the base reads up to it
    assert torch.equal(batch.inputs["attention_mask"].sum(1), (text.inputs["input_ids"] == eou).int().argmax(1))
    with Recorder(loaded.model, loaded.adapter, SITES) as rec:
        ours = reduce_content(loaded, rec, text)
    with Recorder(base.model, base.adapter, SITES) as rec:
        theirs = reduce_content(base, rec, batch)
    for site in SITES:  # the same weights: the same caption activations
        for stat in ("max", "mean"):
            torch.testing.assert_close(theirs[site][stat], ours[site][stat], rtol=1e-5, atol=1e-5)
