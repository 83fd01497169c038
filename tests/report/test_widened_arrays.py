"""A 16-bit array widened to float32 is shown in the report, not only kept in the store's attributes."""

from __future__ import annotations

import shutil

import zarr


def test_the_report_lists_arrays_stored_as_float32(small_study, tmp_path):
    from modalscope.report.page import render_report

    copy = tmp_path / "study"
    shutil.copytree(small_study, copy)
    group = zarr.open_group(str(copy / "activations.zarr"), mode="r+")
    group.attrs["widened"] = ["mlp/image/max", "mlp/text/max"]
    zarr.consolidate_metadata(str(copy / "activations.zarr"))
    page = render_report(copy)
    assert ("<tr><td>stored as float32 (values beyond the 16-bit range)</td><td>mlp/image/max, mlp/text/max</td></tr>"
            in page)
    assert "stored as float32" not in render_report(small_study)
