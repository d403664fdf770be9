"""Shared fixtures: the real Fashion-MNIST (prepared once per session, offline, in a temporary tfds
directory) and a CLI runner."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# ddnn_jax (and so jax) is imported inside the helpers: pytest_configure must set the
# compilation cache before jax is first imported.

CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
TFDS_ENV = "TFDS_DATA_DIR"  # tfds reads it when first imported
SHARED_ENV = "DDNN_TEST_SHARED"  # trained runs that every pytest-xdist worker reads
# Set by the session that made them (pytest-xdist's workers inherit them from the controller).
SESSION_DIRS = {CACHE_ENV: "ddnn-jax-xla-cache-", TFDS_ENV: "ddnn-jax-tfds-", SHARED_ENV: "ddnn-jax-shared-"}


# The suite's time is mostly XLA compiling tiny programs, half of it in LLVM's optimisation
# passes: tests (and the interpreters they start) compile at LLVM's -O1 instead of XLA's default
# -O2. The programs compute the same numbers to float rounding; only their speed, which no test
# asserts, differs. Benchmarks and real runs keep the default.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=1"


def pytest_configure(config):
    """Before any test module imports jax or tfds: one persistent XLA compilation cache for the
    session, which keeps every program compiled in any test process and gives it to the others
    (workers and CLI subprocesses would otherwise compile the same programs again), a temporary
    tfds data directory, so that no test prepares a dataset in the user's ~/tensorflow_datasets,
    and the tests' XLA flags."""
    config.ddnn_made = [name for name in SESSION_DIRS if name not in os.environ]
    for name in config.ddnn_made:
        os.environ[name] = tempfile.mkdtemp(prefix=SESSION_DIRS[name])
    # every program into the cache, however quick to compile, as the CLI's runtime does
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    flags = os.environ.get("XLA_FLAGS", "")
    if TEST_XLA_FLAGS not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {TEST_XLA_FLAGS}".strip()


# The longest tests (a minute or more on 2 cores): started first, never left for the end.
LONGEST = (
    "test_runtime.py::",
    "test_run_end_to_end_and_rerun",
    "test_distributed.py::test_two_processes",
    "test_every_variant_trains_through_ddnn_run",
    "test_a_frozen_edge_fine_tune_changes_only_the_cloud",
)


def pytest_collection_modifyitems(config, items):
    """The longest tests first, then the slow ones, so that parallel workers do not end on one
    long test."""
    longest = lambda item: not any(name in item.nodeid for name in LONGEST)
    items.sort(key=lambda item: (longest(item), item.get_closest_marker("slow") is None))


def pytest_unconfigure(config):
    for name in getattr(config, "ddnn_made", []):
        shutil.rmtree(os.environ.pop(name), ignore_errors=True)


@contextlib.contextmanager
def one_worker_at_a_time(name: str):
    """Holds the session-wide lock ``name``: what one worker builds under it, the others find."""
    import fcntl

    with open(Path(os.environ[SHARED_ENV]) / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def fashion_mnist_ready():
    """Prepares Fashion-MNIST once per session in the session's tfds directory (about 20 s
    offline); parallel workers wait for the first one."""
    from ddnn_jax.data import load_dataset

    with one_worker_at_a_time("fashion_mnist"):
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the OS's pick, closed again)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SIZES = {"train": 600, "val": 150, "test": 400}

# A whole ddnn run on a small real slice: one epoch on 512 images, validated and tested on 1,000,
# logits routers at two targets.
SMALL_RUN = ["--dataset", "fashion_mnist", "--epochs", "1", "--limit-train", "512", "--limit-eval", "1000"]
SMALL_RUN += ["--inputs", "logits", "--grid", "0.3,0.54", "--sweep-weights", "none"]


# A complete small run (2 epochs, one logits router at L0 = 0.5), made once per session.
PRISTINE_EVAL = 1000  # validation and test images of the pristine run
PRISTINE_FLAGS = ["--dataset", "fashion_mnist", "--epochs", "2", "--limit-train", "512"]
PRISTINE_FLAGS += ["--limit-eval", str(PRISTINE_EVAL), "--batch-size", "128"]
PRISTINE_PLAN = [
    "--inputs",
    "logits",
    "--grid",
    "0.5",
    "--no-ablations",
    "--sweep-weights",
    "none",
    "--no-inference-timing",
    "--quiet",
]


@pytest.fixture(scope="session")
def pristine(fashion_mnist_ready):
    """A complete small run of PRISTINE_FLAGS and PRISTINE_PLAN, made once per session for every
    worker; copy it before changing it."""
    from ddnn_jax import cli

    out = Path(os.environ[SHARED_ENV]) / "pristine"
    with one_worker_at_a_time("pristine"):
        if not (out / "report.md").is_file():
            shutil.rmtree(out, ignore_errors=True)
            assert cli.main(["run", *PRISTINE_FLAGS, *PRISTINE_PLAN, "--out", str(out)]) == 0
    return out


def write_tiny_outputs(run, seed: int = 0, epoch: int = 1) -> None:
    """Outputs whose cloud exit beats the local one."""
    from ddnn_jax.rundir import SplitOutputs, write_outputs

    rng = np.random.default_rng(seed)
    outputs = {}
    for split, n in SIZES.items():
        labels = rng.integers(0, 5, n).astype(np.int32)
        onehot = np.eye(5, dtype=np.float32)[labels]
        local = rng.normal(size=(n, 5)).astype(np.float32) + 1.5 * onehot
        cloud = rng.normal(size=(n, 5)).astype(np.float32) + 3.0 * onehot
        outputs[split] = SplitOutputs(local, cloud, labels, epoch)
    write_outputs(run, outputs)


@pytest.fixture
def tiny_run(tmp_path):
    """A run directory with config, metrics and outputs (no checkpoints: route, evaluate and
    report only read the outputs)."""
    return make_tiny_run(tmp_path / "run")


def make_tiny_run(root: Path, seed: int = 0, **config) -> Path:
    """A synthetic run directory of ``TrainConfig(local_weight='0.3', seed=seed, **config)``."""
    from ddnn_jax.core.config import TrainConfig
    from ddnn_jax.rundir import RunDir, RunRecord, write_metrics, write_run_record

    run = RunDir(root)
    write_tiny_outputs(run, seed=seed)
    record = RunRecord.resolve(
        TrainConfig(**{"local_weight": "0.3", "seed": seed, **config}),
        num_classes=5,
        image_shape=(28, 28, 1),
        mean=[0.5],
        std=[0.3],
        split_sizes=SIZES,
    )
    write_run_record(run, record)
    write_metrics(run, [{"epoch": 1, "seconds": 2.0}])
    return run.root


@contextlib.contextmanager
def lock_held_elsewhere(run_dir, stage: str):
    """Another process holding RUN_DIR's lock as ``stage`` until the block ends (then killed,
    as a crash would); yields that process."""
    script = (
        "import time; from ddnn_jax.rundir import RunDir, locked\n"
        f"with locked(RunDir({str(run_dir)!r}), {stage!r}):\n"
        "    print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
