"""Ablation (issue 26) on the tiny LLaVA: hooks leave no trace and equal weight edits, the readout
is the brute-force log-likelihood, the sets are Table 3's, random sets are matched, a planted set
is found, and `modalscope ablate` writes its table, figure and section (and resumes)."""

from __future__ import annotations

import html

import copy
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from modalscope.ablation.effects import mean_ci, p_against_random
from modalscope.ablation.hooks import Ablation, build_plan
from modalscope.ablation.readouts import ReadoutBuilder, caption_loglik, repeat_rows
from modalscope.ablation.sets import (
    NeuronSet,
    concept_sets,
    random_sets,
    select,
    table_sets,
    user_sets,
)
from modalscope.data.images import load_rgb
from modalscope.data.manifest import load_manifest
from modalscope.record.inputs import PromptBuilder

sys.path.insert(0, str(Path(__file__).parent))
from planted_ablation import PLANTED, PLANTED_LAYER, planted_model

WIDTHS = {"residual": 64, "mlp": 176}


@pytest.fixture(scope="module")
def readouts(loaded):
    return ReadoutBuilder(PromptBuilder.for_model(loaded, "content"))


@pytest.fixture(scope="module")
def pairs(small_study):
    manifest = load_manifest(small_study)[0]
    return manifest["caption"].tolist()[:3], [load_rgb(p) for p in manifest["image_path"][:2]]


def _logits(model, inputs):
    with torch.inference_mode():
        return model(**inputs, use_cache=False).logits


def _plan(values=None):
    specs = [{("mlp", 1): np.array([3, 17, 40]), ("residual", 2): np.array([5, 9])}]
    values = values or [{k: torch.randn(WIDTHS[k[0]]) for k in specs[0]}]
    return build_plan(specs, values, WIDTHS, repeat=3)


def test_hooks_leave_no_trace(loaded, readouts, pairs):
    inputs, _ = readouts.text_batch(pairs[0])
    before = _logits(loaded.model, inputs)
    with Ablation(loaded.model, loaded.adapter, _plan()):
        during = _logits(loaded.model, inputs)
    after = _logits(loaded.model, inputs)
    assert not torch.equal(before, during)
    assert torch.equal(before, after)
    # a failing forward removes them too
    with pytest.raises(RuntimeError, match="planned for 3 rows"), Ablation(loaded.model, loaded.adapter, _plan()):
        _logits(loaded.model, repeat_rows(inputs, 2))
    assert torch.equal(before, _logits(loaded.model, inputs))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in loaded.model.modules())


def test_k0_changes_nothing(loaded, readouts, pairs):
    inputs, caption = readouts.text_batch(pairs[0])
    intact = caption_loglik(loaded.model, loaded.adapter, inputs, caption)
    specs = [{}, {("mlp", 1): np.array([], dtype=np.int64)}, {("mlp", 1): np.array([3])}]
    values = [{}, {("mlp", 1): torch.ones(176)}, {("mlp", 1): torch.ones(176)}]
    plan = build_plan(specs, values, WIDTHS, repeat=3)
    with Ablation(loaded.model, loaded.adapter, plan):
        ll = caption_loglik(loaded.model, loaded.adapter, repeat_rows(inputs, 3), caption.repeat(3, 1)).view(3, 3)
    torch.testing.assert_close(ll[0], intact, rtol=0, atol=1e-9)
    torch.testing.assert_close(ll[1], intact, rtol=0, atol=1e-9)
    assert (ll[2] != intact).all()


