"""Writing figures: offline HTML always, PNG and SVG copies when a browser exists.

Design choices:

* HTML never loads plotly.js from a CDN, so figures open on an air-gapped
  machine. A study's figures/*.html share ONE ``figures/plotly.min.js`` beside
  them (``plotlyjs="directory"``: a 22-figure study is ~5 MB instead of
  ~105 MB with plotly.js in each file); the one file to send someone is
  DIR/report.html, which embeds plotly.js once and every headline figure.
  ``plotlyjs="embed"`` still writes a figure that stands alone. Every file is
  written to a temp file in the target directory, synced and ``os.replace``d
  (``files.atomic``, shared with the tables), so a crash never leaves a truncated
  figure behind.
* PNG and SVG need Chrome/Chromium (kaleido >= 1 drives a headless browser). A
  missing browser is normal on servers, so it is a one-line message, not an
  error. We do NOT use ``plotly.io.write_images`` or kaleido's sync server:
  ``write_images`` calls ``kaleido.write_fig_from_object_sync`` without
  ``cancel_on_error``, which makes kaleido *return* render errors instead of
  raising them (plotly ignores the return value), and it writes straight to the
  final path; the sync server swallows a failed browser start in its thread
  and the next call then blocks forever on its task queue. Instead one
  ``kaleido.Kaleido(path=browser, mathjax=False)`` context (one browser for all
  figures) renders every figure to bytes with ``Kaleido.calc_fig`` (which
  raises on error), in a private thread with its own event loop (safe inside
  Jupyter); PNG and SVG of all figures come from that one browser session.
  Only when all renders succeed are the files written, atomically.
  ``mathjax=False`` because kaleido's default loads MathJax from a CDN.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from modalscope.files import atomic_write  # its home is files.py, beside `atomic`; kept importable here
from modalscope import outputs
from modalscope.outputs import PLOTLYJS
from modalscope.paths import check_inside

__all__ = [
    "BROWSER_NAMES",
    "NO_BROWSER_MESSAGE",
    "PLOTLYJS",
    "atomic_write",
    "find_browser",
    "write_html",
    "write_images",
    "write_plotlyjs",
]

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NO_BROWSER_MESSAGE = (
    "PNG/SVG figures skipped: no Chrome/Chromium found; to get them, "
    "`apt-get install chromium` (or set BROWSER_PATH) and run `modalscope plot DIR`."
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FORMATS = ("png", "svg")
HTML_CONFIG = {"displaylogo": False, "responsive": True}
DEFAULT_WIDTH = 1100
DEFAULT_HEIGHT = 550
PNG_SCALE = 2
RENDER_TIMEOUT_S = 120.0


@functools.cache
def plotlyjs_bytes() -> bytes:
    """The plotly.js bundle shipped with plotly.py (minified, ~4.6 MB)."""
    return get_plotlyjs().encode("utf-8")


def write_plotlyjs(directory: Path, within: Path | None = None) -> Path:
    """``directory/plotly.min.js``, written only when missing or another version."""
    path = Path(directory) / PLOTLYJS
    if within is not None:
        check_inside(path, within)
    data = plotlyjs_bytes()
    if path.exists() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return path
    return atomic_write(path, data, within)


def owned_figure_files(figures_dir: Path) -> list[Path]:
    """The files of figures/ that `modalscope plot` writes (the HTML, PNG and SVG of the figures the
    catalogue lists under `plot`: outputs.py), so a replot can remove those it did not draw again;
    anything else there (plotly.min.js, the ablation's figure, a user's file) is never touched."""
    figures_dir = Path(figures_dir)
    return [p for p in outputs.owned(figures_dir.parent, "plot", figures_dir.name)
            if p.suffix in (".html", *outputs.IMAGES)]


def write_html(fig: go.Figure, path: Path, plotlyjs: Literal["embed", "directory"] = "embed",
               within: Path | None = None) -> Path:
    """Write ``fig`` as offline HTML: plotly.js embedded, or read from plotly.min.js beside it.
    ``within``: the study folder, outside which nothing is written (ValueError)."""
    path = Path(path)
    if within is not None:
        check_inside(path, within)
    if plotlyjs == "directory":
        write_plotlyjs(path.parent, within)
    html = fig.to_html(
        include_plotlyjs=True if plotlyjs == "embed" else "directory",
        full_html=True,
        config=HTML_CONFIG,
    )
    return atomic_write(path, html.encode("utf-8"), within)


def find_browser() -> str | None:
    """Path of the Chrome/Chromium kaleido should use, or None.

    ``BROWSER_PATH`` wins when set (resolved through PATH if it is a bare
    name; returned as given otherwise, so a wrong value surfaces in the
    kaleido error); else the first of ``BROWSER_NAMES`` found on PATH.
    """
    env = os.environ.get("BROWSER_PATH", "").strip()
    if env:
        return shutil.which(env) or env
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _opts(fig: go.Figure, fmt: str) -> dict:
    return {
        "format": fmt,
        "width": fig.layout.width or DEFAULT_WIDTH,
        "height": fig.layout.height or DEFAULT_HEIGHT,
        "scale": PNG_SCALE if fmt == "png" else 1,
    }


def _render(figs: list[go.Figure], formats: Sequence[str], browser: str) -> list[bytes]:
    """Render every figure in every format (figure-major) with ONE kaleido browser."""
    import kaleido  # local: importing kaleido is slow and only needed here

    specs = [(d, _opts(fig, fmt)) for fig in figs for d in [fig.to_dict()] for fmt in formats]

    async def render() -> list[bytes]:
        async with kaleido.Kaleido(
            n=1, timeout=RENDER_TIMEOUT_S, mathjax=False, path=browser
        ) as k:
            return [await k.calc_fig(d, opts=o) for d, o in specs]

    # Own thread + own event loop: asyncio.run fails in a running loop.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kaleido") as ex:
        return ex.submit(lambda: asyncio.run(render())).result()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no details"
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}"


def _looks_like(fmt: str, data: bytes) -> bool:
    return data.startswith(PNG_MAGIC) if fmt == "png" else b"<svg" in data[:400]


def write_images(figures: dict[Path, go.Figure], formats: Sequence[str] = FORMATS,
                 within: Path | None = None) -> str:
    """Write ``path.with_suffix(.png/.svg)`` of each of ``figures`` ({path: figure}) through
    one browser session; return a one-line status.

    Never raises for a missing browser or a kaleido failure: the returned line
    says what happened. Either all files are written or none. With ``within`` (the study
    folder) a path outside it is refused (ValueError) before anything is rendered.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"image formats {unknown}: choose from {', '.join(FORMATS)}")
    if within is not None:
        for path in figures:
            check_inside(path, within)
    kinds = "/".join(f.upper() for f in formats)
    if not figures:
        return f"wrote 0 {kinds} figures"
    browser = find_browser()
    if browser is None:
        return NO_BROWSER_MESSAGE
    paths = [Path(p).with_suffix(f".{fmt}") for p in figures for fmt in formats]
    try:
        images = _render(list(figures.values()), formats, browser)
    except Exception as exc:  # noqa: BLE001 - reported, not raised, by design
        return f"{kinds} figures skipped: kaleido failed with browser {browser!r} ({_one_line(exc)})"
    bad = [str(p) for p, img in zip(paths, images) if not _looks_like(p.suffix[1:], bytes(img))]
    if len(images) != len(paths) or bad:
        return f"{kinds} figures skipped: kaleido returned unexpected data for {bad or 'some figures'}"
    try:
        for p, img in zip(paths, images):
            atomic_write(p, bytes(img), within)
    except OSError as exc:
        return f"{kinds} figures failed: could not write ({_one_line(exc)})"
    counts = " and ".join(f"{len(figures)} {f.upper()}" for f in formats)
    return f"wrote {counts} figures"
