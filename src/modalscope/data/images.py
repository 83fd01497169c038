"""Images as the model sees them: every file becomes RGB the same way, or says why it cannot.

Why one function: the manifest's validation walk (data/validate.py) and the extraction loop
both call `load_rgb`, so a pair that
passed validation decodes to the same pixels in every condition and every run.

The conversion, decided once:
- the file is decoded by Pillow's own decoder, fully (a truncated file fails here, not later);
- EXIF orientation is applied (`ImageOps.exif_transpose`): the picture a viewer shows;
- transparency (RGBA, LA, PA, a palette or grey/RGB image with a transparent colour) is
  composited on white, the page colour captioners saw;
- 16-bit greyscale (`I;16*`, and Pillow's 32-bit `I`, read as 16-bit) is scaled from 0-65535 to
  0-255; Pillow's own `convert` would clip everything above 255 to white;
- everything else (CMYK, YCbCr, palette, 1-bit, L) goes through Pillow's `convert("RGB")`;
- animated or multi-page files give their first frame;
- a decompression-bomb guard: over `MAX_PIXELS` pixels is refused from the header, before any
  pixel is decoded.

Problems raise `ImageProblem` with a short reason (the path is the caller's to add).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Our guard refuses what Pillow would only warn about, so its warning would be noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

MAX_PIXELS = 89_478_485  # Pillow's default warning limit (~ 9,459 x 9,459); COCO is ~640 x 480
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageProblem(ValueError):
    """An image file that cannot be used; the message is the reason, without the path."""


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """The RGB image a pair's file holds, decoded in full; `ImageProblem` says why not."""
    path = Path(path)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(str(path))
        if not stat.S_ISREG(info.st_mode):  # a named pipe would block the open; a device never ends
            kind = "a named pipe" if stat.S_ISFIFO(info.st_mode) else "a socket or device"
            raise ImageProblem(f"image path is {kind}, not a regular file")
        if info.st_size == 0:
            raise ImageProblem("image file is empty (0 bytes)")
        with Image.open(path) as image:
            _check_size(image.size)
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except ImageProblem:
        raise
    except FileNotFoundError:
        raise ImageProblem("image file not found") from None
    except IsADirectoryError:
        raise ImageProblem("image path is a folder, not a file") from None
    except Image.DecompressionBombError as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        raise ImageProblem(_too_large(int(pixels.group(1)) if pixels else None)) from None
    except UnidentifiedImageError:
        raise ImageProblem("not an image Pillow can read (unknown format)") from None
    except PermissionError:
        raise ImageProblem("image file is not readable (permission denied)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise ImageProblem(f"cannot decode image ({detail})") from None
    except Exception as err:  # a decoder plugin tripping over a malformed file (struct.error, ...)
        raise ImageProblem(f"cannot decode image ({type(err).__name__}: {err})") from None


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (an image's: recorded in the manifest when its pair is checked,
    compared when extraction reads it again)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def to_rgb(image: Image.Image) -> Image.Image:
    """One mode conversion for every mode Pillow decodes (see the module docstring)."""
    if image.mode in SIXTEEN_BIT:
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)  # 0 -> 0, 65535 -> 255
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _check_size(size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageProblem(_too_large(width * height, f" ({width:,} x {height:,})"))
    if width < 1 or height < 1:
        raise ImageProblem(f"image is {width} x {height} pixels")


def _too_large(pixels: int | None, size: str = "") -> str:
    shown = f"{pixels:,} pixels{size}" if pixels else "too many pixels"
    return f"image has {shown}, over the {MAX_PIXELS:,}-pixel limit (decompression-bomb guard)"
