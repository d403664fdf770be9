"""Images read from a folder (the edge's own inputs, ``ddnn edge --images``), flat or in class
folders, checked against the run's image shape."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.limits import IMAGE_BYTES, check_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """Images read from a folder, in sorted path order."""

    images: np.ndarray  # [N, H, W, C] uint8
    labels: np.ndarray | None  # [N] int32 when the images sit in class folders 0 .. C-1
    names: tuple[str, ...]  # each image's path relative to the folder


def read_image_folder(folder: Path, image_shape: tuple[int, ...], num_classes: int) -> ImageFolder:
    """Reads every image under ``folder``: all directly in it (no labels), or all in class
    folders named 0 .. num_classes-1 (labelled). Each must have the run's height and width; it
    is converted to the run's channels (grey or RGB) but never resized.

    Raises:
      UsageError: no images, a mix of both layouts, another class name or image size, or a
        file that does not decode.
    """
    folder = Path(folder)
    paths, labels = _image_paths(folder, num_classes)
    height, width, channels = image_shape
    images = np.empty((len(paths), height, width, channels), np.uint8)
    for i, path in enumerate(paths):
        images[i] = _read_image(path, height, width, channels)
    return ImageFolder(images, labels, tuple(str(p.relative_to(folder)) for p in paths))


def _image_paths(folder: Path, num_classes: int) -> tuple[list[Path], np.ndarray | None]:
    """The image files under ``folder`` in sorted order, and their labels when they sit in class
    folders."""
    if not folder.is_dir():
        raise UsageError(f"--images {folder} is not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UsageError(f"--images {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    depths = {len(p.relative_to(folder).parts) for p in paths}
    if depths not in ({1}, {2}):
        raise UsageError(
            f"--images {folder} mixes layouts: put every image directly in it, or every image in a "
            f"class folder 0 .. {num_classes - 1}"
        )
    if depths == {1}:
        return paths, None
    classes = {p.parent.name for p in paths}
    valid = {str(c) for c in range(num_classes)}
    if not classes <= valid:
        stray = sorted(classes - valid)[0]
        raise UsageError(f"--images {folder}: class folder '{stray}' is not one of 0 .. {num_classes - 1}")
    return paths, np.asarray([int(p.parent.name) for p in paths], np.int32)


def _read_image(path: Path, height: int, width: int, channels: int) -> np.ndarray:
    """One image as uint8 [height, width, channels], converted to grey or RGB, never resized."""
    from PIL import Image, UnidentifiedImageError

    check_size(path, IMAGE_BYTES, "image")
    try:
        with Image.open(path) as image:
            if image.size != (width, height):  # refused from its header, before a pixel is decoded
                raise UsageError(
                    f"{path} is {image.size[0]}x{image.size[1]} pixels, the run's images are "
                    f"{width}x{height}: resize it first"
                )
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        raise UsageError(f"{path} is not an image that decodes: remove or replace it") from None
    return pixels.reshape(height, width, channels)
