"""Writing figures: offline HTML always, PNG copies when a browser exists.

Design choices:

* HTML embeds plotly.js (``include_plotlyjs=True``, never "cdn") so a report
  opens on an air-gapped machine. Every file is written to a temp file in the
  target directory and ``os.replace``d, so a crash never leaves a truncated
  figure behind.
* PNGs need Chrome/Chromium (kaleido >= 1 drives a headless browser). A
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
  Jupyter). Only when all renders succeed are the PNGs written, atomically.
  ``mathjax=False`` because kaleido's default loads MathJax from a CDN.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import plotly.graph_objects as go

__all__ = [
    "BROWSER_NAMES",
    "NO_BROWSER_MESSAGE",
    "find_browser",
    "write_html",
    "write_pngs",
]

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NO_BROWSER_MESSAGE = (
    "PNG figures skipped: no Chrome/Chromium found; install one "
    "(e.g. `apt-get install chromium`) or set BROWSER_PATH, then run "
    "`modalscope plot DIR`."
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEFAULT_WIDTH = 1100
DEFAULT_HEIGHT = 550
PNG_SCALE = 2
RENDER_TIMEOUT_S = 120.0


def _atomic_write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a sibling temp file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_html(fig: go.Figure, path: Path) -> Path:
    """Write ``fig`` as self-contained offline HTML (plotly.js embedded)."""
    html = fig.to_html(
        include_plotlyjs=True,
        full_html=True,
        config={"displaylogo": False, "responsive": True},
    )
    return _atomic_write(Path(path), html.encode("utf-8"))


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


def _png_opts(fig: go.Figure) -> dict:
    return {
        "format": "png",
        "width": fig.layout.width or DEFAULT_WIDTH,
        "height": fig.layout.height or DEFAULT_HEIGHT,
        "scale": PNG_SCALE,
    }


def _render_pngs(figs: list[go.Figure], browser: str) -> list[bytes]:
    """Render all ``figs`` to PNG bytes with ONE kaleido browser."""
    import kaleido  # local: importing kaleido is slow and only needed here

    specs = [(fig.to_dict(), _png_opts(fig)) for fig in figs]

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


def write_pngs(figures: dict[Path, go.Figure]) -> str:
    """Write PNG copies of ``figures`` ({path: figure}); return a one-line status.

    Never raises for a missing browser or a kaleido failure: the returned line
    says what happened. Either all PNGs are written or none.
    """
    if not figures:
        return "wrote 0 PNG figures"
    browser = find_browser()
    if browser is None:
        return NO_BROWSER_MESSAGE
    paths = [Path(p) for p in figures]
    try:
        images = _render_pngs(list(figures.values()), browser)
    except Exception as exc:  # noqa: BLE001 - reported, not raised, by design
        return f"PNG figures skipped: kaleido failed with browser {browser!r} ({_one_line(exc)})"
    bad = [str(p) for p, img in zip(paths, images) if not bytes(img).startswith(PNG_MAGIC)]
    if len(images) != len(paths) or bad:
        return f"PNG figures skipped: kaleido returned non-PNG data for {bad or 'some figures'}"
    try:
        for p, img in zip(paths, images):
            _atomic_write(p, bytes(img))
    except OSError as exc:
        return f"PNG figures failed: could not write ({_one_line(exc)})"
    return f"wrote {len(paths)} PNG figures"
