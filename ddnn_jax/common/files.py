"""Files written safely, for every layer: under a temporary name renamed into place, so that a
reader or a crash sees the old file or the new one, never half of one; and a probe that a file
can be written before long work starts."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ddnn_jax.common.errors import UsageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: Path, *, directory: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700; what we publish gets the user's usual permissions."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO]:
    """Opens a temporary file beside ``path`` and renames it into place if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        publish_mode(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def write_json(path: Path, value: Any) -> None:
    """Strict JSON (NaN is refused), sorted keys, under a temporary name."""
    write_text(path, json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n")


def prepare_file(path: Path, flag: str = "--out") -> None:
    """Makes sure a file can be written at ``path`` later (its directory made now), or raises a
    UsageError naming ``flag``: for commands that work long before they write their result."""
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory: give the path of a file to write")
    existing = next(parent for parent in path.parents if parent.exists())
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(
            f"cannot write {path} ({err.strerror}): choose an {flag} path you can write to"
        ) from None
    check_writable(path.parent)


def check_writable(directory: Path) -> None:
    """Probes with a real file: permission bits say nothing for root or read-only mounts."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise UsageError(
            f"cannot write to {directory} ({err.strerror}): choose an --out path you can write to"
        ) from None
