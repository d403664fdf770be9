"""Images in a compressed format on the wire, through Pillow: what the edge sends when it offloads
the image instead of its features (the baselines of a split worth making).

Pillow because it is the imaging library every Python stack already has (matplotlib depends on
it, and ``data.images`` reads folders with it), and it writes and reads PNG, JPEG and WebP with
the encoders' own settings. Every format is checked before a pixel is decoded: the format the
wire names, the served image's size and mode; a file that is none of these is an ``ImageError``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
LOSSY = ("jpeg", "webp")
DEFAULT_QUALITY = 75  # of the lossy formats (Pillow's JPEG default)
QUALITY_RANGE = (1, 100)
_MODES = {1: "L", 3: "RGB"}
_WEBP_MODES = {("webp", "L"): ("RGB",)}


class ImageError(ValueError):
    """An image that is not what the wire says (the reason is one line)."""


def bound(shape: Sequence[int]) -> int:
    """The most bytes an encoded image of ``shape`` may take: twice the raw pixels and a
    kilobyte of headers, well over what PNG, JPEG or WebP make of any image that size."""
    return 2 * int(np.prod(shape)) + 1024


def encode_image(image: np.ndarray, form: str, quality: int) -> bytes:
    """One uint8 image [H, W, C] (C = 1 or 3) as ``form`` bytes; ``quality`` for the lossy ones.

    PNG at zlib's best compression with Pillow's filter search, JPEG with optimised Huffman
    tables (a third smaller on a 28x28 image, whose tables outweigh its pixels), WebP lossy."""
    from PIL import Image

    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image, _MODES[image.shape[-1]])
    out = io.BytesIO()
    options: dict = {"optimize": True}
    if form == "jpeg":
        options["quality"] = quality
    elif form == "webp":
        options = {"quality": quality}
    picture.save(out, FORMATS[form], **options)
    return out.getvalue()


def decode_image(data: bytes | memoryview, form: str, shape: Sequence[int]) -> np.ndarray:
    """The uint8 pixels [H, W, C] of one encoded image, which must be a ``form`` image of
    ``shape``; anything else raises ImageError before its pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    height, width, channels = shape
    try:
        picture = Image.open(io.BytesIO(data), formats=[FORMATS[form]])
        mode = _MODES[channels]
        # WebP has no grey mode: a grey image comes back as RGB of equal channels
        if picture.size != (width, height) or picture.mode not in (mode, *_WEBP_MODES.get((form, mode), ())):
            raise ImageError(
                f"a {picture.size[0]}x{picture.size[1]} {picture.mode} image, the served model "
                f"takes {width}x{height} {mode}"
            )
        pixels = np.asarray(picture.convert(mode), np.uint8)
    except UnidentifiedImageError:
        raise ImageError(f"not a {FORMATS[form]} image") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(f"an unreadable {FORMATS[form]} image ({err})") from None
    return pixels.reshape(height, width, channels)
