"""The benchmark scripts run (smoke mode: tiny sizes, one round), and the contenders they
compare compute the same reductions, so the comparison stays fair and the scripts do not rot.

The three scripts run at once as subprocesses (one torch thread each): importing nnsight or
TransformerLens in this process would change it for the tests that follow (nnsight adds a
`.save` to every object). peers.py dumps each contender's reductions of the same text and
image batch; they are compared here with assert_close against the HF baseline. A peer whose
package is not installed (`pip install 'modalscope[bench]'`) is skipped, not failed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NEEDS = {"nnsight": "nnsight", "tl": "transformer_lens"}
SITES, STATS = ("residual", "mlp"), ("max", "mean")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the three scripts in smoke mode concurrently; their outputs by script name."""
    root = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    commands = {
        "peers": ["peers.py", "--smoke", "--cache", str(root / "cache"), "--dump",
                  str(root / "dump"), "--json", str(root / "peers.json")],
        "analysis": ["analysis.py", "--smoke", "--json", str(root / "analysis.json")],
        "gpu": ["gpu.py", "--smoke", "--contenders", "bare", "modalscope", "hf",
                "--json", str(root / "gpu.json")],
    }
    running = {
        name: subprocess.Popen([sys.executable, str(BENCHMARKS / cmd[0]), *cmd[1:]], cwd=root,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, cmd in commands.items()
    }
    out = {}
    for name, process in running.items():
        stdout, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"benchmarks/{commands[name][0]} --smoke failed:\n{stdout}"
        out[name] = {"stdout": stdout, "json": json.loads((root / f"{name}.json").read_text())}
    out["dump"] = root / "dump"
    return out


def installed(name: str) -> bool:
    module = NEEDS.get(name)
    return module is None or importlib.util.find_spec(module) is not None


def test_peers_smoke_prints_every_contender_and_the_goals(smoke: dict):
    stdout = smoke["peers"]["stdout"]
    for label in ("bare forward", "HF hidden states", "modalscope Recorder",
                  "modalscope time / bare forward", "extra memory / HF baseline's extra",
                  "throughput / best peer's"):
        assert label in stdout, stdout
    rows = smoke["peers"]["json"]["rows"]
    for name in ("bare", "hf", "nnsight", "tl", "modalscope"):
        assert (name in rows) == installed(name), (name, rows.keys())
        if name in rows:
            assert rows[name]["pairs_per_s"] > 0 and "extra_mib" in rows[name]


@pytest.mark.parametrize("name", ["nnsight", "tl", "modalscope"])
def test_contender_reductions_equal_the_hf_baselines(smoke: dict, name: str):
    if not installed(name):
        pytest.skip(f"{NEEDS[name]} is not installed (pip install 'modalscope[bench]')")
    reference = torch.load(smoke["dump"] / "hf.pt")
    got = torch.load(smoke["dump"] / f"{name}.pt")
    # TransformerLens runs eager attention, the others SDPA: float32 last-bit differences.
    tolerance = {"rtol": 1e-4, "atol": 1e-4} if name == "tl" else {"rtol": 1e-5, "atol": 1e-5}
    for condition in ("text", "image"):
        for site in SITES:
            for stat in STATS:
                expected = reference[condition][site][stat]  # [batch, layer, neuron]
                assert expected.shape[1] == 4 and not expected.isnan().any()
                torch.testing.assert_close(got[condition][site][stat], expected, **tolerance)


def test_analysis_smoke_matches_scipy(smoke: dict):
    result = smoke["analysis"]["json"]
    assert result["max_rel_t"] <= 1e-9
    assert set(result["rows"]) == {"scipy", "modalscope", "modalscope-t"}
    assert "analysis memory / scipy ttest_1samp" in smoke["analysis"]["stdout"]


def test_gpu_smoke_reports_throughput_and_time_split(smoke: dict):
    result = smoke["gpu"]["json"]
    assert [row["batch"] for row in result["rows"]] == [1, 2]
    assert all(row["modalscope_pairs_per_s"] > 0 for row in result["rows"])
    parts = result["split"]["s_per_pair"]
    assert {"vision tower + projector", "reductions (hooks)", "host copy (collect)",
            "store writes"} <= set(parts)
    assert "GPU pairs/s, best batch" in smoke["gpu"]["stdout"]
