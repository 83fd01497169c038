"""The README's "Reading the results" lines run on a real study and list what they say they list."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

README = Path(__file__).parents[1] / "README.md"


def test_the_readme_lines_list_the_significant_neurons_of_a_layer(small_study: Path, capsys):
    section = README.read_text(encoding="utf-8").split("## Reading the results", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(code.replace("demo-out/", f"{small_study}/"), scope)  # noqa: S102 - our own README
    t3 = pd.read_parquet(small_study / "tables/table3_neurons.parquet")
    brute = [(int(r.neuron), float(r.t_value)) for r in t3.itertuples()
             if r.site == "mlp" and r.layer == 2 and r.q_value < 0.05 and r.mean_diff > 0]
    listed = scope["text_preferring"]
    assert sorted(listed["neuron"].tolist()) == sorted(n for n, _ in brute)
    assert listed["t_value"].is_monotonic_decreasing
    assert (scope["image_preferring"]["mean_diff"] < 0).all() and (scope["image_preferring"]["q_value"] < 0.05).all()
    assert len(listed) + len(scope["image_preferring"]) == int(((t3["site"] == "mlp") & (t3["layer"] == 2)
                                                                & (t3["q_value"] < 0.05)).sum())
    assert "neuron" in capsys.readouterr().out
