"""Shared fixtures: the real Fashion-MNIST (prepared once, offline) and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    """One persistent XLA compilation cache for the session, shared with the CLI subprocesses,
    which would otherwise compile the same training programs again in every interpreter. It is
    set before any test module imports jax; a cache the user chose is left alone."""
    if CACHE_ENV not in os.environ:
        config.ddnn_cache = os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="ddnn-jax-xla-cache-")


def pytest_unconfigure(config):
    if getattr(config, "ddnn_cache", None):
        shutil.rmtree(config.ddnn_cache, ignore_errors=True)
        del os.environ[CACHE_ENV]


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
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=900,
    )
