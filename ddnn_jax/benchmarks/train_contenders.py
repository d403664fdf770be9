"""The contenders of ``ddnn bench train``, each built into a timed run on the same synthetic
data, and the PyTorch side's device and settings.

* ``jax_epoch``: ``core.training.TrainEpoch``, the whole epoch as one compiled program, data on the
  device;
* ``jax_epoch_progress``: the same with the live progress bar that ``ddnn train`` shows on a
  terminal (a tqdm bar, drawn to /dev/null here): the epoch is then 20 calls of a compiled chunk
  of max(1, steps // 20) steps, the bar advancing between them, as training does;
* ``jax_epoch_bf16``: ``jax_epoch`` computing in bfloat16 (``--precision bf16``: parameters,
  Adam state and loss stay float32);
* ``jax_step_loop``: the jitted step driven from Python, one call per batch of host memory, as
  we trained before the compiled epoch;
* ``jax_epoch_xla_conv`` and ``jax_step_loop_xla_conv``: both with XLA's convolution instead of
  the CPU's default im2col;
* the PyTorch reference (``ddnn_jax.interop.torch_train``), if torch is installed, three ways:
  ``torch`` eager; ``torch_compile``, the whole step (forward, loss, backward, Adam update) under
  ``torch.compile``; ``torch_cudagraphs``, the same in mode ``reduce-overhead``, which replays
  CUDA graphs and so runs only on CUDA.

Every contender but the step loops holds its data on its device before the clock starts;
compiling and warm-up runs are not timed, and on CUDA the clock is read after
``torch.cuda.synchronize``. On CUDA, PyTorch is switched to TF32 for matrix products and
convolutions, with cuDNN's autotuner on, as XLA does by default.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from ddnn_jax.common.errors import UsageError
from ddnn_jax.core.config import TrainConfig
from ddnn_jax.core.training import (
    TICKS_PER_EPOCH,
    TrainEpoch,
    create_train_state,
    data_mesh,
    make_train_step,
    replicate,
    run_constants,
    train_step_fn,
)

JAX_CONTENDERS = ("jax_epoch", "jax_epoch_progress", "jax_epoch_bf16", "jax_step_loop")
XLA_CONTENDERS = ("jax_epoch_xla_conv", "jax_step_loop_xla_conv")
# PyTorch contenders and their torch.compile mode (None: eager)
TORCH_MODES = {"torch": None, "torch_compile": "default", "torch_cudagraphs": "reduce-overhead"}
CONTENDERS = JAX_CONTENDERS + tuple(TORCH_MODES)
TORCH_DEVICES = ("auto", "cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class Case:
    """One measurement: every contender trains on the same images with the same settings."""

    image_shape: tuple[int, int, int]
    batch_size: int
    steps: int  # optimizer steps per timed run
    num_classes: int
    torch_device: str  # "cpu" or "cuda", resolved from --torch-device


class Skipped(Exception):
    """A contender that cannot run on this machine; the message says why, in one line."""


def build_contender(name: str, case: Case, images, labels, options) -> Callable[[], None]:
    """The contender's timed run, compiled and warmed up already; Skipped if it cannot run."""
    if name in TORCH_MODES:
        try:
            return _torch(case, images, labels, options, TORCH_MODES[name])
        except ImportError:
            raise Skipped("torch is not installed (pip install -e '.[parity]')") from None
    conv = "xla" if name.endswith("_xla_conv") else "auto"
    if name.startswith("jax_step_loop"):
        return _jax_step_loop(case, images, labels, options, conv)
    precision = "bf16" if name.endswith("_bf16") else "fp32"
    return _jax_epoch(
        case, images, labels, options, conv, progress=name == "jax_epoch_progress", precision=precision
    )


def synthetic_data(case: Case) -> tuple[np.ndarray, np.ndarray, dict]:
    """Random uint8 images and labels for ``case.steps`` batches, and the training options."""
    rng = np.random.default_rng(0)
    n = case.steps * case.batch_size
    images = rng.integers(0, 256, (n, *case.image_shape), dtype=np.uint8)
    labels = rng.integers(0, case.num_classes, n).astype(np.int32)
    channels = case.image_shape[-1]
    options = dict(
        local_weight=0.5,
        mean=np.full(channels, 0.5, np.float32),
        std=np.full(channels, 0.25, np.float32),
        horizontal_flip=True,
        crop_padding=4 if case.image_shape[0] >= 32 else 2,
    )
    return images, labels, options


def _jax_epoch(case, images, labels, options, conv, progress=False, precision="fp32"):
    mesh = data_mesh(case.batch_size)
    bar = tqdm(total=None, file=open(os.devnull, "w"), disable=False) if progress else None  # noqa: SIM115

    def on_step(done, loss):  # what training's epoch bar does
        assert bar is not None
        bar.set_postfix_str(f"loss {float(loss):.4f}", refresh=False)
        bar.update(int(done) - bar.n)

    epoch = TrainEpoch(
        train_step_fn(horizontal_flip=options["horizontal_flip"], crop_padding=options["crop_padding"]),
        mesh,
        batch_size=case.batch_size,
        steps_per_epoch=case.steps,
        calls=TICKS_PER_EPOCH if progress else 1,  # as training chooses
    )
    config = TrainConfig(conv=conv, precision=precision)
    state = replicate(mesh, create_train_state(config, case.image_shape, case.num_classes))
    x, y, root = replicate(mesh, images), replicate(mesh, labels), jax.random.key(0)
    constants = run_constants(options["local_weight"], options["mean"], options["std"])
    calls = iter(range(1, 10**6))

    def run():
        nonlocal state
        if bar is not None:
            bar.reset()
        state, metrics = epoch(state, x, y, root, next(calls), constants, on_step if progress else None)
        jax.block_until_ready(metrics)

    run()  # compile
    return run