@pytest.mark.parametrize("method", ["zero", "mean"])
def test_ablation_equals_weight_edit(loaded, readouts, pairs, method):
    """mlp: setting neurons J of down_proj's input to m equals down_proj with columns J zeroed and
    bias W[:, J] m_J; residual: the next layer receives the ablated values."""
    inputs, _ = readouts.text_batch(pairs[0])
    index = np.array([3, 17, 40])
    value = torch.zeros(176) if method == "zero" else torch.randn(176)
    plan = build_plan([{("mlp", 1): index}], [{("mlp", 1): value}], WIDTHS, repeat=3)
    with Ablation(loaded.model, loaded.adapter, plan):
        hooked = _logits(loaded.model, inputs)
    edited = copy.deepcopy(loaded.model)
    down = loaded.adapter.layers(edited)[1].mlp.down_proj
    with torch.no_grad():
        bias = down.weight[:, index] @ value[index]
        down.weight[:, index] = 0
        down.bias = torch.nn.Parameter(bias)
    torch.testing.assert_close(hooked, _logits(edited, inputs), rtol=1e-5, atol=1e-5)

    seen = []
    nxt = loaded.adapter.layers(loaded.model)[3]
    handle = nxt.register_forward_pre_hook(
        lambda m, a, kw: seen.append(a[0] if a else kw["hidden_states"]), with_kwargs=True)
    plan = build_plan([{("residual", 2): np.array([5, 9])}], [{("residual", 2): value[:64]}], WIDTHS, repeat=3)
    try:
        with Ablation(loaded.model, loaded.adapter, plan):
            _logits(loaded.model, inputs)
    finally:
        handle.remove()
    assert torch.equal(seen[0][..., [5, 9]], value[[5, 9]].expand_as(seen[0][..., [5, 9]]))


def _brute(model, inputs, caption) -> torch.Tensor:
    logp = torch.log_softmax(_logits(model, inputs).double(), dim=-1)
    ids = inputs["input_ids"]
    out = torch.zeros(ids.shape[0], dtype=torch.float64)
    for row, pos in caption.nonzero().tolist():
        out[row] += logp[row, pos - 1, ids[row, pos]]
    return out


def test_loglik_is_brute_force(loaded, readouts, pairs):
    captions, images = pairs
    tok = loaded.processor.tokenizer
    for inputs, caption in (readouts.image_batch(images, captions[:2]), readouts.text_batch(captions)):
        ours = caption_loglik(loaded.model, loaded.adapter, inputs, caption)
        torch.testing.assert_close(ours, _brute(loaded.model, inputs, caption), rtol=1e-5, atol=1e-4)
        for row, text in enumerate(captions[: len(ours)]):
            assert tok.decode(inputs["input_ids"][row][caption[row]]).strip() == text
    inputs, caption = readouts.image_batch(images, captions[:2])
    assert (inputs["input_ids"] == loaded.model.config.image_token_id).sum(1).tolist() == [576, 576]
    last = caption.float().cumsum(1).argmax(1)  # nothing after the caption is run
    assert (last == inputs["attention_mask"].sum(1) - 1).all()


def test_sets_from_table3(small_study):
    table = pd.read_parquet(small_study / "tables" / "table3_neurons.parquet")
    by_site = {s: g for s, g in table.groupby("site")}
    sets, notes = table_sets(by_site, ["text", "image", "xmodal"], 5, 4, n_bands=2)
    mlp = by_site["mlp"]
    text = next(s for s in sets if s.name == "text" and s.site == "mlp" and s.band == "all")
    passing = mlp[(mlp["q_value"] < 0.05) & (mlp["mean_diff"] > 0)]
    top = passing.nlargest(5, "t_value")
    assert text.k == 5 and {(r.layer, r.neuron) for r in top.itertuples()} == \
        {(layer, int(n)) for layer, ns in text.neurons.items() for n in ns}
    image = select(mlp, "image", 5)
    assert (image["mean_diff"] < 0).all() and (image["q_value"] < 0.05).all()
    assert {s.band for s in sets} == {"all", "0-1", "2-3"}
    assert any("xmodal" in n for n in notes)  # the tiny study has no significant cross-modal neuron


def test_random_sets_are_matched():
    target = NeuronSet("t", "mlp", "all", {0: np.array([1, 2, 3]), 2: np.array([7])})
    draws = random_sets(target, 176, 100, np.random.default_rng(0))
    assert len(draws) == 100
    for d in draws:
        assert {k: len(v) for k, v in d.items()} == {0: 3, 2: 1}
        assert len(set(d[0])) == 3 and not set(d[0]) & {1, 2, 3} and 7 not in d[2]
        assert all(0 <= n < 176 for v in d.values() for n in v)
    assert len({tuple(d[0]) for d in draws}) > 90


