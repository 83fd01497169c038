"""Concept labels from the data (COCO instances, JSONL, the drawn world) into the manifest, and
the concept stage on a real store: concepts.parquet, summary.json's `concepts`, the figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modalscope.concepts import CONCEPTS, COLUMNS, concept_stage
from modalscope.data.manifest import load_manifest, manifest_frame, save_manifest
from modalscope.data.pairs import DataError, load_coco, load_jsonl
from modalscope.data.synthetic import INSTANCES_NAME, NUMBER_WORDS, concept_instances
from modalscope.store import STORE, ActivationStore
from modalscope.tables import SUMMARY, read_summary, write_json


def _coco(tmp_path: Path) -> tuple[Path, Path]:
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in (1, 2, 3, 4)]
    captions = [{"id": 10 + i, "image_id": i, "caption": f"caption {i}"} for i in (1, 2, 3, 4)]
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": captions}))
    instances = {
        "images": [{"id": i, "file_name": f"{i}.jpg"} for i in (1, 2, 3)],  # image 4 not listed
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 18, "name": "dog", "supercategory": "animal"},
                       {"id": 62, "name": "chair", "supercategory": "furniture"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 18, "bbox": [0, 0, 1, 1]},
                        {"id": 2, "image_id": 1, "category_id": 1},
                        {"id": 3, "image_id": 1, "category_id": 18},  # a second dog: one label
                        {"id": 4, "image_id": 3, "category_id": 62}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    return path, tmp_path / "instances.json"


def test_coco_instances_give_each_image_the_categories_present(tmp_path):
    captions, instances = _coco(tmp_path)
    pairs = {p.pair_id: p for p in load_coco(captions, tmp_path, instances)}
    assert pairs["1"].concepts == ("dog", "person")
    assert pairs["2"].concepts == ()  # listed, no object: a labelled pair without any concept
    assert pairs["3"].concepts == ("chair",)
    assert pairs["4"].concepts is None  # not in the instances file: unlabelled
    assert all(p.concepts is None for p in load_coco(captions, tmp_path))  # without --instances
    frame = manifest_frame(list(pairs.values()))
    save_manifest(frame, tmp_path / "study", {})
    loaded, _ = load_manifest(tmp_path / "study")
    pd.testing.assert_frame_equal(loaded, frame)
    assert loaded["concepts"].tolist() == [["dog", "person"], [], ["chair"], None]


def test_bad_instances_file_is_one_line(tmp_path):
    captions, instances = _coco(tmp_path)
    data = json.loads(instances.read_text())
    data["annotations"][0]["category_id"] = 99
    instances.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances.json: annotations\[0\]: category_id 99 is not in 'categories'"):
        load_coco(captions, tmp_path, instances)
    (tmp_path / "captions_only.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="no 'categories' list"):
        load_coco(captions, tmp_path, tmp_path / "captions_only.json")


def test_jsonl_concepts(tmp_path):
    lines = [{"image": "a.png", "caption": "a red cup", "id": "a", "concepts": ["red", "cup", "red"]},
             {"image": "b.png", "caption": "a dog", "id": "b"},
             {"image": "c.png", "caption": "nothing", "id": "c", "concepts": []}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert [p.concepts for p in load_jsonl(path)] == [("cup", "red"), None, ()]
    path.write_text(json.dumps({"image": "a.png", "caption": "x", "concepts": "red"}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl, line 1: 'concepts' is string; give a list"):
        load_jsonl(path)
    path.write_text(json.dumps({"image": "a.png", "caption": "x", "concepts": ["red", 3]}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl, line 1: 'concepts' holds 3; give a list"):
        load_jsonl(path)


def test_the_drawn_worlds_labels_are_what_its_captions_say(coco_files):
    captions, images = coco_files
    instances = concept_instances(captions)
    assert instances == captions.parent.parent / INSTANCES_NAME and instances.is_file()
    scenes = {img["id"]: img["scene"] for img in json.loads(captions.read_text())["images"]}
    texts: dict[int, list[str]] = {}
    for ann in json.loads(captions.read_text())["annotations"]:
        texts.setdefault(ann["image_id"], []).append(ann["caption"].lower())
    pairs = load_coco(captions, images, instances)
    assert len(pairs) == 40
    for pair in pairs:
        scene = scenes[int(pair.pair_id)]
        count, kind, colour = len(scene["shapes"]), scene["shapes"][0]["kind"], scene["shapes"][0]["color"]
        assert pair.concepts == tuple(sorted([colour, kind, NUMBER_WORDS[count]]))
        for text in texts[int(pair.pair_id)]:  # every caption states each concept
            words = text.replace(",", " ").replace(".", " ").split()
            assert colour in words and (kind in words if count == 1 else kind + "s" in words)
            if count > 1:
                assert NUMBER_WORDS[count] in words
            else:  # one shape: "a"/"an", "one" or "single", and never a plural
                assert {"a", "an", "one", "single"} & set(words) and kind + "s" not in words


def _store(path: Path, concepts: list[list[str]], seed: int = 0) -> ActivationStore:
    """Site mlp, 3 layers x 24 neurons, text and image; neuron 5 of layer 1 responds to "red"
    from the caption and from the image."""
    rng = np.random.default_rng(seed)
    n = len(concepts)
    red = np.array(["red" in c for c in concepts], dtype=np.float32)
    values = {m: rng.normal(size=(n, 3, 24)).astype(np.float32) for m in ("text", "image")}
    for m in values:
        values[m][:, 1, 5] += 3.0 * red
    store = ActivationStore.create(path, 3, {"mlp": 24}, 8, {"seed": 0}, stats=("max", "mean"))
    for start in range(0, n, 8):
        rows = slice(start, min(start + 8, n))
        store.append({m: {"mlp": {s: v[rows] for s in ("max", "mean")}} for m, v in values.items()},
                     {m: [3] * (rows.stop - rows.start) for m in values})
    return ActivationStore.read(path)


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    colours, shapes = ["red", "blue", "green"], ["circle", "square"]  # drawn independently
    concepts = [[colours[c], shapes[s]] for c, s in zip(rng.integers(0, 3, size=64), rng.integers(0, 2, size=64))]
    out = tmp_path / "study"
    _store(out / STORE, concepts)
    frame = pd.DataFrame({"input_index": np.arange(64), "pair_id": [str(i) for i in range(64)],
                          "image_path": "", "caption": "c", "caption_id": pd.array([None] * 64, dtype="Int64"),
                          "concepts": pd.Series(concepts, dtype=object)})
    save_manifest(frame, out, {})
    write_json({"mlp": {"slope": 0.1}}, out / "tables" / SUMMARY)
    return out


def test_the_stage_writes_the_table_the_summary_and_the_figure(study):
    from modalscope.figures.concepts import concept_figures

    paths = concept_stage(study, provenance={"seed": 0})
    assert paths == [study / "tables" / CONCEPTS]
    table = pd.read_parquet(paths[0])
    assert list(table.columns) == COLUMNS
    assert set(table["stat"]) == {"max"} and set(table["concept"]) == {"blue", "circle", "green", "red", "square"}
    agree = table[table["agree"]]
    assert set(zip(agree["layer"], agree["neuron"])) == {(1, 5)}  # the planted neuron only
    red = agree[agree["concept"] == "red"].iloc[0]
    assert red["auroc_text"] > 0.9 and red["auroc_image"] > 0.9
    # the colours exclude each other, so the red neuron is also "anti-blue", below 0.5 in both
    assert (agree[agree["concept"] != "red"][["auroc_text", "auroc_image"]] < 0.5).all().all()
    entry = read_summary(study / "tables" / SUMMARY)["mlp"]
    assert entry["slope"] == 0.1  # the analysis's entries stay
    concepts = entry["concepts"]
    assert concepts["stat"] == "max" and concepts["by_stat"] == {} and concepts["n_labelled"] == 64
    assert concepts["by_concept"]["red"]["imagery_neurons"] == [[1, 5]]
    assert concepts["n_imagery_total"] == len(agree) and "red" in concepts["concepts_above_null"]
    assert concepts["by_concept"]["red"]["n_imagery_up"] == 1 and concepts["by_concept"]["blue"]["n_imagery_up"] == 0
    assert concepts["null_mean"] < 0.2 and concepts["table_rows"] == "all"
    figures = concept_figures(table, {"mlp": entry}, ["mlp"])
    assert list(figures) == ["concepts_mlp"]
    heat = figures["concepts_mlp"].data[2]  # the imagery panel
    assert np.asarray(heat.z).sum() == len(agree) and np.asarray(heat.z)[1, list(concepts["by_concept"]).index("red")] == 1
    from modalscope.concepts import concepts_sentence, glance_sentence, neuron_concepts

    card = neuron_concepts(study, "mlp", 1, 5)
    assert card["imagery"][0][0] == "red" and card["text"][0][0] == "red" and card["image"][0][0] == "red"
    assert neuron_concepts(study, "mlp", 0, 0) == {"text": [], "image": [], "imagery": []}
    assert concepts_sentence(card).startswith("Concepts (AUROC, q < 0.05): from the caption red 0.9")
    line = glance_sentence("mlp", concepts)
    assert line.startswith(f"mlp, concepts (max): {len(agree)} imagery neuron-concept pairs over 5 concepts")
    assert "red (1)" in line and "p ≤ 0.01" in line
    again = concept_stage(study, provenance={"seed": 0})  # deterministic
    pd.testing.assert_frame_equal(pd.read_parquet(again[0]), table)
    assert read_summary(study / "tables" / SUMMARY)["mlp"]["concepts"]["null_mean"] == concepts["null_mean"]


def test_a_study_without_labels_gets_nothing_and_loses_an_earlier_analysis(study):
    concept_stage(study)
    manifest, meta = load_manifest(study)
    manifest["concepts"] = pd.Series([None] * len(manifest), dtype=object)
    save_manifest(manifest, study, meta)
    assert concept_stage(study) == []
    assert not (study / "tables" / CONCEPTS).exists()
    assert "concepts" not in read_summary(study / "tables" / SUMMARY)["mlp"]
    save_manifest(manifest.drop(columns="concepts"), study, meta)  # a manifest from before concepts
    assert concept_stage(study) == []


def test_instances_from_the_command_line_and_the_study_file(tmp_path):
    from modalscope import StudyConfig
    from modalscope.cli import _config, parse_args

    captions, instances = _coco(tmp_path)
    args = parse_args(["run", "--model", "m", "--captions", str(captions), "--images", str(tmp_path),
                       "--instances", str(instances),
                       "--out", str(tmp_path / "s")])
    config = _config(args, args.out)
    assert config.instances == instances and config.validate() is config
    assert StudyConfig.from_toml(config.to_toml(tmp_path / "study.toml")).instances == instances
    assert '\ninstances = "' in (tmp_path / "study.toml").read_text()
    with pytest.raises(ValueError, match="^--instances needs --captions/--images"):
        StudyConfig(out_dir=tmp_path / "s", jsonl=captions, instances=instances).validate()
    with pytest.raises(ValueError, match="^--instances .*nowhere.json: no such file or folder"):
        StudyConfig(out_dir=tmp_path / "s", captions=captions, images=tmp_path,
                    instances=tmp_path / "nowhere.json").validate()
