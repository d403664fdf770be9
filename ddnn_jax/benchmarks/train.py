"""Training throughput: our compiled epoch vs the per-step Python loop vs PyTorch at its best.

    ddnn bench train [--image-shape 28,28,1] [--batch-size 128] [--steps 20] [--torch-device auto]
    ddnn bench train --sweep          (the grid of issue #14: batch 128, 512 x 28,28,1, 32,32,3)
    (or python experiments/bench_train.py ...)

Same model, batch, augmentation, loss and optimizer in every contender, in one process,
interleaved (A B C A B C ...) so that load changes hit all of them alike:

* ``jax_epoch``: ``train.TrainEpoch``, the whole epoch as one compiled program, data on the
  device;
* ``jax_epoch_progress``: the same with the live progress bar that ``ddnn train`` shows on a
  terminal (a tqdm bar, drawn to /dev/null here): the epoch is then 20 calls of a compiled chunk
  of max(1, steps // 20) steps, the bar advancing between them, as training does;
* ``jax_epoch_bf16``: ``jax_epoch`` computing in bfloat16 (``--precision bf16``: parameters,
  Adam state and loss stay float32);
* ``jax_step_loop``: the jitted step driven from Python, one call per batch of host memory, as
  we trained before the compiled epoch;
* with ``--xla-conv`` (or named in ``--contenders``), ``jax_epoch_xla_conv`` and
  ``jax_step_loop_xla_conv``: both with XLA's convolution instead of the CPU's default im2col;
* the PyTorch reference (``ddnn_jax.interop.torch_train``), if torch is installed, three ways:
  ``torch`` eager; ``torch_compile``, the whole step (forward, loss, backward, Adam update) under
  ``torch.compile``; ``torch_cudagraphs``, the same in mode ``reduce-overhead``, which replays
  CUDA graphs and so runs only on CUDA.

PyTorch runs on ``--torch-device``: ``auto`` takes CUDA when PyTorch sees a GPU and JAX runs on
one, so both sides share the device. Every contender but the step loops holds its data on its
device before the clock starts; compiling and warm-up runs are not timed, and on CUDA the clock is
read after ``torch.cuda.synchronize``. The compiled PyTorch lines say how many graphs the step
became (``torch_graphs``; three on the CPU, split at ``backward()``) and how many ran without CUDA
graphs (``torch_cudagraph_skips``). On CUDA both sides may use TF32: XLA does by default for float32
matrix products and convolutions (``jax_default_matmul_precision`` unset), and PyTorch is
switched to it for both, with cuDNN's autotuner on. A contender that cannot run here (no CUDA for
CUDA graphs, no compiler for ``torch.compile``) prints a line saying it was skipped and why.

Prints one JSON line per contender (median images/s of ``--repeats``) and the ratios to PyTorch
eager, to the compiled epoch, to the step loops and, for each JAX contender, to the fastest
PyTorch contender of the run (``"over": "best_torch"``, named in ``best_torch``): of the
medians, and the median of the per-round ratios (each round runs the contenders back to back,
so this one is the steadier on a machine whose speed drifts). Every line carries the case
(batch, image shape), both frameworks' devices, the torch version and the precision settings.
Synthetic uint8 images: the cost does not depend on pixels.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import statistics
import time
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
BASELINES = ("torch", "jax_epoch", "jax_step_loop", "jax_step_loop_xla_conv")
TORCH_DEVICES = ("auto", "cpu", "cuda")
# the grid of issue #14, run by --sweep
SWEEP_BATCH_SIZES = (128, 512)
SWEEP_IMAGE_SHAPES = ((28, 28, 1), (32, 32, 3))


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


def _torch_setup(torch_device: str) -> dict:
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


def _compile_counts() -> dict[str, int]:
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


def _image_shape(text: str) -> tuple[int, int, int]:
    try:
        height, width, channels = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W,C such as 28,28,1, got '{text}'") from None
    return height, width, channels


EPILOG = """contenders:
  jax_epoch            the whole epoch as one compiled program (ours)
  jax_epoch_progress   the same in 20 calls, with the live progress bar of ddnn train
  jax_epoch_bf16       jax_epoch computing in bfloat16 (--precision bf16)
  jax_step_loop        the jitted step called from Python once per batch
  *_xla_conv           the two above with XLA's convolution (--xla-conv)
  torch                the PyTorch reference, eager
  torch_compile        its whole step (forward, loss, backward, Adam) under torch.compile
  torch_cudagraphs     the same in mode reduce-overhead: CUDA graphs, on CUDA only