def test_user_sets_are_checked(tmp_path):
    path = tmp_path / "mine.csv"
    pd.DataFrame({"site": ["mlp", "mlp"], "layer": [1, 1], "neuron": [3, 3]}).to_csv(path, index=False)
    (only,) = user_sets(path, WIDTHS, 4)
    assert only.name == "mine" and only.k == 1 and only.band == "1-1"
    pd.DataFrame({"site": ["mlp"], "layer": [1], "neuron": [176]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="neuron 176: outside the study"):
        user_sets(path, WIDTHS, 4)


def test_p_and_ci():
    null = np.linspace(-1, 1, 100)
    assert p_against_random(-5.0, null) == pytest.approx(1 / 101)
    assert p_against_random(float(np.median(null)), null) == 1.0
    d = np.array([1.0, 2.0, 4.0])
    mean, low, high = mean_ci(d)
    assert mean == pytest.approx(7 / 3) and low < mean < high
    from scipy import stats
    assert (low, high) == pytest.approx(stats.t.interval(0.95, 2, loc=d.mean(), scale=stats.sem(d)))


@pytest.fixture
def study_copy(small_study, tmp_path) -> Path:
    out = tmp_path / "study"
    shutil.copytree(small_study, out)
    return out


def test_planted_set_is_found(loaded, study_copy):
    from modalscope.ablation import AblationSettings, run_ablation

    manifest = load_manifest(study_copy)[0]
    planted = planted_model(loaded, manifest["caption"].tolist())
    table = study_copy / "planted.csv"
    pd.DataFrame({"site": "mlp", "layer": PLANTED_LAYER, "neuron": PLANTED, "set": "planted"}).to_csv(table, index=False)
    result = run_ablation(study_copy, AblationSettings(sets=(str(table),), methods=("zero",), n_random=100,
                                                       n_pairs=6, readouts=("text",), batch_size=128,
                                                       progress=False), loaded=planted)
    (row,) = result.frame.itertuples()
    assert row.set == "planted" and row.k == 4 and row.n_random == 100 and row.n_pairs == 6
    assert row.effect < -1.0 and row.ci_high < 0  # the captions lose more than a nat each
    assert row.random_low > -0.5 and row.random_high < 0.5  # any 4 other neurons of that layer: little
    assert row.p_random == pytest.approx(1 / 101)


def test_ablate_command(study_copy, capsys, monkeypatch):
    """`modalscope ablate` end to end on the tiny study: Ctrl-C keeps the finished forwards, the
    same command continues; the table's columns, its figure and report section; a rerun of
    finished work runs nothing."""
    from modalscope.ablation import AblationSettings, run_ablation
    from modalscope.ablation import readouts as module
    from modalscope.ablation.report import ablation_section, card_lines
    from modalscope.cli import main

    command = ["ablate", str(study_copy), "--k", "3", "--sets", "text,image", "--sites", "mlp", "--random", "100",
               "--pairs", "2", "--readouts", "text", "--method", "mean,zero", "--batch-size", "32", "--device", "cpu",
               "--quiet"]
    real, calls = module.caption_loglik, []

    def stop_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "caption_loglik", stop_on_third)
    assert main(command) == 130
    assert "rerun the same command to continue" in capsys.readouterr().err
    with np.load(study_copy / "ablation" / "progress.npz") as saved:
        assert saved["done_text"].sum() == 2 * 16 * 2  # two forwards of 16 row kinds x 2 pairs
    monkeypatch.setattr(module, "caption_loglik", real)
    assert main(command) == 0
    # the study file now repeats the ablation (issue 26: a standalone `ablate` records its settings)
    from modalscope.study_file import read as read_study_file

    recorded = read_study_file(study_copy / "study.toml")
    assert (recorded["ablation"], recorded["ablation_k"], tuple(recorded["ablation_sets"])) == (True, 3, ("text", "image"))
    assert (tuple(recorded["ablation_method"]), recorded["ablation_random"], recorded["ablation_pairs"]) == (
        ("mean", "zero"), 100, 2)
    assert tuple(recorded["ablation_readouts"]) == ("text",)
    frame = pd.read_parquet(study_copy / "tables" / "ablation.parquet")
    assert list(frame.columns[:12]) == ["set", "site", "layer_band", "k", "method", "readout", "effect", "ci_low",
                                        "ci_high", "p_random", "n_pairs", "n_random"]
    assert len(frame) == 4 and set(frame["method"]) == {"mean", "zero"} and (frame["n_random"] == 100).all()
    assert ((frame["p_random"] >= 1 / 101) & (frame["p_random"] <= 1)).all()
    assert (frame["ci_low"] <= frame["effect"]).all() and (frame["effect"] <= frame["ci_high"]).all()
    assert (study_copy / "figures" / "ablation.html").exists()
    section = ablation_section(study_copy)
    assert section.startswith('<section id="ablation">') and "fig-ablation" in section
    assert "table   " in capsys.readouterr().out
    members = pd.read_parquet(study_copy / "tables" / "ablation_sets.parquet")
    assert len(members) == 6 and set(members["set"]) == {"text", "image"}
    one = members.iloc[0]
    lines = card_lines(study_copy, one["site"], int(one["layer"]), int(one["neuron"]))
    assert len(lines) == 2 and all(line.startswith(f"In the ablated set {one['set']} · mlp") for line in lines)
    assert card_lines(study_copy, "residual", 0, 0) == []
    # the report carries the section (with a link) and the neuron's own card says it was ablated
    from modalscope.cards.card import card_page, neuron_card
    from modalscope.cards.thumbnails import Thumbnails
    from modalscope.report.page import render_report

    page = render_report(study_copy)
    assert '<a href="#ablation">ablation</a>' in page and '<section id="ablation">' in page
    assert page.index('<section id="ablation">') < page.index('id="provenance"')
    card = card_page(neuron_card(study_copy, one["site"], int(one["layer"]), int(one["neuron"])), Thumbnails())
    assert all(f'<p class="note ablation">{html.escape(line)}</p>' in card for line in lines)
    (again_sets,) = {s.name for s in user_sets(study_copy / "tables" / "ablation_sets.parquet", WIDTHS, 4)} - {"image"}
    assert again_sets == "text"  # the members table is a --sets FILE

    again = run_ablation(study_copy, AblationSettings(k=3, sets=("text", "image"), sites=("mlp",), n_pairs=2,
                                                      readouts=("text",), methods=("mean", "zero"),
                                                      progress=False, device="cpu"))
    assert again.rows == 0  # all from the progress file
    pd.testing.assert_frame_equal(again.frame, frame)


