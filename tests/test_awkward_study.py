"""The edge-case corpus through `modalscope run` with default settings on the real LLaVA-1.5
files: exit 0, and every pair is either used, with content tokens that decode to its caption,
or listed in skipped.parquet with a reason."""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image

from awkward import AWKWARD
from cli_run import modalscope
from modalscope.data.manifest import MANIFEST


def _plain(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


@pytest.mark.slow
def test_awkward_captions_run_end_to_end_on_the_real_llava_files(real_llava_dir, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    lines = []
    for i, caption in enumerate(AWKWARD):
        size = (int(rng.integers(64, 400)), int(rng.integers(64, 400)))
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / f"images/{i}.png")
        lines.append(json.dumps({"image": f"images/{i}.png", "caption": caption, "id": f"p{i}"}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "study"
    done = modalscope("run", "--model", str(real_llava_dir),
                           "--jsonl", str(tmp_path / "pairs.jsonl"), "--out", str(out), "--quiet",
                           "--conditions", "text,image,image_text",  # the joint caption's tokens are checked too
                           "--no-png")  # the browser's copies are tests/figures' business
    assert done.returncode == 0, done.stderr[-3000:]

    manifest = pd.read_parquet(out / MANIFEST)
    skipped = pd.read_parquet(out / "skipped.parquet")
    ids = {f"p{i}" for i in range(len(AWKWARD))}
    assert set(manifest["pair_id"]) | set(skipped["pair_id"]) == ids
    assert not set(manifest["pair_id"]) & set(skipped["pair_id"])
    assert skipped["reason"].str.len().gt(0).all()
    unusable = {f"p{i}": c for i, c in enumerate(AWKWARD) if not c.strip() or c == "\u200b" * 3}
    assert dict(zip(skipped["pair_id"], skipped["reason"])) == {
        i: "caption has no visible characters" if c.strip() else
        ("caption is empty" if c == "" else "caption is whitespace only") for i, c in unusable.items()}

    from modalscope.models.loading import load_model
    from modalscope.record.inputs import PromptBuilder

    loaded = load_model(str(real_llava_dir), device="cpu")
    builder = PromptBuilder.for_model(loaded, "content")
    tokenizer = loaded.processor.tokenizer
    captions = manifest["caption"].tolist()
    images = [Image.open(p).convert("RGB") for p in manifest["image_path"]]
    text = builder.text_batch(captions)
    joint, streams = builder.image_text_batch(images, captions)
    store = zarr.open_group(str(out / "activations.zarr"), mode="r")
    assert store["tokens/text"][:].tolist() == text.n_content.tolist()
    assert store["tokens/image_text_caption"][:].tolist() == streams["image_text_caption"].sum(1).tolist()
    for row, caption in enumerate(captions):
        assert _plain(tokenizer.decode(text.inputs["input_ids"][row][text.content[row]])) == _plain(caption)
        caption_ids = joint.inputs["input_ids"][row][streams["image_text_caption"][row]]
        assert _plain(tokenizer.decode(caption_ids)) == _plain(caption)
    table3 = pd.read_parquet(out / "tables" / "table3_neurons.parquet")
    assert len(table3) and np.isfinite(table3["mean_diff_matched_max"]).all()
    assert (out / "report.html").exists()
