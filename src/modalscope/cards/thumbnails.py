"""Small JPEG thumbnails as data URIs, so a card (and the report) is one offline file.

Why JPEG at a small size: a card shows k images and the report a few dozen cards; at 64 px and
quality 70 a thumbnail is ~1-2 KB of base64, so the cards add well under a megabyte to the page.
Images are decoded as the model saw them (data/images.py `load_rgb`: EXIF orientation,
transparency on white); a file that is gone or unreadable gives None and the card says so.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from modalscope.data.images import ImageProblem, load_rgb

CARD_SIZE = 96  # px, the longer side, in a card of its own
REPORT_SIZE = 64  # px, in the report
QUALITY = 70


def thumbnail_uri(path: str | Path, size: int = CARD_SIZE, quality: int = QUALITY) -> str | None:
    """`data:image/jpeg;base64,...` of the image at `path`, its longer side `size` px; None when
    the file cannot be read."""
    if not path:
        return None
    try:
        image = load_rgb(path)
    except ImageProblem:
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Thumbnails:
    """Each image encoded once per page, however many cards show it."""

    def __init__(self, size: int = CARD_SIZE, quality: int = QUALITY) -> None:
        self.size, self.quality = size, quality
        self._made: dict[str, str | None] = {}

    def __call__(self, path: str) -> str | None:
        if path not in self._made:
            self._made[path] = thumbnail_uri(path, self.size, self.quality)
        return self._made[path]

    @property
    def missing(self) -> list[str]:
        """The image paths asked for that could not be read (the page shows placeholders)."""
        return [path for path, uri in self._made.items() if uri is None and path]