def test_image_readout_runs(loaded, study_copy):
    from modalscope.ablation import AblationSettings, run_ablation

    result = run_ablation(study_copy, AblationSettings(k=2, sets=("text",), sites=("residual",), n_random=2,
                                                       n_pairs=2, readouts=("image",), progress=False),
                          loaded=loaded)
    (row,) = result.frame.itertuples()
    assert row.readout == "image" and row.n_random == 2 and np.isfinite(row.effect)
    assert result.rows == (1 + 1 + 2) * 2


def test_loglik_on_real_llava_files(real_loaded):
    """The same brute-force check on llava-1.5-7b-hf's own tokenizer, processor and template (a
    caption holding control strings stays text); each other family was checked once by hand
    (see the ablation note in docs/method.md §12)."""
    readouts = ReadoutBuilder(PromptBuilder.for_model(real_loaded, "content"))
    from PIL import Image

    captions = ["A red square on a white wall.", "Two dogs <image> play </s> in the snow."]
    for inputs, caption in (readouts.image_batch([Image.new("RGB", (300, 200))] * 2, captions),
                            readouts.text_batch(captions)):
        ours = caption_loglik(real_loaded.model, real_loaded.adapter, inputs, caption)
        torch.testing.assert_close(ours, _brute(real_loaded.model, inputs, caption), rtol=1e-5, atol=1e-4)
        tok = real_loaded.processor.tokenizer
        assert [tok.decode(inputs["input_ids"][r][caption[r]]) for r in range(2)] == captions


