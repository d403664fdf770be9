"""Writing and reading files of the run directory safely: atomic files and directories, the
run directory's lock, strict JSON, .npz archives, and a probe for a writable directory."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ddnn_jax.common import limits
from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.files import atomic_file, prepare_file, publish_mode, write_json, write_text
from ddnn_jax.common.limits import read_bounded
from ddnn_jax.rundir.layout import EDGE, LOCK, RunDir

# What np.load raises for a truncated, garbled or incomplete .npz.
NPZ_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)
# the atomic writes are common's (an edge without JAX writes its report with them); the run
# layer's users keep importing them from here
__all__ = ["atomic_file", "prepare_file", "write_json", "write_text"]


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yields an empty staging directory beside ``path``; if the block succeeds it replaces
    ``path`` in one step: an existing directory is exchanged with the staging one atomically
    (Linux renameat2), so a reader or a crash sees the old or the new one, never neither and
    never a mix; the old one is deleted after."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield staging
        publish_mode(staging, directory=True)
        if path.exists():
            _exchange(staging, path)  # staging now holds the old directory
        else:
            staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def leftovers(root: Path) -> dict[Path, int]:
    """What killed writes left under ``root``, with its size in bytes: the temporary files and
    staging folders of ``atomic_file`` and ``atomic_dir`` (``.NAME.XXXX.tmp``) and folders
    renamed aside by ``_exchange`` (``.NAME.XXXX.old``)."""
    found = {}
    for folder, subfolders, files in os.walk(root):
        for name in [*subfolders, *files]:
            if name.startswith(".") and name.endswith((".tmp", ".old")):
                path = Path(folder) / name
                found[path] = _size(path)
        subfolders[:] = [d for d in subfolders if Path(folder) / d not in found]  # not into them
    return found


def _size(path: Path) -> int:
    if not path.is_dir():
        return path.lstat().st_size
    return sum((Path(d) / f).lstat().st_size for d, _, files in os.walk(path) for f in files)


def remove(path: Path) -> None:
    """Deletes a file or a whole folder."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    """Swaps two paths atomically (renameat2 RENAME_EXCHANGE); on systems without it, renames
    b aside first (a crash between the two renames leaves b under a hidden '.old' name)."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        if ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))
    aside = b.with_name(f".{b.name}.{uuid.uuid4().hex[:8]}.old")
    b.rename(aside)
    try:
        a.rename(b)
    except OSError:
        aside.rename(b)  # put the old one back
        raise
    aside.rename(a)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


_held_locks: dict[Path, int] = {}  # run directories this process holds, with nesting depth


@contextlib.contextmanager
def locked(run: RunDir, stage: str) -> Iterator[dict[Path, int]]:
    """Holds the run directory's exclusive lock while a writing stage runs (re-entrant within
    one process, so ``ddnn run`` holds it across its stages). The lock is an flock on
    RUN_DIR/.lock, which the kernel releases when the holder dies, so a kill leaves nothing
    held; the file names its holder for the message of whoever finds it taken. A directory
    made for the lock alone is removed again if the stage fails.

    Taking the lock first removes what killed writes left in the run (``leftovers``): no
    writer holds it, so no temporary file there is in use, except under edge/, which ``ddnn
    edge`` writes without the lock and only ``ddnn check --clean`` clears. Yields what was
    removed, with its size."""
    key = run.root.resolve()
    if jax.process_index() > 0:
        # one program in several processes: process 0 holds the lock for all of them
        yield {}
        return
    if key in _held_locks:
        _held_locks[key] += 1
        try:
            yield {}
        finally:
            _held_locks[key] -= 1
        return
    created = not run.root.exists()
    try:
        run.root.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a .lock planted as a symlink must not make us truncate its target
        fd = os.open(run.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        handle = os.fdopen(fd, "a+", encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot lock {run} ({err.strerror}): choose a directory you can write to") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UsageError(f"{run} is in use by {holder}: wait for it to end, or stop it, and retry") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} (ddnn {stage})\n")
    handle.flush()
    _held_locks[key] = 1
    finished = False
    try:
        edge = run.root / EDGE
        removed = {p: size for p, size in leftovers(run.root).items() if not p.is_relative_to(edge)}
        for path in removed:
            remove(path)
        yield removed
        finished = True
    finally:
        del _held_locks[key]
        with contextlib.suppress(OSError):  # never hide the stage's own error
            if created and not finished and [p.name for p in run.root.iterdir()] == [LOCK]:
                run.lock.unlink()
                run.root.rmdir()
        with contextlib.suppress(OSError):
            handle.truncate(0)
        handle.close()  # closing the descriptor releases the flock


def read_json(path: Path, remedy: str) -> Any:
    """The JSON value in ``path``, or a UsageError naming the file and ``remedy``."""
    try:
        return json.loads(read_bounded(path, limits.JSON_BYTES, "JSON file").decode("utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path} is missing: {remedy}") from None
    except OSError as err:
        raise UsageError(f"{path} cannot be read ({err.strerror}): {remedy}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path} is not valid JSON ({type(err).__name__}): {remedy}") from None


def load_npz(path: Path):
    """np.load of an .npz we wrote (arrays only, nothing pickled), once its declared size is
    within the limit; use it as a context manager."""
    limits.check_npz(path)
    return np.load(path, allow_pickle=False)


def save_npz(path: Path, arrays: dict[str, Any]) -> Path:
    """np.savez under a temporary name, then a rename: readers never see half a file."""
    with atomic_file(path, "wb") as f:
        np.savez(f, **arrays)
    return path
