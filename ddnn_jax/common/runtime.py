"""How this process runs XLA: the persistent compilation cache, deterministic GPU kernels, and a
count of the programs it compiled.

``configure`` must run before JAX starts its backend (the CLI calls it first thing): XLA reads
its flags once, when the backend is created.

* The compilation cache is JAX's own: every compiled program is written to a directory and read
  back by any later process that compiles the same program for the same devices, so a second
  run of the same shapes compiles nothing. By default it lives in this user's cache directory;
  a cache chosen through JAX's own ``JAX_COMPILATION_CACHE_DIR`` (our tests use one per
  session) is left alone.
* XLA's GPU kernels may add in a different order from one run to the next (atomics in
  reductions and scatters), so the same seed can give different numbers; we ask for its
  deterministic kernels unless the user trades them for speed. CPU programs are deterministic
  either way.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
from jax import monitoring
from jax.experimental.compilation_cache import compilation_cache

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "ddnn-jax" / "xla"
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
# cuBLAS (under PyTorch's CUDA kernels) is deterministic only with a fixed workspace, which it
# reads from its environment alone, when it makes its first handle: set here, before any.
CUBLAS_WORKSPACE, CUBLAS_DETERMINISTIC = "CUBLAS_WORKSPACE_CONFIG", ":4096:8"
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What ``configure`` set up, as config.json records it."""

    compilation_cache: str | None  # its directory, or None when off
    deterministic: bool  # XLA's deterministic GPU kernels were asked for


_current = Runtime(compilation_cache=None, deterministic=False)
_configured = False


@dataclasses.dataclass(frozen=True)
class Processes:
    """How this process joins a multi-process program (``jax.distributed.initialize``): every
    process runs the same command, and the devices of all of them form one mesh."""

    coordinator: str | None = None  # HOST:PORT of process 0; None: from the cluster's environment
    count: int | None = None  # number of processes (None: from the cluster's environment)
    index: int | None = None  # this process's index (None: from the cluster's environment)


def configure(
    cache: str | Path | None = "default", *, deterministic: bool = True, processes: Processes | None = None
) -> Runtime:
    """Sets up the compilation cache, GPU determinism and, if asked, the multi-process program
    for this process.

    Args:
      cache: a directory, ``"default"`` (JAX's own setting if it has one, else
        ``DEFAULT_CACHE_DIR``), or None to switch the persistent cache off.
      deterministic: ask XLA, and cuBLAS under PyTorch, for deterministic GPU kernels (about
        8 % slower training on an H100); no effect on CPU.
      processes: join a multi-process program (None: this process alone). Fields left None
        come from the cluster's environment (SLURM, Open MPI, TPU pods), as JAX reads it.
    """
    global _current, _configured
    if cache is None:
        jax.config.update("jax_enable_compilation_cache", False)
        directory = None
    else:
        if cache == "default":
            directory = _cache_dir() or str(DEFAULT_CACHE_DIR)
        else:
            directory = str(Path(cache).expanduser().resolve())
        Path(directory).mkdir(parents=True, exist_ok=True)
        if directory != _cache_dir():
            compilation_cache.reset_cache()  # JAX opens its cache once; make it open this one
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", directory)
        # Every program, however quick to compile: the run compiles dozens of small ones.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    flags = os.environ.get("XLA_FLAGS", "").split()
    flags = [f for f in flags if not f.startswith("--xla_gpu_deterministic_ops")]
    if deterministic:
        flags.append(DETERMINISTIC_FLAG)
    os.environ["XLA_FLAGS"] = " ".join(flags)
    if deterministic:
        os.environ[CUBLAS_WORKSPACE] = CUBLAS_DETERMINISTIC
    elif os.environ.get(CUBLAS_WORKSPACE) == CUBLAS_DETERMINISTIC:
        del os.environ[CUBLAS_WORKSPACE]
    if processes is not None:
        jax.distributed.initialize(processes.coordinator, processes.count, processes.index)
    _current = Runtime(compilation_cache=directory, deterministic=deterministic)
    _configured = True
    return _current


def configure_once() -> Runtime:
    """The runtime as ``configure`` sets it by default, unless this process configured it
    already (the CLI does, from its flags): what the Python API calls on first use."""
    return _current if _configured else configure()


def _cache_dir() -> str | None:
    """The compilation cache directory JAX has now (set by us or by JAX_COMPILATION_CACHE_DIR)."""
    return getattr(jax.config, "jax_compilation_cache_dir")  # noqa: B009 (not in jax's stubs)


def describe() -> dict[str, Any]:
    """This process's runtime, for config.json and benchmark lines."""
    device = jax.devices()[0]
    return {
        **dataclasses.asdict(_current),
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
    }


class CompileCounter:
    """Counts the XLA programs this process compiled (persistent-cache hits excluded) from the
    moment it is created; ``compiled`` and ``from_cache`` read the counts."""

    def __init__(self) -> None:
        self.requested = 0
        self.from_cache = 0
        monitoring.register_event_duration_secs_listener(self._on_duration)
        monitoring.register_event_listener(self._on_event)

    def _on_duration(self, event: str, duration_secs: float, **kwargs: str | int) -> None:
        if event == _COMPILE_EVENT:
            self.requested += 1

    def _on_event(self, event: str, **kwargs: str | int) -> None:
        if event == _CACHE_HIT_EVENT:
            self.from_cache += 1

    @property
    def compiled(self) -> int:
        return self.requested - self.from_cache

    def close(self) -> None:
        monitoring.unregister_event_duration_listener(self._on_duration)
        monitoring.unregister_event_listener(self._on_event)
