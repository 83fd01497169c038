"""Models that cannot be used are refused in one line, before weights load or DIR is written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from cli_run import Done, modalscope
from real_models import real_files


def _run(args: list[str], tmp_path: Path, capsys=None) -> Done:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": "a.png", "caption": "A dog.", "id": 1}) + "\n")
    return modalscope("run", "--jsonl", pairs, "--out", tmp_path / "study", "--quiet", *args)


def _one_line(done: Done, *words: str) -> str:
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("modalscope: error: "), done.stderr
    for word in words:
        assert word in done.stderr, done.stderr
    return done.stderr


def test_unsupported_model_type_is_refused_from_the_config_alone(real_llava_dir, tmp_path, capsys):
    """A family modalscope has no adapter for (transformers knows it): refused from config.json,
    naming the supported types; the folder's weights are never read."""
    folder = tmp_path / "idefics2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "idefics2"}))
    done = _run(["--model", str(folder)], tmp_path, capsys)
    _one_line(done, "model type 'idefics2' is not supported yet", "supported: llava, llava_next, qwen2_5_vl")
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("name", ["llava-next", "qwen2.5-vl", "qwen3-vl", "smolvlm"])
def test_a_repository_without_weights_is_one_line(name, tmp_path, capsys):
    """The real repositories' small files hold no weights: config and processor pass, the
    weights fail, in one line, before anything is written."""
    done = _run(["--model", str(real_files(name))], tmp_path, capsys)
    _one_line(done, "cannot load its weights")
    assert not (tmp_path / "study").exists()


def test_missing_local_folder_is_one_line(tmp_path, capsys):
    done = _run(["--model", str(tmp_path / "no-such-model")], tmp_path, capsys)
    _one_line(done, "no such folder")
    done = _run(["--model", str(tmp_path / "pairs.jsonl")], tmp_path, capsys)
    _one_line(done, "not a model folder")
    assert not (tmp_path / "study").exists()


def test_unreachable_hub_id_says_offline_and_that_a_local_folder_works(tmp_path, capsys):
    """These machines have no network: the hub lookup fails (after huggingface_hub's retries)."""
    done = _run(["--model", "llava-hf/llava-1.5-7b-hf"], tmp_path, capsys)
    _one_line(done, "--model llava-hf/llava-1.5-7b-hf", "offline?", "local folder")
    assert not (tmp_path / "study").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_cuda_is_one_line(real_llava_dir, tmp_path, capsys):
    done = _run(["--model", str(real_llava_dir), "--device", "cuda"], tmp_path, capsys)
    _one_line(done, "--device cuda: torch sees no CUDA GPU", "--device cpu")
    assert not (tmp_path / "study").exists()


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_processor_needing_a_missing_package_names_what_to_install():
    """Qwen2.5-VL's real processor files make transformers build a video processor, which
    exists only for torchvision (not installed beside the CPU torch)."""
    from modalscope.models.loading import ModelError, load_processor

    folder = real_files("qwen2.5-vl")
    with pytest.raises(ModelError) as err:
        load_processor(str(folder))
    message = str(err.value)
    assert "\n" not in message and "needs a package that is not installed" in message
    assert "pip install torchvision" in message


def test_shrunk_checkpoint_keeps_the_real_files_but_depth_and_width(real_llava_dir):
    """Vocabulary, special-token ids, image geometry, context, processor and template are the
    real repository's; only layers and widths are small."""
    folder = real_files("llava-1.5")
    real = json.loads((folder / "config.json").read_text())
    built = json.loads((real_llava_dir / "config.json").read_text())
    for key in ("image_token_index", "pad_token_id", "vision_feature_layer", "vision_feature_select_strategy"):
        assert built[key] == real[key]
    assert built["text_config"]["vocab_size"] == real["text_config"]["vocab_size"] == 32064
    assert built["text_config"]["max_position_embeddings"] == 4096
    assert (built["vision_config"]["image_size"], built["vision_config"]["patch_size"]) == (336, 14)
    assert built["text_config"]["num_hidden_layers"] == 2
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json",
                 "processor_config.json", "special_tokens_map.json"):
        assert (real_llava_dir / name).read_bytes() == (folder / name).read_bytes()
