"""A plain causal LM loads through its family file (AutoModelForCausalLM, tokenizer as its
processor); as --model it is refused in one line, since it has no image condition."""

from __future__ import annotations

import torch

from cli_run import modalscope


def _base(tiny_model_dir, folder):
    from transformers import AutoTokenizer, LlamaForCausalLM, LlavaConfig

    config = LlavaConfig.from_pretrained(tiny_model_dir).text_config
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def test_a_plain_lm_loads_with_its_tokenizer_and_records_the_text_path(tiny_model_dir, loaded, tmp_path):
    from modalscope.models.loading import load_model
    from modalscope.record.extract import for_base, reduce_content
    from modalscope.record.hooks import Recorder
    from modalscope.record.inputs import PromptBuilder

    base = load_model(str(_base(tiny_model_dir, tmp_path / "base")), device="cpu")
    assert base.adapter.family == "causal LM" and not base.adapter.has_vision
    assert base.adapter.num_layers(base.model) == 4 and base.adapter.width(base.model, "mlp") == 176
    text = PromptBuilder.for_model(loaded, "content").text_batch(["A red circle.", "Two blue squares on white."])
    batch = for_base(text, base)
    with Recorder(base.model, base.adapter, ["residual"]) as rec:
        got = reduce_content(base, rec, batch)["residual"]
    with torch.inference_mode():
        hidden = base.model.model(**batch.inputs, output_hidden_states=True).hidden_states
    for b in range(2):
        rows = hidden[1][b][batch.content[b]]
        torch.testing.assert_close(got["max"][b, 0], rows.max(0).values)


def test_a_plain_lm_as_model_is_refused_in_one_line(tiny_model_dir, coco_files, tmp_path):
    folder = _base(tiny_model_dir, tmp_path / "base")
    captions, images = coco_files
    done = modalscope("run", "--model", str(folder), "--captions",
                           str(captions), "--images", str(images), "--out", str(tmp_path / "study"), "--quiet")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert "a language model without vision (llama)" in done.stderr and "--base-model" in done.stderr
    assert not (tmp_path / "study").exists()
