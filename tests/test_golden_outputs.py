"""Every output of a study is bit-identical to the one committed in tests/golden/hashes.json.

Refactors (new protocols, new modules) must not move a single bit of a table, a store array or
summary.json. An intended change of an output re-records the hashes on purpose:
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


def test_the_small_study_outputs_are_bit_identical_to_the_committed_ones(small_study: Path) -> None:
    check_golden(small_study, "small_study")


def test_a_changed_bit_is_found(small_study: Path, tmp_path: Path) -> None:
    """The check can fail: one neuron of one store array off by one ulp is reported by name."""
    import shutil

    import numpy as np
    import zarr

    copy = tmp_path / "study"
    shutil.copytree(small_study, copy)
    array = zarr.open_group(str(copy / "activations.zarr"), mode="r+")["mlp/text/mean"]
    value = array[0, 0, 0]
    array[0, 0, 0] = np.nextafter(value, np.float32(np.inf), dtype=np.float32)
    assert mismatches(copy, "small_study") == ["store:mlp/text/mean: changed"]