Prints one JSON line per contender (median images/s, or "skipped" and why), then the speed
ratios; "over": "best_torch" compares each JAX contender with the fastest PyTorch contender of
the run, named in "best_torch". The GPU grid of issue #14: ddnn bench train --sweep --torch-device cuda
"""


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the epilog's layout; shows a flag's default unless it has none to show."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ddnn bench train", description=__doc__.splitlines()[0], epilog=EPILOG, formatter_class=_Help
    )
    parser.add_argument(
        "--image-shape", type=_image_shape, default="28,28,1", help="H,W,C of the synthetic images"
    )
    parser.add_argument("--num-classes", type=int, default=10, help="classes of the model")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per contender (median)")
    parser.add_argument(
        "--contenders",
        help=f"comma-separated, from {', '.join(CONTENDERS + XLA_CONTENDERS)} "
        "(default: all but the *_xla_conv ones)",
    )
    parser.add_argument(
        "--xla-conv", action="store_true", help="add both JAX contenders with XLA's convolution (slow on CPU)"
    )
    parser.add_argument(
        "--torch-device",
        default="auto",
        choices=TORCH_DEVICES,
        help="where PyTorch trains; auto: cuda when PyTorch sees a GPU and JAX's backend is gpu, else cpu",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help=f"measure every batch of {', '.join(map(str, SWEEP_BATCH_SIZES))} with every image shape of "
        f"{' and '.join(','.join(map(str, shape)) for shape in SWEEP_IMAGE_SHAPES)} "
        "(in place of --batch-size and --image-shape)",
    )
    args = parser.parse_args(argv)
    args.contenders = [c.strip() for c in (args.contenders or ",".join(CONTENDERS)).split(",")]
    if args.xla_conv:
        args.contenders += [c for c in XLA_CONTENDERS if c not in args.contenders]
    unknown = set(args.contenders) - set(CONTENDERS + XLA_CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    return args


def cases(args: argparse.Namespace, torch_device: str) -> list[Case]:
    """The measurements to make: the one given by the flags, or the sweep's grid."""
    if args.sweep:
        grid = list(itertools.product(SWEEP_BATCH_SIZES, SWEEP_IMAGE_SHAPES))
    else:
        grid = [(args.batch_size, args.image_shape)]
    return [Case(shape, batch, args.steps, args.num_classes, torch_device) for batch, shape in grid]


def _build(name: str, case: Case, images, labels, options) -> Callable[[], None]:
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


def _ratio_line(name: str, base: str, rates: dict[str, list[float]], common: dict, role: str = "") -> dict:
    """``name``'s speed over ``base``'s: of the medians, and the median of the per-round ratios.
    With a ``role`` (``best_torch``), "over" names the role and a field of that name the contender."""
    # per round: both ran back to back, under the same load
    paired = [a / b for a, b in zip(rates[name], rates[base], strict=True)]
    line = {"measure": "train_speed_ratio", "contender": name, "over": role or base}
    if role:
        line[role] = base
    return {
        **line,
        "ratio": round(statistics.median(rates[name]) / statistics.median(rates[base]), 3),
        "paired_ratio_median": round(statistics.median(paired), 3),
        **common,
    }


def _print_lines(rates: dict[str, list[float]], common: dict, notes: dict[str, dict]) -> None:
    """One line per contender (median images/s, with its ``notes``), then each contender over
    each baseline and each JAX contender over the fastest PyTorch one."""
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        line = {
            "measure": "train_throughput",
            "contender": name,
            "images_per_s": round(median[name], 1),
            "runs": [round(v, 1) for v in values],
            **notes.get(name, {}),
            **common,
        }
        print(json.dumps(line))
    for name in median:
        for base in BASELINES:
            if base in median and name != base:
                print(json.dumps(_ratio_line(name, base, rates, common)))
    torch_medians = {name: value for name, value in median.items() if name in TORCH_MODES}
    if not torch_medians:
        return
    best = max(torch_medians, key=lambda name: torch_medians[name])
    for name in median:
        if name not in TORCH_MODES:
            print(json.dumps(_ratio_line(name, best, rates, common, role="best_torch")))


def _skipped_line(name: str, reason: str, common: dict) -> dict:
    return {"measure": "train_throughput", "contender": name, "skipped": reason, **common}


def _synthetic(case: Case) -> tuple[np.ndarray, np.ndarray, dict]:
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


def _build_all(
    case: Case, contenders: list[str], common: dict
) -> tuple[dict[str, Callable[[], None]], dict[str, dict]]:
    """Every contender that can run, ready to time, and notes on the compiled ones; prints a
    skipped line for each of the others."""
    images, labels, options = _synthetic(case)
    runs: dict[str, Callable[[], None]] = {}
    notes: dict[str, dict] = {}
    for name in contenders:
        compiled = bool(TORCH_MODES.get(name))
        counts_before = _compile_counts() if compiled else {}
        try:
            runs[name] = _build(name, case, images, labels, options)
        except Skipped as reason:
            print(json.dumps(_skipped_line(name, str(reason), common)), flush=True)
            continue
        if compiled:
            # how many graphs the step became, and how many of those CUDA graphs could not take
            notes[name] = {key: value - counts_before[key] for key, value in _compile_counts().items()}
    return runs, notes


def run_case(case: Case, contenders: list[str], repeats: int, environment: dict) -> None:
    """Builds every contender for ``case``, times them interleaved and prints the JSON lines."""
    common = {
        **environment,
        "image_shape": list(case.image_shape),
        "batch_size": case.batch_size,
        "steps": case.steps,
        "repeats": repeats,
    }
    if environment["torch_version"] is not None and any(TORCH_MODES.get(name) for name in contenders):
        import torch

        # a fresh compile per case: no shapes or recompile counts carried over from the last one
        torch.compiler.reset()
    runs, notes = _build_all(case, contenders, common)
    images = case.steps * case.batch_size
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved: load changes hit every contender alike
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            rates[name].append(images / (time.perf_counter() - started))
    _print_lines(rates, common, notes)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    torch_device = resolve_torch_device(args.torch_device, jax.default_backend())
    # unset ("default"): XLA may use TF32 for float32 products on GPUs that have it
    jax_precision = getattr(jax.config, "jax_default_matmul_precision", None) or "default"
    environment = {
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "jax_version": jax.__version__,
        "jax_default_matmul_precision": jax_precision,
        **_torch_setup(torch_device),
    }
    for case in cases(args, torch_device):
        run_case(case, args.contenders, args.repeats, environment)


if __name__ == "__main__":
    main()
