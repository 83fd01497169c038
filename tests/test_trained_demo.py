"""`modalscope demo` on the trained VLM beside its random twin (issue 25.2-25.4): the default demo
runs the trained model with the twin, and what it finds is what a trained model shows and a
re-initialised one does not.

Measured (demo, 48 pairs, site mlp, stat matched_max): 104 neuron-colour pairs are selective for
the same colour in both the caption and the image (concepts.parquet `agree`), against 0 in the
random twin; at 240 pairs 7,774 against 339. The test asserts at least 30 in the trained model and
at most a third of that in the twin: a trained-model finding three times the architecture's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cli_run import modalscope

pytestmark = pytest.mark.slow

N_PAIRS = 48
MIN_TRAINED = 30  # colour imagery pairs of the trained model (measured 104)
MARGIN = 3  # the trained model has at least 3x the twin's (measured 104 vs 0)


@pytest.fixture(scope="module")
def trained_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained-demo")
    done = modalscope("demo", "--out", str(out), "--num-pairs", str(N_PAIRS), "--sites", "mlp",
                      "--permutations", "200", "--bootstrap", "200", "--quiet", "--no-png")
    assert done.returncode == 0, done.stderr
    return out


def _colour_imagery(folder: Path) -> int:
    from modalscope.data.synthetic import PALETTE

    table = pd.read_parquet(folder / "tables" / "concepts.parquet", columns=["site", "stat", "concept", "agree"])
    chosen = table[(table["site"] == "mlp") & (table["stat"] == "matched_max") & table["concept"].isin(list(PALETTE))]
    return int(chosen["agree"].sum())


def test_the_default_demo_studies_the_trained_vlm_beside_its_twin(trained_demo: Path) -> None:
    study = json.loads((trained_demo / "study.json").read_text())
    assert Path(study["config"]["model"]).name.startswith("shapes-vlm-")
    assert study["config"]["control"] == "random-twin"
    assert (trained_demo / "control" / "random-twin" / "tables" / "concepts.parquet").exists()
    report = (trained_demo / "report.html").read_text()
    assert "trained on drawn shapes by LLaVA" in report and "random weights" not in report.split("<h2")[0]


def test_colour_neurons_found_in_both_modalities_and_fewer_in_the_random_twin(trained_demo: Path) -> None:
    trained = _colour_imagery(trained_demo)
    twin = _colour_imagery(trained_demo / "control" / "random-twin")
    assert trained >= MIN_TRAINED, trained
    assert trained >= MARGIN * twin, (trained, twin)
    summary = json.loads((trained_demo / "tables" / "summary.json").read_text())
    assert summary["mlp"]["twin"]["imagery"]["exceeds"] is True


def test_ablating_the_colour_imagery_neurons_is_measured_against_random_sets(trained_demo: Path, tmp_path: Path) -> None:
    """Issue 26 on the trained VLM: the colour imagery neurons (both modalities selective for a
    colour) are ablated and the colour words' likelihood given the image compared with random sets
    of the same size and layers. Measured on the 240-pair demo with 20 random sets: effect -0.124
    against the random sets' -0.136, p_random 0.76 (not specific; README). Here, 16 pairs and 5
    random sets: the row exists, its interval holds its effect, and p lies on its grid."""
    from modalscope.data.synthetic import PALETTE

    table = pd.read_parquet(trained_demo / "tables" / "concepts.parquet")
    chosen = table[(table["site"] == "mlp") & (table["stat"] == "matched_max") & table["agree"]
                   & table["concept"].isin(list(PALETTE))].drop_duplicates(["layer", "neuron"]).head(20)
    assert len(chosen) == 20
    sets = tmp_path / "colour_imagery.csv"
    chosen.assign(set="colour_imagery")[["site", "layer", "neuron", "set"]].to_csv(sets, index=False)
    done = modalscope("ablate", str(trained_demo), "--sets", str(sets), "--sites", "mlp", "--random", "5",
                      "--pairs", "16", "--readouts", "image_concept", "--quiet")
    assert done.returncode == 0, done.stderr
    rows = pd.read_parquet(trained_demo / "tables" / "ablation.parquet")
    row = rows[(rows["set"] == "colour_imagery") & (rows["readout"] == "image_concept")].iloc[0]
    assert row["k"] == 20 and row["n_random"] == 5 and row["n_pairs"] == 16
    assert row["ci_low"] <= row["effect"] <= row["ci_high"]
    assert round(row["p_random"] * 6) in range(1, 7)
