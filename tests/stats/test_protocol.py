"""Every statistic of stats/neuron/ keeps the accumulator protocol: its columns are listed in
stats/columns.py, and two shards merged give the one-pass columns (so torchrun shards or
split analyses combine). A new statistic is checked by this test without touching it."""

from __future__ import annotations

import numpy as np
import pytest

from modalscope.stats.columns import NEURON_COLUMNS, TRAILING_COLUMNS
from modalscope.stats.controls import SignFlips
from modalscope.stats.input_means import InputLayerMeans
from modalscope.stats.neuron import STATISTICS, accumulators
from modalscope.stats.protocol import AnalysisSettings, Context, Slab

N_INPUTS, WIDTH = 30, 9


def _slabs(rng: np.random.Generator, start: int, stop: int) -> list[Slab]:
    a = rng.normal(size=(N_INPUTS, WIDTH)) * 2
    b = rng.normal(size=(N_INPUTS, WIDTH))
    a[3, 2] = np.nan
    return [Slab(s, min(s + 4, stop), a[s:min(s + 4, stop)] - b[s:min(s + 4, stop)],
                 {"text": a[s:min(s + 4, stop)], "image": b[s:min(s + 4, stop)]}) for s in range(start, stop, 4)]


@pytest.mark.parametrize("stat", ["max", "mean"])
def test_two_shards_merged_give_the_one_pass_columns(stat):
    ctx = Context("mlp", 0, stat, WIDTH, N_INPUTS, AnalysisSettings(n_perm=50), SignFlips(N_INPUTS, 50, 1))
    whole, first, second = accumulators(ctx), accumulators(ctx), accumulators(ctx)
    means = [InputLayerMeans(ctx) for _ in range(3)]
    for slab in _slabs(np.random.default_rng(0), 0, N_INPUTS):
        for acc in (*whole.values(), means[0]):
            acc.add(slab)
        for acc in (*(first if slab.start < 12 else second).values(), means[1 if slab.start < 12 else 2]):
            acc.add(slab)
    for name in whole:
        first[name].merge(second[name])
    means[1].merge(means[2])
    np.testing.assert_allclose(means[1].means, means[0].means, rtol=1e-13)
    assert {c.NAME for c in STATISTICS} >= {"t_test", "sign_flip", "sign_test", "peak"}
    for name, acc in whole.items():
        got, want = first[name].columns(), acc.columns()
        assert set(want) <= set(NEURON_COLUMNS) | set(TRAILING_COLUMNS), name
        assert acc.state_dict(), name
        for column, values in want.items():
            np.testing.assert_allclose(np.asarray(got[column], float), np.asarray(values, float),
                                       rtol=1e-12, err_msg=f"{name}.{column}")
