"""Shared fixtures: the real Fashion-MNIST (prepared once, offline) and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def fashion_mnist_ready():
    """Prepares Fashion-MNIST in tfds's data directory once per machine (about 40 s offline)."""
    from ddnn_jax.data import load_dataset

    load_dataset("fashion_mnist", limit_train=256, download=True)


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """Runs ``ddnn ARGS`` in a fresh interpreter; returns the CompletedProcess."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ddnn_jax.cli", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=900,
    )
