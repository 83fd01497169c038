"""`modalscope shrink MODEL OUT`: the dry run of a real study, from a hub id or a local folder."""

from __future__ import annotations

import filecmp
import json
import os

import pytest
from transformers import AutoConfig

from cli_run import modalscope
from real_models import real_files


def test_shrink_keeps_the_real_files_and_marks_the_weights_random(tmp_path):
    real = real_files("llava-1.5")
    out = tmp_path / "llava-shrunk"
    done = modalscope("shrink", real, out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out}: random weights")
    config, original = AutoConfig.from_pretrained(out), AutoConfig.from_pretrained(real)
    assert config.text_config.num_hidden_layers == 4 < original.text_config.num_hidden_layers  # --layers' default
    assert config.text_config.vocab_size == original.text_config.vocab_size
    assert config.vision_config.image_size == original.vision_config.image_size
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        if (real / name).exists():
            assert filecmp.cmp(real / name, out / name, shallow=False), name
    note = json.loads((out / "modalscope-random-weights.json").read_text())
    assert note["random_weights"] and note["built_by"] == "modalscope shrink"
    assert note["note"] == (f"random weights, shrunk from {real}: its numbers say nothing about any trained model")
    again = modalscope("shrink", real, out)  # a finished checkpoint is kept, not rebuilt
    assert again.returncode == 0


@pytest.mark.parametrize("args, message", [
    (("not-a-folder-nor-id",), "not-a-folder-nor-id: not a model folder nor a hub id (owner/name)"),
    (("nobody/no-such-model-here",), "nobody/no-such-model-here: its config, tokenizer and processor files could "
                                      "not be read from the hub or its cache"),
])
def test_shrink_says_in_one_line_what_it_cannot_read(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    done = modalscope("shrink", *args, tmp_path / "out")
    assert done.returncode != 0 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_shrink_refuses_a_folder_that_is_not_empty(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    done = modalscope("shrink", real_files("llava-1.5"), out)
    assert done.returncode != 0 and f"{out}: not empty; give a new folder" in done.stderr
    assert os.listdir(out) == ["notes.txt"]
