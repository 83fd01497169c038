"""The caption_words readout (the accuracy of generated captions' concept words) and the study
file's [ablation] section, on the tiny LLaVA and the small study.

The tiny model writes nonsense (its accuracy is ~0), so the scoring is checked against hand-made
captions, the bookkeeping against a generator that is right exactly when nothing is ablated, and
the real generation only for running end to end (the families' runs check it against each
image generated alone: tests/ablation/family_ablation.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomllib
from cli_run import modalscope

from modalscope.ablation.generated import fields_of, label_truth, score
from modalscope.data.manifest import load_manifest, save_manifest
from modalscope.data.synthetic import scene_concepts


def test_drawn_world_labels_give_the_truth():
    assert label_truth(["circle", "red", "two"]) == {"colour": "red", "shape": "circle", "count": "two", "size": None}
    assert label_truth(["large", "star", "one", "blue"])["size"] == "large"
    assert label_truth(None) is None and label_truth([]) is None
    assert label_truth(["dog", "red", "circle", "one"]) is None  # a COCO category: not the drawn world
    assert label_truth(["red", "blue", "circle", "one"]) is None  # two colours: not one scene's labels
    assert label_truth(["red", "circle"]) is None  # no count
    assert fields_of([None, label_truth(["red", "circle", "one"])]) == ("colour", "shape", "count")


def test_scoring_against_hand_made_captions():
    truth = label_truth(["red", "circle", "two", "small"])
    captions = ["Two small red circles on a white background.",  # all right
                "A picture of two blue circles.",  # wrong colour, no size: size counts as lost
                "An image showing a single red circle at the top.",  # wrong count
                "Three large red squares.",  # only the colour is right
                "ఇ nonsense from a random model",  # nothing stated: all wrong
                "Two small red circles."]  # right, but the pair has no drawn-world labels
    got = score(captions, [truth] * 5 + [None], ("colour", "shape", "count", "size"))
    np.testing.assert_array_equal(got["colour"], [1, 0, 1, 1, 0, np.nan])
    np.testing.assert_array_equal(got["shape"], [1, 1, 1, 0, 0, np.nan])
    np.testing.assert_array_equal(got["count"], [1, 1, 0, 0, 0, np.nan])
    np.testing.assert_array_equal(got["size"], [1, 0, 0, 0, 0, np.nan])


@pytest.fixture(scope="module")
def labelled(small_study, coco_files, tmp_path_factory) -> Path:
    """The small study with each pair's drawn-world labels (scene_concepts of its scene) in its
    manifest, as `--instances instances_demo.json` gives them (not part of the manifest hash)."""
    out = tmp_path_factory.mktemp("labelled") / "study"
    shutil.copytree(small_study, out)
    scenes = {str(im["id"]): im["scene"] for im in json.loads(coco_files[0].read_text())["images"]}
    manifest, meta = load_manifest(out)
    manifest["concepts"] = pd.Series([sorted(scene_concepts(scenes[p])) for p in manifest["pair_id"]], dtype=object)
    save_manifest(manifest, out, meta)
    return out


def _said(truth: dict) -> str:
    plural = "" if truth["count"] == "one" else "s"
    return f"A picture of {truth['count']} {truth['colour']} {truth['shape']}{plural}."


def test_effects_of_a_generator_right_only_when_intact(loaded, labelled, monkeypatch, tmp_path):
    """Rows are spec-major (the intact model's pairs first): a generator that names every pair's
    truth on the intact rows and the wrong colour on every ablated row gives a colour effect of
    exactly -1 (random sets too, p = 1) and shape and count effects of 0."""
    from modalscope.ablation import AblationSettings, generated, run_ablation

    out = tmp_path / "study"
    shutil.copytree(labelled, out)
    manifest = load_manifest(out)[0]
    truths = [label_truth(c) for c in manifest["concepts"].iloc[8:12]]  # the scored pairs: 8-11
    calls = []

    def right_when_intact(loaded, inputs, new_tokens):
        rows = inputs["input_ids"].shape[0]
        assert rows % 4 == 0 and new_tokens == 5
        calls.append(rows)
        wrong = [dict(t, colour="white" if t["colour"] != "white" else "black") for t in truths]
        return [_said(t) for t in truths] + [_said(t) for t in wrong] * (rows // 4 - 1)

    monkeypatch.setattr(generated, "generate_captions", right_when_intact)
    result = run_ablation(out, AblationSettings(k=2, sets=("text",), sites=("mlp",), n_random=3, n_pairs=4,
                                                readouts=("caption_words",), new_tokens=5, batch_size=64,
                                                progress=False), loaded=loaded)
    assert calls == [4 * (1 + 1 + 3)]  # one forward: intact, the set, 3 random sets, 4 pairs each
    frame = result.frame.set_index("readout")
    assert list(frame.index) == ["generated_colour_acc", "generated_shape_acc", "generated_count_acc"]
    colour = frame.loc["generated_colour_acc"]
    assert (colour.effect, colour.ci_low, colour.ci_high, colour.random_mean) == (-1, -1, -1, -1)
    assert colour.p_random == 1 and colour.n_pairs == 4 and colour.n_random == 3
    assert (frame.loc[["generated_shape_acc", "generated_count_acc"], "effect"] == 0).all()
    with np.load(out / "ablation" / "progress.npz") as saved:  # per readout, per row kind and pair
        np.testing.assert_array_equal(saved["results_generated_colour_acc"][0], 1.0)
        np.testing.assert_array_equal(saved["results_generated_colour_acc"][1:], 0.0)


def test_caption_words_runs_by_default_on_drawn_world_labels(loaded, labelled, tmp_path):
    """The real generation on the tiny model: with drawn-world labels the default readouts add it;
    its rows, accuracies in [0, 1] per pair (changes in [-1, 1]), the report's sentence."""
    from modalscope.ablation import AblationSettings, run_ablation
    from modalscope.ablation.report import ablation_section

    out = tmp_path / "study"
    shutil.copytree(labelled, out)
    result = run_ablation(out, AblationSettings(k=2, sets=("text",), sites=("mlp",), n_random=2, n_pairs=3,
                                                methods=("mean", "zero"), new_tokens=6, progress=False),
                          loaded=loaded)
    frame = result.frame
    assert list(dict.fromkeys(frame["readout"])) == ["image", "text", "generated_colour_acc", "generated_shape_acc",
                                                     "generated_count_acc"]
    generated = frame[frame["readout"].str.startswith("generated_")]
    assert len(generated) == 6 and (generated["n_pairs"] == 3).all() and (generated["n_random"] == 2).all()
    assert generated["effect"].between(-1, 1).all() and generated["p_random"].between(1 / 3, 1).all()
    with np.load(out / "ablation" / "progress.npz") as saved:
        values = saved["results_generated_shape_acc"]
    assert values.shape == (1 + 2 * 3, 3) and set(np.unique(values)) <= {0.0, 1.0}
    section = ablation_section(out)
    assert "accuracy of the colour, shape, count and size words of the caption the model generated" in section
    assert "at most 6 tokens" in section
    # without drawn-world labels it is not a default, and asking for it says why
    plain = tmp_path / "plain"
    shutil.copytree(labelled, plain)
    manifest, meta = load_manifest(plain)
    manifest["concepts"] = pd.Series([None] * len(manifest), dtype=object)
    save_manifest(manifest, plain, meta)
    with pytest.raises(ValueError, match="caption_words: no scored pair has the drawn world's concept labels"):
        run_ablation(plain, AblationSettings(sets=("text",), readouts=("caption_words",), progress=False),
                     loaded=loaded)


def test_study_file_ablation_section_runs_with_run(copy, tmp_path):
    """[ablation] in a study file: read back equal, `run --config` ablates after the analysis (the
    table, the figure, the report's section, the time), and DIR/study.toml records it."""
    from modalscope import StudyConfig

    written = (copy / "study.toml").read_text()
    assert tomllib.loads(written)["ablation"]["enabled"] is False  # every study.toml records the section
    study = written.split("\n[ablation]\n")[0]  # the rest of the study's own file, its last section cut
    path = tmp_path / "study.toml"
    path.write_text(study + '\n[ablation]\nk = 2\nsets = ["text"]\nmethod = ["zero"]\nrandom = 2\npairs = 2\n'
                            'readouts = ["text"]\n')
    config = StudyConfig.from_toml(path, out_dir=copy)
    assert config.ablation and (config.ablation_k, config.ablation_random, config.ablation_pairs) == (2, 2, 2)
    assert config.ablation_sets == ("text",) and config.ablation_readouts == ("text",)
    assert StudyConfig.from_toml(config.to_toml(tmp_path / "again.toml")) == config  # round trip
    done = modalscope("run", "--config", path, "--out", copy, "--quiet", "--no-png")
    assert done.returncode == 0, done.stderr[-3000:]
    frame = pd.read_parquet(copy / "tables" / "ablation.parquet")
    assert set(frame["set"]) == {"text"} and (frame["n_random"] == 2).all() and (frame["n_pairs"] == 2).all()
    assert set(frame["method"]) == {"zero"} and set(frame["readout"]) == {"text"}
    assert (copy / "figures" / "ablation.html").exists()
    assert '<section id="ablation">' in (copy / "report.html").read_text(encoding="utf-8")
    assert "ablate_s" in json.loads((copy / "study.json").read_text())["timings"]
    written = tomllib.loads((copy / "study.toml").read_text())["ablation"]
    assert written == {"enabled": True, "k": 2, "sets": ["text"], "method": ["zero"], "random": 2, "pairs": 2,
                       "bands": 1, "readouts": ["text"]}
    # an explicit `enabled = false` keeps the settings and runs nothing; a bad value names the line
    path.write_text(study + "\n[ablation]\nenabled = false\nk = 2\n")
    assert not StudyConfig.from_toml(path, out_dir=copy).ablation
    path.write_text(study + '\n[ablation]\nmethod = ["average"]\n')
    done = modalscope("run", "--config", path, "--out", tmp_path / "never")
    line = len(study.splitlines()) + 3
    assert done.returncode == 2 and done.stderr == (
        f'modalscope: error: {path}, line {line}: [ablation] method = ["average"]: choose from mean, zero\n')
