"""Captions through real tokenizers: plain text in every condition, and one k per pair that
fits every stream (the all-caps captions that used to give NaN matched_max)."""

from __future__ import annotations

import unicodedata

import pytest
import torch
from PIL import Image

from awkward import AWKWARD, SPECIAL_TEXT, varied
from modalscope.data.pairs import caption_problem
from modalscope.record.extract import matched_k, reduce_forward
from modalscope.record.hooks import Recorder
from modalscope.record.inputs import PromptBuilder
from modalscope.data.manifest import MANIFEST


def _plain(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


@pytest.fixture(scope="module")
def image():
    return Image.new("RGB", (300, 200), (30, 120, 200))


def _counts(builder, captions, image, n_image=None):
    """Both inputs of each caption and every stream's content-token count ({stream: [batch]});
    `n_image`: the image-only count when already known (it does not depend on the caption)."""
    text = builder.text_batch(captions)
    joint, streams = builder.image_text_batch([image] * len(captions), captions)
    if n_image is None:
        n_image = builder.image_batch([image] * len(captions)).n_content
    counts = {"text": text.n_content, "image": torch.as_tensor(n_image).expand(len(captions)),
              **{n: m.sum(1) for n, m in streams.items()}}
    return text, joint, streams, counts


def test_all_caps_captions_are_shorter_after_the_image_and_k_fits_every_stream(real_loaded, image):
    builder = PromptBuilder.for_model(real_loaded, "content")
    captions = ["TWO DOGS PLAYING", "APPLE logo on a laptop"]
    _, _, _, counts = _counts(builder, captions, image)
    # The real SentencePiece tokenizer merges differently after "<image>\n" than after "USER: ".
    assert counts["text"].tolist() == [8, 7]
    assert counts["image_text_caption"].tolist() == [7, 6]
    k = matched_k(counts)
    assert k.tolist() == [7, 6]
    for name, n in counts.items():
        assert (k <= n).all(), name


def test_matched_max_is_finite_and_equals_max_where_k_is_the_stream_length(real_loaded, image):
    """Through the recorder on the real LLaVA-1.5 files: no NaN for the all-caps captions, and
    the stream with exactly k tokens has matched_max == max (the expected max of all of it)."""
    builder = PromptBuilder.for_model(real_loaded, "content")
    captions = ["TWO DOGS PLAYING", "APPLE logo on a laptop"]
    text, joint, streams, counts = _counts(builder, captions, image)
    k = matched_k(counts)
    stats = ["max", "mean", "matched_max"]
    with Recorder(real_loaded.model, real_loaded.adapter, ["residual", "mlp"], stats) as rec:
        got = reduce_forward(real_loaded, rec, joint, streams, k)
        got["text"] = reduce_forward(real_loaded, rec, text, {"text": text.content}, k)["text"]
    for stream, by_site in got.items():
        for site, by_stat in by_site.items():
            for stat, values in by_stat.items():
                assert torch.isfinite(values).all(), (stream, site, stat)
    for site in ("residual", "mlp"):  # image_text_caption has k tokens in both rows
        torch.testing.assert_close(got["image_text_caption"][site]["matched_max"],
                                   got["image_text_caption"][site]["max"])


def test_k_above_a_stream_length_is_a_bug_not_a_precision_problem(real_loaded):
    builder = PromptBuilder.for_model(real_loaded, "content")
    text = builder.text_batch(["TWO DOGS PLAYING"])
    with Recorder(real_loaded.model, real_loaded.adapter, ["residual"], ["max", "matched_max"]) as rec:
        with pytest.raises(AssertionError, match="bug: matched_max k=9 exceeds the 8 tokens of stream text"):
            reduce_forward(real_loaded, rec, text, {"text": text.content}, torch.tensor([9]))


def test_k_fits_every_stream_for_thousands_of_varied_captions(real_loaded, image):
    """Property over 1,000 generated captions (all caps, digits, punctuation runs, emoji, CJK,
    special-token text, surrounding and inner whitespace) through the real tokenizer: every
    stream has content tokens, k <= every stream's count, and the caption tokens of both the
    text and the image-and-caption input decode back to the caption."""
    builder = PromptBuilder.for_model(real_loaded, "content")
    tokenizer = real_loaded.processor.tokenizer
    captions = [c for c in varied(1000, seed=11) if caption_problem(c) is None]
    assert len(captions) > 950
    n_image = int(builder.image_batch([image]).n_content[0])
    for start in range(0, len(captions), 100):
        chunk = captions[start : start + 100]
        text, joint, streams, counts = _counts(builder, chunk, image, n_image)
        k = matched_k(counts)
        assert (k >= 1).all()
        for name, n in counts.items():
            assert (k <= n).all(), name
        for row, caption in enumerate(chunk):
            for ids, mask in ((text.inputs["input_ids"], text.content),
                              (joint.inputs["input_ids"], streams["image_text_caption"])):
                assert _plain(tokenizer.decode(ids[row][mask[row]])) == _plain(caption), caption


@pytest.mark.parametrize("special", SPECIAL_TEXT)
def test_special_token_text_in_a_caption_is_plain_text_in_every_condition(any_loaded, image, special):
    """`<image>`, `<s>`, `</s>`, turn markers...: no control token from the caption in either
    input (one BOS, at 0; exactly the processor's image tokens), and the caption decodes back."""
    builder = PromptBuilder.for_model(any_loaded, "content")
    tokenizer = any_loaded.processor.tokenizer
    caption = f"a dog {special} on a sofa {special}"
    controls = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    text = builder.text_batch([caption])
    ids = text.inputs["input_ids"][0].tolist()
    assert [i for i in ids if i in controls] == [tokenizer.bos_token_id] and ids[0] == tokenizer.bos_token_id
    assert _plain(tokenizer.decode(text.inputs["input_ids"][0][text.content[0]])) == caption
    joint, streams = builder.image_text_batch([image], [caption])
    ids = joint.inputs["input_ids"][0]
    image_id = any_loaded.model.config.image_token_id
    assert int((ids == image_id).sum()) == 576
    assert [i for i in ids.tolist() if i in controls and i != image_id] == [tokenizer.bos_token_id]
    assert not (streams["image_text_caption"][0] & (ids == image_id)).any()
    assert _plain(tokenizer.decode(ids[streams["image_text_caption"][0]])) == caption
    assert builder.pair_problem(caption, image) is None


def test_bos_is_never_content_even_where_the_template_emits_it_mid_prompt(any_loaded):
    """A template that writes BOS as text (as Mistral's does) keeps it out of `--tokens all`."""
    builder = PromptBuilder.for_model(any_loaded, "all")
    tokenizer = any_loaded.processor.tokenizer
    builder.text_pieces = type(builder.text_pieces)(
        head=builder.text_pieces.head + tokenizer.bos_token, left=builder.text_pieces.left,
        right=builder.text_pieces.right, tail=builder.text_pieces.tail)
    builder.text_head = tokenizer(builder.text_pieces.head)["input_ids"]
    batch = builder.text_batch(["A dog."])
    ids = batch.inputs["input_ids"][0]
    assert int((ids == tokenizer.bos_token_id).sum()) == 2
    assert not batch.content[0][ids == tokenizer.bos_token_id].any()
    assert batch.content[0].sum() == (ids != tokenizer.bos_token_id).sum()


def test_awkward_corpus_pairs_are_usable_or_have_a_reason(real_loaded, image):
    builder = PromptBuilder.for_model(real_loaded, "content")
    assert len(AWKWARD) >= 40 and max(len(c) for c in AWKWARD) >= 5000
    for caption in AWKWARD:
        problem = caption_problem(caption) or builder.pair_problem(caption, image)
        if caption.strip() and any(ch.isalnum() or not ch.isspace() for ch in caption.replace("\u200b", "")):
            assert problem is None, (caption, problem)
        else:
            assert problem, caption


def _study(tmp_path, real_llava_dir, odd: str):
    """Five pairs; the third one's caption is `odd` (a JSON string literal)."""
    import json

    from modalscope.config import StudyConfig

    (tmp_path / "images").mkdir()
    lines = []
    for i in range(5):
        Image.new("RGB", (60 + i, 40), (40 * i, 90, 200)).save(tmp_path / f"images/{i}.png")
        caption = odd if i == 2 else f"a photo number {i}"
        lines.append(f'{{"image": "images/{i}.png", "caption": "{caption}", "id": "p{i}"}}')
        json.loads(lines[-1])
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return StudyConfig(out_dir=tmp_path / "study", model=str(real_llava_dir), jsonl=tmp_path / "pairs.jsonl",
                       device="cpu", batch_size=2, progress=False, stats=("max", "mean"), n_perm=200, n_boot=200)


def test_a_pair_that_cannot_be_prepared_is_skipped_before_the_manifest(real_llava_dir, tmp_path):
    """LLaVA-1.5's tokenizer reads U+2581 (the SentencePiece space mark) as a space, so the
    caption's tokens cannot decode back to it: the pair is skipped in both conditions."""
    import pandas as pd

    from modalscope.study import extract_stage

    config = _study(tmp_path, real_llava_dir, "a\u2581dog on grass")
    store = extract_stage(config)
    manifest = pd.read_parquet(config.out_dir / MANIFEST)
    skipped = pd.read_parquet(config.out_dir / "skipped.parquet")
    assert sorted(manifest["pair_id"]) == ["p0", "p1", "p3", "p4"] and store.n_done == 4
    assert skipped["pair_id"].tolist() == ["p2"]
    assert skipped["reason"].iloc[0] == ("caption tokens of the text input decode to 'a dog on grass', "
                                         "not to the caption")


def test_a_lone_surrogate_caption_is_skipped_by_the_data_check(real_llava_dir, tmp_path):
    """Valid JSON, visible text, but no tokenizer (nor Parquet) can encode it."""
    import pandas as pd

    from modalscope.study import prepare_manifest

    config = _study(tmp_path, real_llava_dir, "a dog \\ud800 on grass")
    manifest = prepare_manifest(config)
    skipped = pd.read_parquet(config.out_dir / "skipped.parquet")
    assert "p2" not in set(manifest["pair_id"]) and skipped["pair_id"].tolist() == ["p2"]
    assert skipped["reason"].iloc[0].startswith("caption is not valid Unicode: a lone surrogate U+D800 at character 6")
    assert skipped["caption"].iloc[0] == "a dog \\ud800 on grass"  # stored escaped


def test_a_batch_that_fails_mid_extraction_names_its_pair_and_file(real_llava_dir, tmp_path):
    """Every manifest pair passed the model's preparation check, so a batch can fail only if the
    processor changed since; should one, the error names its pair and image in one line instead
    of repeating a tokenizer message naming nothing. (The failing processor is a subclass that
    raises on one caption; no such caption exists for the real one.)"""
    import numpy as np

    from modalscope.record.extract import PairBatches
    from modalscope.study import prepare_manifest

    class Changed(PromptBuilder):
        def text_batch(self, captions):
            if "number 2" in " ".join(captions):
                raise ValueError("boom\nsecond line")
            return super().text_batch(captions)

    config = _study(tmp_path, real_llava_dir, "a photo number 2")
    manifest = prepare_manifest(config)
    from modalscope.models.loading import load_model

    loaded = load_model(str(real_llava_dir), device="cpu")
    builder = Changed(loaded.processor, loaded.model.config.image_token_id, "content")
    item = PairBatches(manifest, builder, [np.arange(5)], image_text=True)[0]
    row = manifest[manifest["pair_id"] == "p2"].iloc[0]
    assert item["error"] == (f"{row.image_path}: pair p2: cannot prepare the model inputs (ValueError: boom); it "
                             "passed this check when DIR/manifest.parquet was made, so the model or processor "
                             "changed: start a new --out")
