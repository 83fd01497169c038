"""Issue 22.4: every check that needs no model runs before the model loads. A rerun into an
existing DIR with another --seed or --num-pairs used to say "made with seed=0" only after the
model had loaded (13 s on the tiny model, minutes at 7B)."""

from __future__ import annotations

import pytest

from modalscope.cli import main


@pytest.mark.parametrize("change", [("--seed", "1"), ("--num-pairs", "7")])
def test_a_rerun_asking_for_other_pairs_is_refused_before_the_model_loads(copy, coco_files, tiny_model_dir,
                                                                         monkeypatch, capsys, change):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the manifest was checked")

    monkeypatch.setattr("modalscope.models.loading.load_model", no_model)
    captions, images = coco_files
    code = main(["run", "--out", str(copy), "--model", str(tiny_model_dir), "--captions", str(captions),
                 "--images", str(images), "--num-pairs", "16", "--device", "cpu", "--quiet", *change])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    key = change[0].lstrip("-").replace("-", "_")
    assert f"made with {key}=" in err and "use a new --out" in err, err
