"""Every output of a study equals the one committed in tests/golden/values.npz, within tolerances that
hold on any CPU (tests/golden/fingerprint.py says which and why).

Refactors (new protocols, new modules) must not move a table, a store array or summary.json beyond
the kernels' noise. An intended change of an output re-records the golden values on purpose:
`MODALSCOPE_RECORD_GOLDEN=1 pytest tests/test_golden_outputs.py tests/test_base_model.py -k golden`
(`=changed`: only the committed names, adding no new ones), and says why in the commit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "golden"))

from fingerprint import mismatches, record  # noqa: E402


def check_golden(study: Path, which: str) -> None:
    mode = os.environ.get("MODALSCOPE_RECORD_GOLDEN")
    if mode:
        changed = record(study, which, only_existing=mode == "changed")
        print(f"{which}: re-recorded {len(changed)} hashes: {changed}")
    changed = mismatches(study, which)
    assert not changed, f"{len(changed)} outputs differ from the committed ones: {changed[:20]}"


def test_the_small_study_outputs_equal_the_golden_ones(small_study: Path) -> None:
    check_golden(small_study, "small_study")


def test_a_real_change_is_found_and_kernel_noise_is_not(small_study: Path, tmp_path: Path) -> None:
    """The check can fail: one neuron of one store array moved by one float16 ulp of its layer's
    largest value (the store's default resolution) is reported by name, as is a summary scalar
    moved by 1e-3 of its size; one float32 ulp (the kernels' noise) is not."""
    import json
    import shutil

    import numpy as np
    import zarr

    copy = tmp_path / "study"
    shutil.copytree(small_study, copy)
    array = zarr.open_group(str(copy / "activations.zarr"), mode="r+")["mlp/text/mean"]
    value = array[0, 0, 0]
    array[0, 0, 0] = np.nextafter(value, np.float32(np.inf), dtype=np.float32)
    assert mismatches(copy, "small_study") == []

    scale = float(np.abs(array[:, 0, :]).max())
    array[0, 0, 0] = np.float32(value + float(np.spacing(np.float16(scale))))
    found = mismatches(copy, "small_study")
    assert len(found) == 1 and found[0].startswith("store:mlp/text/mean: changed (1 of ")
    array[0, 0, 0] = value

    path = copy / "tables/summary.json"
    summary = json.loads(path.read_text())
    summary["mlp"]["slope"] *= 1.001
    path.write_text(json.dumps(summary))
    assert [m.split(":")[0] for m in mismatches(copy, "small_study")] == ["summary.mlp.slope"]
