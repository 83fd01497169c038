"""`modalscope ablate` on a family's real-file checkpoint (issue 26), run at the end of each
family's end-to-end study (tests/test_families_end_to_end.py), on its study and loaded model.

What one family's module tree and processor could break, checked on that family:
- the readouts are the brute-force log-likelihood of the caption (image and text inputs: the
  family's pixel_values, image_grid_thw, image_sizes, pixel_attention_mask, mm_token_type_ids);
- the mlp hook sets down_proj's input, the residual hook what the next layer receives;
- the generated-caption readout's left-padded prompts give each row the caption it gets alone;
- the whole command (a user set at both sites, mean or zero ablation, the image, text and
  caption_words readouts) writes its table and report section, and leaves
  the model as it found it (its logits, and its hooks: Qwen3-VL keeps its own deepstack hooks).
Small on purpose (1 random set, 2 pairs, 4 generated tokens): the defaults (100 random
sets, 24 tokens) are the same code with bigger numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

DRAWN = ["red", "circle", "one"]  # drawn-world labels given to every pair (a random model scores ~0)


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _brute(model, inputs, caption) -> torch.Tensor:
    with torch.inference_mode():
        logits = model(**inputs, use_cache=False).logits
    logp = torch.log_softmax(logits.double(), dim=-1)
    out = torch.zeros(caption.shape[0], dtype=torch.float64)
    for row, pos in caption.nonzero().tolist():
        out[row] += logp[row, pos - 1, inputs["input_ids"][row, pos]]
    return out


def check_family_ablation(out: Path, loaded, zero_only: bool = False) -> None:
    from modalscope.ablation import AblationSettings, run_ablation
    from modalscope.ablation.generated import generate_captions, prompt_batch
    from modalscope.ablation.hooks import Ablation, build_plan
    from modalscope.ablation.readouts import ReadoutBuilder, caption_loglik, repeat_rows
    from modalscope.ablation.report import ablation_section
    from modalscope.data.manifest import load_manifest, save_manifest
    from modalscope.record.inputs import PromptBuilder

    model, adapter = loaded.model, loaded.adapter
    readouts = ReadoutBuilder(PromptBuilder.for_model(loaded, "content"))
    text = loaded.model.config.get_text_config()
    widths = {"residual": text.hidden_size, "mlp": text.intermediate_size}
    images = [Image.new("RGB", (300, 200), (200, 30, 30)), Image.new("RGB", (64, 128), (30, 30, 200))]
    captions = ["A red square on a white wall.", "Two dogs <image> play </s> in the snow."]

    # the readouts: brute force, and the caption's own tokens
    tok = loaded.processor.tokenizer
    for inputs, caption in (readouts.image_batch(images, captions), readouts.text_batch(captions)):
        ours = caption_loglik(model, adapter, inputs, caption)
        torch.testing.assert_close(ours, _brute(model, inputs, caption), rtol=1e-5, atol=1e-4)
        assert [tok.decode(inputs["input_ids"][r][caption[r]]).strip() for r in range(2)] == captions

    # the hooks act at the recorded sites
    seen = {}

    def keep(name, tensor) -> None:
        seen.setdefault(name, tensor)

    layers = adapter.layers(model)
    down = layers[0].mlp.down_proj.register_forward_hook(lambda m, a, o: keep("mlp", a[0]))
    nxt = layers[1].register_forward_pre_hook(lambda m, a, kw: keep("residual", a[0] if a else kw["hidden_states"]),
                                              with_kwargs=True)
    value = {("mlp", 0): torch.randn(widths["mlp"]), ("residual", 0): torch.randn(widths["residual"])}
    index = {("mlp", 0): np.array([1, 4]), ("residual", 0): np.array([2, 7])}
    inputs, caption = readouts.text_batch(captions)
    try:
        with Ablation(model, adapter, build_plan([index], [value], widths, repeat=2)):
            caption_loglik(model, adapter, inputs, caption)
    finally:
        down.remove()
        nxt.remove()
    for (site, layer), idx in index.items():
        got = seen[site][..., idx]
        assert torch.equal(got, value[(site, layer)][idx].to(got.dtype).expand_as(got)), site

    # generation: batched, left-padded, under a plan whose first spec is empty = each image alone
    prompts = prompt_batch(readouts, images)
    plan = build_plan([{}, {("mlp", 0): np.arange(5)}], [{}, {("mlp", 0): torch.zeros(widths["mlp"])}], widths, 2)
    with Ablation(model, adapter, plan):
        both = generate_captions(loaded, repeat_rows(prompts, 2), 4)
    alone = [generate_captions(loaded, prompt_batch(readouts, [image]), 4)[0] for image in images]
    assert both[:2] == alone

    # the command: drawn-world labels on every pair, so caption_words runs too
    manifest, meta = load_manifest(out)
    manifest["concepts"] = pd.Series([list(DRAWN)] * len(manifest), dtype=object)
    save_manifest(manifest, out, meta)
    members = out / "members.csv"
    pd.DataFrame({"site": ["mlp", "mlp", "residual"], "layer": [0, 1, 1], "neuron": [3, 5, 9],
                  "set": "mine"}).to_csv(members, index=False)
    probe = readouts.text_batch(captions)[0]
    with torch.inference_mode():
        before, hooks = model(**probe, use_cache=False).logits, _hooks(model)
    methods = ("zero",) if zero_only else ("mean",)
    result = run_ablation(out, AblationSettings(sets=(str(members),), methods=methods, n_random=1, n_pairs=2,
                                                new_tokens=4, progress=False), loaded=loaded)
    with torch.inference_mode():
        assert torch.equal(model(**probe, use_cache=False).logits, before) and _hooks(model) == hooks
    frame = result.frame
    assert {"image", "text", "generated_colour_acc", "generated_shape_acc", "generated_count_acc"} == \
        set(frame["readout"])  # no size label: no size readout
    mine = frame[frame["set"] == "mine"]
    assert set(mine["site"]) == {"mlp", "residual"} and set(mine["method"]) == set(methods)
    assert (frame["n_random"] == 1).all() and (frame["n_pairs"] == 2).all()
    assert np.isfinite(frame[["effect", "p_random", "random_mean"]].to_numpy()).all()
    generated = frame[frame["readout"].str.startswith("generated_")]
    assert generated["effect"].between(-1, 1).all()
    assert (out / "tables" / "ablation.parquet").exists() and (out / "figures" / "ablation.html").exists()
    section = ablation_section(out)
    assert section.startswith('<section id="ablation">') and "generated caption" in section
