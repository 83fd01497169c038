"""The report in a real browser: headless Debian Chromium (driven by Playwright, fresh
profile, no network) opens DIR/report.html from disk, every Plotly graph draws its SVG,
nothing is logged as an error, nothing is fetched, and a screenshot is saved.

`make test` installs Debian's chromium when it is missing; elsewhere the test skips and
says why. Set MODALSCOPE_SCREENSHOTS=DIR to keep the screenshot.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from modalscope.figures.export import find_browser

BROWSER = find_browser()
pytestmark = [
    pytest.mark.skipif(BROWSER is None, reason="no Chromium found: `apt-get install chromium` or set BROWSER_PATH "
                                               "(`make test` installs it)"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]
pytest.importorskip("playwright.sync_api", reason="playwright not installed: `pip install -e '.[dev]'`")

from headless import visit  # noqa: E402  (tests/report/headless.py)


def _ink(png: Path) -> tuple[tuple[int, int], float]:
    from PIL import Image

    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
        size = im.size
    return size, float((np.abs(rgb - 255).sum(axis=2) > 60).mean())


def test_report_renders_every_figure_offline_without_errors(small_study, tmp_path):
    shot = tmp_path / "report.png"
    seen = visit(small_study / "report.html", BROWSER, shot)
    assert seen.network == [], f"the report asked the network for {seen.network}"
    assert seen.console_errors == []
    assert [f["id"] for f in seen.figures] == [f"fig-{kind}_{site}{part}" for site in ("residual", "mlp")
                                              for kind, part in (("figure2", ""), ("figure1", "_all_layers"),
                                                                 ("figure1", ""), ("significant", ""),
                                                                 ("xmodal_r", ""), ("xmodal_scatter", ""),
                                                                 ("figure3_alignment", ""))]
    for figure in seen.figures:
        assert figure["svgs"] >= 1 and figure["traces"] > 0, figure
        assert figure["width"] > 600 and figure["height"] >= 400, figure  # laid out, not collapsed
    (width, height), ink = _ink(shot)
    assert width == 1400 and height > 4000  # the whole page
    assert ink > 0.03, f"screenshot nearly blank ({ink:.1%} drawn)"
    keep = os.environ.get("MODALSCOPE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")


def test_the_network_check_catches_a_page_that_fetches(tmp_path):
    page = tmp_path / "fetches.html"
    page.write_text('<!DOCTYPE html><html><body><img src="https://cdn.example.org/x.png">'
                    '<script>console.error("boom")</script></body></html>')
    seen = visit(page, BROWSER, tmp_path / "fetches.png", figures=False)
    assert seen.network == ["https://cdn.example.org/x.png"]
    assert any("boom" in error for error in seen.console_errors), seen.console_errors  # order varies