def test_concept_readout_scores_only_the_concept_words(loaded, readouts, study_copy):
    """image_concept / text_concept: the log-likelihood of the caption's concept words only (a
    plural counts); a pair whose caption lacks them is left out of that readout's n_pairs."""
    from PIL import Image

    from modalscope.ablation import AblationSettings, run_ablation

    captions = ["Two blue circles on a yellow background.", "A picture of three green squares."]
    words = [["circle", "blue"], ["circle"]]
    tok = loaded.processor.tokenizer
    for inputs, mask in (readouts.text_batch(captions, words),
                         readouts.image_batch([Image.new("RGB", (32, 32))] * 2, captions, words)):
        assert tok.decode(inputs["input_ids"][0][mask[0]]).split() == ["blue", "circles"]
        assert not mask[1].any()
    result = run_ablation(study_copy, AblationSettings(k=2, sets=("text",), sites=("mlp",), n_random=5, n_pairs=8,
                                                       readouts=("text_concept",), concept_words=("circle",),
                                                       progress=False), loaded=loaded)
    (row,) = result.frame.itertuples()
    scored = load_manifest(study_copy)[0]["caption"].iloc[8:16]
    assert row.readout == "text_concept" and row.n_pairs == scored.str.contains("circle").sum() == 3
    assert np.isfinite(row.effect) and np.isfinite(row.p_random)


def test_concept_sets_are_the_strongest_imagery_neurons():
    rows = [("mlp", "max", 0, 1, "red", 0.9, 0.8, True), ("mlp", "max", 0, 2, "red", 0.95, 0.7, True),
            ("mlp", "max", 1, 3, "red", 0.99, 0.99, False), ("mlp", "max", 1, 4, "red", 0.1, 0.05, True),
            ("mlp", "max", 1, 5, "blue", 0.9, 0.9, True), ("mlp", "mean", 1, 6, "red", 0.99, 0.99, True)]
    table = pd.DataFrame(rows, columns=["site", "stat", "layer", "neuron", "concept", "auroc_text", "auroc_image",
                                        "agree"])
    (red,), _ = concept_sets(table, ["red"], ["mlp"], "max", 2, 2)
    assert red.name == "concept:red" and {k: v.tolist() for k, v in red.neurons.items()} == {0: [1], 1: [4]}
    every, _ = concept_sets(table, None, ["mlp"], "max", 5, 2)
    assert [s.name for s in every] == ["concept:red", "concept:blue"] and every[0].k == 3
    with pytest.raises(ValueError, match="concept:green: the study's concepts are red, blue"):
        concept_sets(table, ["green"], ["mlp"], "max", 2, 2)


def test_mean_ablation_values_are_the_first_halfs_means(small_study):
    """The value of a mean ablation: the neuron's mean over the first half of the manifest (inputs
    0-7 of 16), the store's mean reduction, as Table 1 lists it; the scored pairs are 8-15."""
    from modalscope.ablation.run import _means
    from modalscope.store import STORE, ActivationStore

    store = ActivationStore.read(small_study / STORE)
    got = _means(store, {("mlp", 1)}, "text", 8)[("mlp", 1)].numpy()
    t1 = pd.read_parquet(small_study / "tables" / "table1_activations.parquet",
                         filters=[("site", "==", "mlp"), ("layer", "==", 1), ("modality", "==", "text")])
    want = t1[t1["input_index"] < 8].groupby("neuron")["mean_activation"].mean().to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_effect_interval_covers_a_known_mean_and_the_random_p_is_uniform():
    """Known truth: per-pair effects drawn around a mean of -0.3 (normal, and skewed gamma) cover it
    in 93-97% of 2,000 studies of 40 pairs; an observed effect drawn like its 100 random sets gives
    a p whose rate below 0.05 is 0.05 within simulation error."""
    rng = np.random.default_rng(5)
    for draw in (lambda: rng.normal(-0.3, 1.0, 40), lambda: rng.gamma(4.0, 0.5, 40) - 2.0 - 0.3):
        hits = 0
        for _ in range(2000):
            _, low, high = mean_ci(draw())
            hits += low <= -0.3 <= high
        assert 0.93 <= hits / 2000 <= 0.97
    p = np.array([p_against_random(x[0], x[1:]) for x in rng.normal(size=(4000, 101))])
    assert 0.035 <= np.mean(p <= 0.05) <= 0.065
