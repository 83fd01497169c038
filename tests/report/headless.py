"""Open a page from disk in headless Debian Chromium through Playwright, record what it
asked the network for and what it logged, wait until every Plotly graph has drawn its SVG.

Shared by the browser test and by anyone who wants a screenshot of a report:
`.venv/bin/python tests/report/headless.py DIR/report.html shot.png`.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# The flags the issue asks for; --headless is also set by Playwright itself.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
ALL_DRAWN = """() => {
  const divs = [...document.querySelectorAll('.plotly-graph-div')];
  return divs.length > 0 && divs.every(d => d.querySelector('svg.main-svg') && d._fullData);
}"""


@dataclass
class Visit:
    figures: list[dict] = field(default_factory=list)  # per graph div: id, traces, width, height
    console_errors: list[str] = field(default_factory=list)
    network: list[str] = field(default_factory=list)  # every request that left the disk


def visit(page_path: Path, browser: str, screenshot: Path, timeout_s: float = 60.0, figures: bool = True) -> Visit:
    """Load `page_path` (file://) with a fresh profile; with `figures`, wait for every Plotly graph."""
    from playwright.sync_api import sync_playwright

    seen = Visit()
    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=browser, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000}, offline=True,
        )
        try:
            def on_request(request) -> None:
                if not request.url.startswith(LOCAL_SCHEMES):
                    seen.network.append(request.url)

            context.on("request", on_request)
            context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(LOCAL_SCHEMES)
                          else route.abort())
            page = context.new_page()
            page.on("console", lambda m: seen.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: seen.console_errors.append(f"uncaught: {e}"))
            page.goto(Path(page_path).resolve().as_uri(), wait_until="load")
            if figures:
                page.wait_for_function(ALL_DRAWN, timeout=timeout_s * 1000)
            seen.figures = page.evaluate("""() => [...document.querySelectorAll('.plotly-graph-div')].map(d => ({
                id: d.id, traces: d._fullData.length, svgs: d.querySelectorAll('svg.main-svg').length,
                width: d.getBoundingClientRect().width, height: d.getBoundingClientRect().height}))""")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    return seen


if __name__ == "__main__":
    from modalscope.figures.export import find_browser

    result = visit(Path(sys.argv[1]), find_browser() or "chromium", Path(sys.argv[2]))
    print(result)
