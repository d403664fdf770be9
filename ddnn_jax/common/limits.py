"""How large a file we read may be. Every reader checks its file against a limit before reading
it, so that a wrong path (``/dev/zero``, a disk image, a zip bomb) costs one line naming the file
and the limit, not the machine's memory."""

from __future__ import annotations

import zipfile
from pathlib import Path

from ddnn_jax.common.errors import UsageError

JSON_BYTES = 64 << 20  # a record, results.json, a thresholds file: far above any we write
ARRAYS_BYTES = 8 << 30  # an .npz's arrays as stored, uncompressed (CIFAR's z of 45,000 images: 1.5 GB)
IMAGE_BYTES = 64 << 20  # one image file of a folder
STATE_DICT_BYTES = 2 << 30  # a PyTorch .pth (ours are under 2 MB)


def _over(path: Path, limit: int, what: str) -> UsageError:
    return UsageError(f"{path} is over {limit:,} bytes, the most a {what} may take: is it the right file?")


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``, read no further than ``limit`` (a device or a pipe has no size to
    check first). Raises OSError as ``open`` does, and UsageError past the limit."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise _over(path, limit, what)
    return data


def check_size(path: Path, limit: int, what: str) -> None:
    """Raises UsageError when ``path`` is not a regular file of at most ``limit`` bytes."""
    path = Path(path)
    if path.is_file() and path.stat().st_size > limit:
        raise _over(path, limit, what)
    if path.exists() and not path.is_file():
        raise UsageError(f"{path} is not a regular file: give the path of a {what}")


def check_npz(path: Path, limit: int = ARRAYS_BYTES) -> None:
    """Raises UsageError when the arrays of the .npz at ``path`` would take more than ``limit``
    bytes once read: the sizes its zip directory declares, checked before any is decompressed.
    A file that is not a zip is left for np.load to refuse."""
    check_size(path, limit, "file of arrays")
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        return
    if declared > limit:
        raise UsageError(
            f"{path} declares {declared:,} bytes of arrays, over the {limit:,} a file of arrays may "
            "take: is it the right file?"
        )