def _jax_step_loop(case, images, labels, options, conv):
    step = make_train_step(**options)
    state = create_train_state(TrainConfig(conv=conv), case.image_shape, case.num_classes)
    root, bs = jax.random.key(0), case.batch_size

    def run():
        nonlocal state
        for i in range(case.steps):
            batch = {"image": images[i * bs : (i + 1) * bs], "label": labels[i * bs : (i + 1) * bs]}
            state, metrics = step(state, batch, jax.random.fold_in(root, i))
        jax.block_until_ready(metrics)

    run()  # compile
    return run


def _torch(case, images, labels, options, compile_mode):
    import torch

    from ddnn_jax.interop.torch_train import TorchTrainer

    if compile_mode == "reduce-overhead" and case.torch_device != "cuda":
        raise Skipped(f"CUDA graphs need a CUDA device; PyTorch runs on {case.torch_device} here")
    trainer = TorchTrainer(
        case.image_shape,
        case.num_classes,
        mean=options["mean"],
        std=options["std"],
        crop_padding=options["crop_padding"],
        horizontal_flip=options["horizontal_flip"],
        local_weight=options["local_weight"],
        device=case.torch_device,
        compile_mode=compile_mode,
    )
    # on the device once, before any clock starts
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(trainer.device)
    y = torch.from_numpy(labels).long().to(trainer.device)
    batches = list(zip(x.split(case.batch_size), y.split(case.batch_size), strict=True))

    def run():
        for images_batch, labels_batch in batches:
            trainer.step(images_batch, labels_batch)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()

    if compile_mode is None:
        run()
        return run
    try:
        # twice: the first run compiles, the second records the CUDA graphs it replays later
        run()
        run()
    except Exception as err:  # whatever torch.compile raises on a machine it cannot use
        raise Skipped(f"torch.compile failed: {_one_line(err)}") from err
    return run


def _one_line(err: BaseException, limit: int = 200) -> str:
    """The error's type and the first line of its message, cut to ``limit`` characters."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resolve_torch_device(requested: str, jax_backend: str) -> str:
    """``cpu`` or ``cuda`` for ``--torch-device``; UsageError when CUDA is asked for but absent.

    Args:
        requested: ``auto``, ``cpu`` or ``cuda``.
        jax_backend: ``jax.default_backend()``; ``auto`` takes CUDA only where JAX runs on a GPU.

    Returns:
        The device PyTorch runs on.
    """
    if requested not in TORCH_DEVICES:
        raise UsageError(f"--torch-device must be one of {', '.join(TORCH_DEVICES)}, got '{requested}'")
    if requested == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        if requested == "cuda":
            raise UsageError(
                "--torch-device cuda needs PyTorch, which is not installed: "
                "install a CUDA build of torch, or leave --torch-device at auto"
            ) from None
        return "cpu"
    if torch.cuda.is_available():
        return "cuda" if requested == "cuda" or jax_backend == "gpu" else "cpu"
    if requested == "cuda":
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise UsageError(
            f"--torch-device cuda: PyTorch {torch.__version__} ({build}) sees no CUDA device; "
            "run on a machine with an NVIDIA GPU and a CUDA build of torch, or pass --torch-device cpu"
        )
    return "cpu"


def torch_setup(torch_device: str) -> dict:
    """Switches PyTorch on CUDA to TF32 and cuDNN's autotuner; returns the settings to record."""
    try:
        import torch
    except ImportError:
        return {"torch_version": None, "torch_device": None, "torch_device_name": None}
    cudnn = torch.backends.cudnn
    if torch_device == "cuda":
        # The calls that work on every torch 2.x: torch >= 2.9 also has per-backend
        # fp32_precision flags, but setting those makes get_float32_matmul_precision, which
        # Inductor calls while compiling, raise for mixing the two APIs.
        torch.set_float32_matmul_precision("high")  # TF32 for float32 matrix products
        cudnn.allow_tf32 = True  # and convolutions (cuDNN's default already)
        cudnn.benchmark = True  # fixed shapes: let cuDNN time its algorithms once
    return {
        "torch_version": torch.__version__,
        "torch_device": torch_device,
        "torch_device_name": torch.cuda.get_device_name() if torch_device == "cuda" else _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
        "torch_cudnn_allow_tf32": cudnn.allow_tf32,
        "torch_cudnn_benchmark": cudnn.benchmark,
    }


def _cpu_name() -> str:
    """The processor's model name where Linux tells it, else its architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def compile_counts() -> dict[str, int]:
    """Graphs torch.compile has made so far, and those it ran without CUDA graphs (torch's own
    counters: read before and after a contender is built, they say what its build did)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    return {
        "torch_graphs": int(counters["stats"]["unique_graphs"]),
        "torch_cudagraph_skips": int(counters["inductor"]["cudagraph_skips"]),
    }
