"""Issue 28 point 5: small surprises of the CLI, each one line that now says what happens."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli_run import modalscope
from modalscope.data.manifest import MANIFEST


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_no_png_help_says_it_removes_earlier_copies():
    assert "skip PNG and SVG copies of the figures, and remove those of an earlier plot in DIR/figures" in \
        _flat(modalscope("plot", "--help").stdout)


def test_export_says_it_replaced_the_previous_export(copy):
    first = modalscope("export", copy, "--layers", "0", "--neurons", "0-3")
    assert first.returncode == 0 and "(replaced" not in first.stdout
    again = modalscope("export", copy, "--layers", "1", "--neurons", "0-3")
    assert again.returncode == 0
    lines = [line for line in again.stdout.splitlines() if line.startswith("  table")]
    assert lines and all(line.endswith("(replaced the previous export; --name SUFFIX keeps both)") for line in lines)


def test_export_layers_beyond_the_model_names_the_layers_beyond(small_study):
    done = modalscope("export", small_study, "--layers", "2-10", "--name", "_never")
    assert done.stderr == "modalscope: error: --layers: 4-10 are beyond the model, which has layers 0-3\n"
    assert not list((small_study / "tables").glob("*_never*"))


@pytest.mark.parametrize("args, message", [
    (("neuron", "d", "--layers", "1", "--site", "mlp", "--layer", "1", "--neuron", "0"),
     "--layers is not an option of neuron (it is one of shrink, export); did you mean --layer?"),
    (("analyze", "--out", "d"), "--out is not an option of analyze (it is one of demo, run, plan, extract, neuron); "
                                "DIR is positional: `modalscope analyze DIR`"),
])
def test_an_option_of_another_command_gets_the_near_one(args, message):
    done = modalscope(*args)
    assert (done.returncode, done.stderr) == (2, f"modalscope: error: {message}\n")


def test_a_wrong_images_folder_names_the_path_tried(tiny_model_dir, coco_files, tmp_path):
    captions, _ = coco_files
    wrong = tmp_path / "train2017"  # a folder that exists, but not the captions' images
    wrong.mkdir()
    done = modalscope("run", "--model", tiny_model_dir, "--captions", captions, "--images", wrong,
                      "--out", tmp_path / "study", "--device", "cpu")
    assert done.returncode == 2
    assert f": image file not found: {wrong.resolve()}/" in done.stderr and "(check --images)" in done.stderr


def test_jsonl_paths_say_they_resolve_against_the_jsonl_folder(tiny_model_dir, tmp_path):
    folder = tmp_path / "lists"
    folder.mkdir()
    jsonl = folder / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"image": f"images/{i}.jpg", "caption": "A dog."}) + "\n" for i in range(3)))
    done = modalscope("run", "--model", tiny_model_dir, "--jsonl", jsonl, "--out", tmp_path / "study",
                      "--device", "cpu")
    assert done.returncode == 2
    assert f"image file not found: {folder.resolve() / 'images'}/" in done.stderr
    assert f"(JSONL image paths are relative to the JSONL file's folder, {folder.resolve()})" in done.stderr


def test_a_json_array_given_to_jsonl_says_what_to_pass(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"image": "a.jpg", "caption": "A."}, {"image": "b.jpg", "caption": "B."}], indent=1))
    done = modalscope("run", "--model", "unused", "--jsonl", path, "--out", tmp_path / "study")
    assert done.returncode == 2
    assert done.stderr.startswith(f"modalscope: error: {path}, line 1: a JSON array; --jsonl takes one "
                                  '{"image": ..., "caption": ..., "id": ...} object per line (JSON Lines)')
    assert f"jq -c '.[]' {path} > pairs.jsonl" in done.stderr


def test_a_karpathy_split_given_to_captions_says_what_to_pass(tmp_path):
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "a.jpg", "imgid": 0, "sentences": [{"raw": "A dog."}]}]}))
    done = modalscope("run", "--model", "unused", "--captions", path, "--images", tmp_path, "--out", tmp_path / "s")
    assert done.returncode == 2
    assert done.stderr.startswith(f"modalscope: error: {path}: a Karpathy split file (images with 'sentences'), "
                                  "not a COCO captions file; give --captions the COCO annotations file")


def test_init_into_an_existing_folder_writes_study_toml_there(tmp_path):
    done = modalscope("init", tmp_path)
    assert done.returncode == 0 and (tmp_path / "study.toml").is_file()
    assert done.stdout.startswith(f"wrote {tmp_path / 'study.toml'}:")
    again = modalscope("init", tmp_path)
    assert again.returncode == 2 and f"{tmp_path / 'study.toml'}: already exists" in again.stderr


def test_neuron_with_moved_images_warns(copy, tmp_path):
    path = copy / MANIFEST
    table = pq.read_table(path)
    moved = [str(tmp_path / "moved" / Path(p).name) for p in table["image_path"].to_pylist()]
    index = table.column_names.index("image_path")
    field = table.schema.field(index)
    pq.write_table(table.set_column(index, field, pa.array(moved, field.type)), path)
    done = modalscope("neuron", copy, "--site", "mlp", "--layer", "1", "--neuron", "0")
    assert done.returncode == 0
    assert done.stderr.startswith("modalscope: warning: ") and "image(s) could not be read (e.g. " in done.stderr
    assert str(tmp_path / "moved") in done.stderr and "moved since the study?" in done.stderr


def test_neuron_with_its_images_in_place_does_not_warn(copy):
    done = modalscope("neuron", copy, "--site", "mlp", "--layer", "1", "--neuron", "0")
    assert (done.returncode, done.stderr) == (0, "")


def test_plan_of_a_small_store_is_not_zero_gb(tiny_model_dir):
    done = modalscope("plan", "--model", tiny_model_dir, "--num-pairs", "10")
    assert done.returncode == 0, done.stderr
    store = next(line for line in done.stdout.splitlines() if line.startswith("store: at most "))
    assert "0.0 GB" not in done.stdout and (" kB in " in store or " MB in " in store)


def test_readme_llava_next_token_counts_are_coco_sizes():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "1,176-1,944" not in readme and "2,928 for 640 x 640" in readme


def test_extra_jsonl_fields_are_kept_as_manifest_columns(tmp_path):
    from modalscope import StudyConfig
    from modalscope.data.manifest import COLUMNS, load_manifest
    from modalscope.data.synthetic import build_synthetic_coco
    from modalscope.study import prepare_manifest

    build_synthetic_coco(tmp_path / "coco", n_images=3)
    images = sorted((tmp_path / "coco" / "images").iterdir())
    extras = [{"source": "web", "score": 0.5}, {"source": "book", "tags": ["a", "b"]}, {}]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"image": str(path), "caption": f"Caption {i}.", "id": i, **extra}) + "\n"
                             for i, (path, extra) in enumerate(zip(images, extras))))
    prepare_manifest(StudyConfig(out_dir=tmp_path / "study", model="m", jsonl=jsonl, progress=False))
    frame, _ = load_manifest(tmp_path / "study")
    assert list(frame.columns) == [*COLUMNS, "source", "score", "tags"]
    rows = frame.set_index("pair_id")
    assert rows.loc["0", ["source", "score"]].tolist() == ["web", "0.5"]
    assert rows.loc["1", "tags"] == '["a", "b"]' and rows.loc["2", ["source", "score", "tags"]].isna().all()
