"""The bad-input corpus of issue 6: each case ends in an exact one-line error or an exact skip record.

Rules checked: an unusable pair is left out of both conditions (the manifest holds only usable
pairs) and listed in DIR/skipped.parquet with its reason; the run fails only when fewer than 2
usable pairs are left or a data file cannot be read as a whole; a study of another model is
never overwritten; good pairs give the same statistics whether bad ones sat beside them or not.
The corpus itself is built in tests/data/conftest.py.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bad_corpus import BOMB, CORPUS, GOOD_IDS, LONG_CAPTION, UNICODE_CAPTION, png_header_only
from PIL import Image

from modalscope.config import StudyConfig
from modalscope.data.images import ImageProblem, load_rgb
from modalscope.data.manifest import (
    MANIFEST, SKIPPED, TRUNCATED, data_notes, load_manifest, load_skipped, manifest_frame,
)
from modalscope.data.pairs import DataError, Pair, caption_problem, load_coco, load_jsonl
from modalscope.study import prepare_manifest

REASONS = {str(c.pair_id): c.reason for c in CORPUS if c.reason}
COCO_ONLY = {  # case 17
    "208": "image id 208 is listed in 'images' with 2 different files (000000000005.jpg, 000000000006.jpg)",
    "209": "annotation 1209 points to image id 209, which 'images' does not list",
}


def _config(out: Path, **kw) -> StudyConfig:
    return StudyConfig(out_dir=out, model="unused", **kw)


def _coco(root: Path, out: Path, **kw) -> StudyConfig:
    return _config(out, captions=root / "captions.json", images=root / "images", **kw)


def _reason(path: Path) -> str:
    with pytest.raises(ImageProblem) as err:
        load_rgb(path)
    return str(err.value)


# Images: cases 1-10 ------------------------------------------------------------------------
@pytest.mark.parametrize("name, reason", [
    ("empty.jpg", "image file is empty (0 bytes)"),  # 1
    ("truncated.jpg", "cannot decode image (image file is truncated (11 bytes not processed))"),  # 2
    ("text.jpg", "not an image Pillow can read (unknown format)"),  # 3
    ("missing.jpg", "image file not found"),  # 4
    ("bomb.png", BOMB),  # 9
], ids=["1-empty", "2-truncated-jpeg", "3-text-as-jpg", "4-missing", "9-bomb"])
def test_unusable_image_gives_its_one_line_reason(bad_corpus, name, reason):
    assert _reason(bad_corpus / "images" / name) == reason


def test_5_cmyk_jpeg_decodes_to_the_rgb_of_its_inks(bad_corpus):
    image = load_rgb(bad_corpus / "images/cmyk.jpg")  # written as CMYK (0, 255, 255, 0): pure red
    assert image.mode == "RGB" and image.size == (64, 48)
    assert np.abs(np.asarray(image).astype(int) - [255, 0, 0]).max() <= 3


def test_6_sixteen_bit_grey_is_scaled_not_clipped(bad_corpus):
    assert Image.open(bad_corpus / "images/gray16.png").mode == "I;16"
    pixels = np.asarray(load_rgb(bad_corpus / "images/gray16.png")).astype(int)
    source = np.asarray(Image.open(bad_corpus / "images/gray16.png")).astype(int)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()
    np.testing.assert_array_equal(pixels[..., 0], (source * 255 + 32767) // 65535)
    assert pixels.min() == 0 and pixels.max() == 255
    assert (pixels[..., 0] == 255).mean() < 0.01  # Pillow's own convert would be ~all white


def test_7_rgba_is_composited_on_white(bad_corpus):
    pixels = np.asarray(load_rgb(bad_corpus / "images/rgba.png")).astype(int)
    assert (pixels[0, 0] - [255, 127, 127]).__abs__().max() <= 1  # red at alpha 128 over white
    assert pixels[0, 40].tolist() == [0, 0, 255]  # opaque blue stays
    assert pixels[40, 40].tolist() == [255, 255, 255]  # fully transparent: white, not black


def test_8_palette_png_gives_its_palette_colours(bad_corpus):
    source = Image.open(bad_corpus / "images/palette.png")
    assert source.mode == "P"
    np.testing.assert_array_equal(np.asarray(load_rgb(bad_corpus / "images/palette.png")),
                                  np.asarray(source.convert("RGB")))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # our guard comes first
def test_9_bomb_is_refused_from_the_header_without_decoding(bad_corpus, tmp_path):
    started = time.perf_counter()
    assert _reason(bad_corpus / "images/bomb.png") == BOMB
    assert time.perf_counter() - started < 1.0  # 1.2 GB of pixels were never allocated
    (tmp_path / "big.png").write_bytes(png_header_only(10_000, 10_000))  # over our limit, under Pillow's
    assert _reason(tmp_path / "big.png") == (
        "image has 100,000,000 pixels (10,000 x 10,000), over the 89,478,485-pixel limit "
        "(decompression-bomb guard)")


def test_10_exif_orientation_is_applied(bad_corpus):
    image = load_rgb(bad_corpus / "images/exif_rotated.jpg")  # stored 40 x 20, red block top left
    assert image.size == (20, 40)  # orientation 6: shown rotated 90 degrees clockwise
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels[5, 15] - [255, 0, 0]).max() < 16  # the block is now top right
    assert pixels[5, 4].min() > 230 and pixels[35, 5].min() > 230


def test_extraction_loads_images_with_the_same_function(bad_corpus):
    from types import SimpleNamespace

    from modalscope.data.pairs import DataError
    from modalscope.record.batches import open_image as _open

    for name in ("cmyk.jpg", "gray16.png", "rgba.png", "palette.png", "exif_rotated.jpg"):
        path = bad_corpus / "images" / name
        row = SimpleNamespace(image_path=str(path), pair_id="p1")
        np.testing.assert_array_equal(np.asarray(_open(row)), np.asarray(load_rgb(path)))
    bomb = SimpleNamespace(image_path=str(bad_corpus / "images/bomb.png"), pair_id="p9")
    with pytest.raises(DataError, match=re.escape(BOMB)) as caught:
        _open(bomb)
    assert str(caught.value).startswith(f"{bomb.image_path}: pair p9: cannot read image")


# Captions: cases 11, 12, 14 ---------------------------------------------------------------------
@pytest.mark.parametrize("caption, reason", [
    ("", "caption is empty"),  # 11
    (" \t\n ", "caption is whitespace only"),  # 12
    ("\u200b\u200d", "caption has no visible characters"),
    (None, "caption is not text (null)"),
    (42, "caption is not text (number)"),
    (UNICODE_CAPTION, None),  # 14
    ("e\u0301", None),
], ids=["11-empty", "12-whitespace", "zero-width", "null", "number", "14-unicode", "combining"])
def test_caption_problem(caption, reason):
    assert caption_problem(caption) == reason


def test_14_unicode_caption_tokens_are_exactly_the_caption(loaded):
    from modalscope.record.inputs import PromptBuilder

    builder = PromptBuilder(loaded.processor, loaded.model.config.image_token_id, "content")
    tokenizer = loaded.processor.tokenizer
    text = builder.text_batch([UNICODE_CAPTION])
    assert tokenizer.decode(text.inputs["input_ids"][0][text.content[0]]).strip() == UNICODE_CAPTION
    joint, streams = builder.image_text_batch([Image.new("RGB", (32, 32))], [UNICODE_CAPTION])
    caption_ids = joint.inputs["input_ids"][0][streams["image_text_caption"][0]]
    assert tokenizer.decode(caption_ids).strip() == UNICODE_CAPTION


# Case 13: a caption longer than the model's context ------------------------------------------
def test_13_long_caption_is_cut_to_fit_the_context_the_same_way_in_every_condition(loaded):
    from modalscope.record.inputs import PromptBuilder

    context = loaded.model.config.text_config.max_position_embeddings
    builder = PromptBuilder(loaded.processor, loaded.model.config.image_token_id, "content", context)
    tokenizer = loaded.processor.tokenizer
    assert len(tokenizer(LONG_CAPTION)["input_ids"]) > context  # really longer than the context
    fitted = builder.fit_captions([LONG_CAPTION, "A short one."])
    assert fitted[1] == "A short one." and LONG_CAPTION.startswith(fitted[0])
    assert 100 < len(fitted[0]) < len(LONG_CAPTION)
    image = Image.new("RGB", (32, 32))
    text = builder.text_batch([LONG_CAPTION, "A short one."])
    joint, streams = builder.image_text_batch([image, image], [LONG_CAPTION, "A short one."])
    assert int(text.inputs["attention_mask"].sum(1).max()) <= context
    assert int(joint.inputs["attention_mask"].sum(1).max()) <= context
    assert int(joint.inputs["attention_mask"][0].sum()) > context - 8  # cut no shorter than needed
    seen = tokenizer.decode(text.inputs["input_ids"][0][text.content[0]]).strip()
    seen_joint = tokenizer.decode(joint.inputs["input_ids"][0][streams["image_text_caption"][0]]).strip()
    assert seen == seen_joint == fitted[0]


def test_13_truncations_lists_the_cut_captions(loaded):
    from modalscope.record.inputs import PromptBuilder

    builder = PromptBuilder(loaded.processor, loaded.model.config.image_token_id, "content", 1024)
    pairs = [Pair("1", "/a.jpg", "A short one."), Pair("107", "/b.jpg", LONG_CAPTION)]
    rows = builder.truncations(manifest_frame(pairs))
    assert rows.to_dict("records") == [{
        "input_index": 1, "pair_id": "107", "caption_chars": 10_000,
        "kept_chars": len(builder.fit_captions([LONG_CAPTION])[0]),
        "caption_tokens": builder._joint_lengths([LONG_CAPTION])[0], "max_length": 1024,
    }]
    assert rows["caption_tokens"].iloc[0] > 1024


def test_13_the_study_takes_the_context_from_the_model_config(loaded):
    from modalscope.record.inputs import PromptBuilder

    assert PromptBuilder(loaded.processor, loaded.model.config.image_token_id, "content").max_length is None
    builder = PromptBuilder.for_model(loaded, "content")
    assert builder.max_length == loaded.model.config.text_config.max_position_embeddings == 1024


# Data files: cases 15-18 ----------------------------------------------------------------------
def test_15_malformed_coco_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text('{"images": [],\n "annotations": [{"id": 1,, "image_id": 1}]}')
    with pytest.raises(DataError) as err:
        load_coco(path, tmp_path)
    assert str(err.value) == f"{path}: not valid JSON (line 2, column 27): Expecting property name enclosed in double quotes"


@pytest.mark.parametrize("missing", ["annotations", "images"])
def test_16_coco_json_without_a_key_is_refused_by_name(tmp_path, missing):
    data = {"images": [], "annotations": []}
    del data[missing]
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        load_coco(path, tmp_path)
    assert str(err.value) == f"{path}: missing '{missing}' (not a COCO captions file)"


@pytest.mark.parametrize("entry, message", [
    ({"images": [{"id": 1}], "annotations": []}, "images[0]: no 'file_name'"),
    ({"images": [], "annotations": [{"id": "x", "image_id": 1, "caption": "c"}]},
     "annotations[0]: 'id' is 'x', not an integer"),
    ({"images": [], "annotations": [[1, 2]]}, "annotations[0]: a JSON array, not an object"),
    ({"images": {}, "annotations": []}, "'images' is a object, not a list"),
], ids=["no-file-name", "bad-id", "not-object", "not-list"])
def test_16_coco_entries_of_the_wrong_shape_name_the_entry(tmp_path, entry, message):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(entry))
    with pytest.raises(DataError) as err:
        load_coco(path, tmp_path)
    assert str(err.value) == f"{path}: {message}"


def test_17_duplicate_image_ids_and_unknown_images_are_skip_records(bad_corpus):
    pairs = {p.pair_id: p for p in load_coco(bad_corpus / "captions.json", bad_corpus / "images")}
    assert {k: pairs[k].problem for k in COCO_ONLY} == COCO_ONLY
    twice = bad_corpus / "twice.json"  # the same file listed twice is no problem
    twice.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "a.jpg"}],
                                 "annotations": [{"id": 5, "image_id": 1, "caption": "A."}]}))
    assert [p.problem for p in load_coco(twice, bad_corpus / "images")] == [None]


def test_18_jsonl_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "A.", "id": 1}\n\n{"image": "b.jpg", "caption": "B.",\n')
    with pytest.raises(DataError) as err:
        load_jsonl(path)
    assert str(err.value) == (
        f"{path}, line 3: not valid JSON (column 36: Expecting property name enclosed in double quotes); "
        'expected {"image": ..., "caption": ..., "id": ...}; fix or delete the line')


def test_18_jsonl_line_without_caption_or_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "A."}\n{"image": "b.jpg"}\n')
    with pytest.raises(DataError) as err:
        load_jsonl(path)
    assert str(err.value) == (f"{path}, line 2: no 'caption'; expected "
                              '{"image": ..., "caption": ..., "id": ...}; fix or delete the line')
    path.write_bytes(b'{"image": "a.jpg", "caption": "A."}\n{"image": "b.jpg", "caption": "\xff"}\n')
    with pytest.raises(DataError) as err:
        load_jsonl(path)
    assert str(err.value) == f"{path}, line 2: not UTF-8 text (byte 31); fix or delete the line"


# The manifest walk over the corpus ------------------------------------------------------------
def test_coco_corpus_manifest_holds_the_good_pairs_and_skipped_lists_the_rest(bad_corpus, tmp_path):
    out = tmp_path / "study"
    manifest = prepare_manifest(_coco(bad_corpus, out))
    assert sorted(manifest["pair_id"]) == sorted(GOOD_IDS)
    assert manifest["input_index"].tolist() == list(range(len(GOOD_IDS)))
    skipped = load_skipped(out)
    assert list(skipped.columns) == ["pair_id", "image_path", "caption", "caption_id", "reason"]
    assert dict(zip(skipped["pair_id"], skipped["reason"])) == {**REASONS, **COCO_ONLY}
    row = skipped.set_index("pair_id").loc["204"]
    assert row.image_path == str((bad_corpus / "images/missing.jpg").resolve()) and row.caption_id == 1204
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert data_notes(out) == [(
        f"{len(skipped)} pair(s) skipped in both conditions (e.g. pair {skipped.pair_id[0]}: "
        f"{skipped.reason[0]}); all listed in {out / SKIPPED}")]


def test_jsonl_corpus_manifest_holds_the_good_pairs_and_skipped_lists_the_rest(bad_corpus, tmp_path):
    out = tmp_path / "study"
    manifest = prepare_manifest(_config(out, jsonl=bad_corpus / "pairs.jsonl"))
    assert sorted(manifest["pair_id"]) == sorted(GOOD_IDS)
    reasons = dict(zip(load_skipped(out)["pair_id"], load_skipped(out)["reason"]))
    assert reasons == {**REASONS, "208": "pair id '208' is used for different pairs (lines 23, 24)"}


def test_walk_with_num_pairs_extends_like_the_manifest_and_rerun_reuses_both(bad_corpus, tmp_path):
    full = prepare_manifest(_coco(bad_corpus, tmp_path / "all"))
    all_skipped = load_skipped(tmp_path / "all")
    for k in (3, 9):
        out = tmp_path / f"k{k}"
        part = prepare_manifest(_coco(bad_corpus, out, num_pairs=k))
        pd.testing.assert_frame_equal(part, full.iloc[:k])
        skipped = load_skipped(out)
        pd.testing.assert_frame_equal(skipped, all_skipped.iloc[: len(skipped)])
    before = {p.name: p.read_bytes() for p in (out / MANIFEST, out / SKIPPED)}
    pd.testing.assert_frame_equal(prepare_manifest(_coco(bad_corpus, out, num_pairs=9)), part)
    assert {p.name: p.read_bytes() for p in (out / MANIFEST, out / SKIPPED)} == before


def test_19_num_pairs_over_the_data_uses_all_usable_pairs_and_says_so(bad_corpus, tmp_path):
    out = tmp_path / "study"
    manifest = prepare_manifest(_coco(bad_corpus, out, num_pairs=500))
    assert len(manifest) == len(GOOD_IDS)
    assert load_manifest(out)[1]["num_pairs"] == 500
    assert data_notes(out)[0] == (f"--num-pairs 500: the data holds only {len(GOOD_IDS)} usable pairs; "
                                  f"using all {len(GOOD_IDS)}")


def test_nothing_usable_is_one_line_error_with_the_skip_list_written(bad_corpus, tmp_path):
    data = json.loads((bad_corpus / "captions.json").read_text())
    bad = {c.pair_id for c in CORPUS if c.reason}
    only_bad = {"images": [i for i in data["images"] if i["id"] in bad],
                "annotations": [a for a in data["annotations"] if a["image_id"] in bad]}
    (tmp_path / "bad.json").write_text(json.dumps(only_bad))
    out = tmp_path / "study"
    with pytest.raises(DataError) as err:
        prepare_manifest(_config(out, captions=tmp_path / "bad.json", images=bad_corpus / "images"))
    first = load_skipped(out).iloc[0]
    assert str(err.value) == (
        f"{(tmp_path / 'bad.json').resolve()}: 0 usable image-caption pair(s), a study needs 2; "
        f"{len(bad)} skipped (e.g. pair {first.pair_id}: {first.reason}); see {out / SKIPPED}")
    assert not (out / MANIFEST).exists() and len(load_skipped(out)) == len(bad)


# Case 20: an output directory holding a study of another model --------------------------------
def test_20_study_of_another_model_is_refused_and_nothing_is_overwritten(bad_corpus, tmp_path, tiny_model_dir):
    from modalscope.store import STORE, ActivationStore, StoreMismatch
    from modalscope.study import run_study

    out = tmp_path / "study"
    config = _coco(bad_corpus, out, device="cpu", progress=False, png=False)
    prepare_manifest(config)
    ActivationStore.create(out / STORE, 4, {"residual": 64, "mlp": 176}, 16, {"model": "someone/other-llava"})
    (out / "tables").mkdir()
    (out / "tables/summary.json").write_text("{}\n")
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    config.model = str(tiny_model_dir)
    with pytest.raises(StoreMismatch) as err:
        run_study(config)
    assert str(err.value) == (f"{out / STORE}: holds a study with a different model (someone/other-llava "
                              f"vs {tiny_model_dir.resolve()}); use a new output directory")
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert not (out / TRUNCATED).exists()


# Good pairs give the same statistics with or without bad pairs beside them ---------------------
@pytest.fixture(scope="module")
def two_studies(bad_corpus, tiny_model_dir, tmp_path_factory):
    from modalscope.study import run_study

    root = tmp_path_factory.mktemp("two")
    common = {"model": str(tiny_model_dir), "device": "cpu", "batch_size": 4, "n_perm": 200, "n_boot": 200,
              "png": False, "progress": False, "long_tables": "never", "images": bad_corpus / "images",
              "conditions": ("text", "image")}
    mixed = run_study(StudyConfig(out_dir=root / "mixed", captions=bad_corpus / "captions.json", **common))
    good = run_study(StudyConfig(out_dir=root / "good", captions=bad_corpus / "good.json", **common))
    return mixed, good


@pytest.mark.slow
def test_good_pairs_give_the_same_statistics_beside_bad_pairs_as_alone(two_studies):
    mixed, good = two_studies
    keys = ["site", "layer", "neuron"]
    a = pd.read_parquet(mixed.out_dir / "tables/table3_neurons.parquet").sort_values(keys).reset_index(drop=True)
    b = pd.read_parquet(good.out_dir / "tables/table3_neurons.parquet").sort_values(keys).reset_index(drop=True)
    assert (a["n"] == len(GOOD_IDS)).all()
    pd.testing.assert_frame_equal(a[keys], b[keys])
    order_free = ["n", "mean_diff", "sd_diff", "t_value", "p_value", "q_value", "cohen_d"]
    order_free += [c for c in a.columns if c.startswith(("mean_diff_", "t_value_", "cohen_d_"))]
    for column in order_free:
        np.testing.assert_allclose(a[column], b[column], rtol=1e-4, atol=1e-5, err_msg=column)


@pytest.mark.slow
def test_skips_and_cuts_are_counted_in_the_summary_and_said_in_one_line_each(two_studies):
    mixed, good = two_studies
    summary = json.loads((mixed.out_dir / "tables/summary.json").read_text())
    n_bad = len(REASONS) + len(COCO_ONLY)
    for site in ("residual", "mlp"):
        assert summary[site]["n_inputs"] == len(GOOD_IDS)
        assert (summary[site]["n_skipped"], summary[site]["n_truncated"]) == (n_bad, 1)
    assert json.loads((good.out_dir / "tables/summary.json").read_text())["mlp"]["n_skipped"] == 0
    truncated = pd.read_parquet(mixed.out_dir / TRUNCATED)
    assert truncated["pair_id"].tolist() == ["107"] and truncated["caption_chars"].tolist() == [10_000]
    assert any(m.startswith(f"{n_bad} pair(s) skipped in both conditions") for m in mixed.messages)
    assert f"1 caption(s) cut to fit the model's context; listed in {mixed.out_dir / TRUNCATED}" in mixed.messages
    assert all("\n" not in m for m in mixed.messages)


def test_cli_prints_a_bad_data_file_in_one_line_and_exits_2(tmp_path):
    from cli_run import modalscope

    path = tmp_path / "pairs.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "A."}\n["b.jpg", "B."]\n')
    done = modalscope("run", "--model", "unused", "--jsonl", path, "--out", tmp_path / "study")
    assert done.returncode == 2
    assert done.stderr == (f"modalscope: error: {path}, line 2: a JSON array; expected "
                           '{"image": ..., "caption": ..., "id": ...}; fix or delete the line\n')
    assert not (tmp_path / "study" / MANIFEST).exists()
