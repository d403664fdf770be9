"""Where the running code comes from: the git commit of the package's checkout and whether its
tracked files differ from it, recorded next to the numbers the code made."""

from __future__ import annotations

import subprocess
from pathlib import Path

GIT_TIMEOUT_SECONDS = 5.0  # git answers these in milliseconds; a hung one must not stall training


def source_revision() -> dict[str, str | bool] | None:
    """{"commit": the HEAD commit, "dirty": whether tracked files differ from it} of the git
    checkout the package is imported from, or None when git is missing or the package is not
    in a checkout (an installed wheel)."""
    package = Path(__file__).resolve().parent.parent  # ddnn_jax/
    # the package's own files must be tracked: a wheel inside some other repository's venv is not
    if _git(package.parent, "ls-files", "--error-unmatch", "--", f"{package.name}/__init__.py") is None:
        return None
    commit = _git(package.parent, "rev-parse", "HEAD")
    changes = _git(package.parent, "status", "--porcelain", "--untracked-files=no")
    if commit is None or changes is None:
        return None
    return {"commit": commit.strip(), "dirty": bool(changes.strip())}


def _git(directory: Path, *args: str) -> str | None:
    """git's output in ``directory``, or None if git is missing, fails or hangs."""
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout
