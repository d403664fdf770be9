"""The run directory: its layout, atomic writes, and the checks made before anything is written."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ddnn_jax.errors import UsageError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
OUTPUTS = "outputs"


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO]:
    """Opens a temporary file beside ``path`` and renames it into place if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide results from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    """The per-epoch rows of metrics.jsonl (empty before the first epoch ends)."""
    path = run_dir / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_config(run_dir: Path) -> dict[str, Any]:
    """The config.json of an existing run, or a UsageError saying how to make one."""
    path = run_dir / CONFIG
    if not path.is_file():
        raise UsageError(
            f"{run_dir} is not a training run (no {CONFIG}): "
            f"train one first with 'ddnn train --out {run_dir}'"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err.msg}): restore it or retrain") from None


def check_run_dir_for_training(run_dir: Path) -> bool:
    """Checks RUN_DIR can hold a training run; returns whether it already holds one."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} exists and is not a directory: choose another path")
    if run_dir.is_dir():
        if (run_dir / CONFIG).is_file():
            _check_writable(run_dir)
            return True
        if any(run_dir.iterdir()):
            raise UsageError(
                f"--out {run_dir} is a non-empty directory that holds no ddnn run: "
                "choose a new or empty directory"
            )
        _check_writable(run_dir)
        return False
    parent = run_dir.parent
    while not parent.exists():
        parent = parent.parent
    _check_writable(parent)
    return False


def _check_writable(directory: Path) -> None:
    """Probes with a real file: permission bits say nothing for root or read-only mounts."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise UsageError(
            f"cannot write to {directory} ({err.strerror}): choose an --out path you can write to"
        ) from None
