"""Training throughput: our compiled epoch vs the per-step Python loop vs PyTorch at its best.

    ddnn bench train [--image-shape 28,28,1] [--batch-size 128] [--steps 20] [--torch-device auto]
    ddnn bench train --sweep          (the grid of issue #14: batch 128, 512 x 28,28,1, 32,32,3)
    (or python experiments/bench_train.py ...)

Same model, batch, augmentation, loss and optimizer in every contender (``train_contenders``), in
one process, interleaved (A B C A B C ...) so that load changes hit all of them alike. The
``*_xla_conv`` contenders run with ``--xla-conv`` (or when named in ``--contenders``).

PyTorch runs on ``--torch-device``: ``auto`` takes CUDA when PyTorch sees a GPU and JAX runs on
one, so both sides share the device. The compiled PyTorch lines say how many graphs the step
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
import itertools
import json
import statistics
import time
from collections.abc import Callable

import jax

from ddnn_jax.benchmarks.train_contenders import (
    CONTENDERS,
    TORCH_DEVICES,
    TORCH_MODES,
    XLA_CONTENDERS,
    Case,
    Skipped,
    build_contender,
    compile_counts,
    resolve_torch_device,
    synthetic_data,
    torch_setup,
)

BASELINES = ("torch", "jax_epoch", "jax_step_loop", "jax_step_loop_xla_conv")
# the grid of issue #14, run by --sweep
SWEEP_BATCH_SIZES = (128, 512)
SWEEP_IMAGE_SHAPES = ((28, 28, 1), (32, 32, 3))


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


def _build_all(
    case: Case, contenders: list[str], common: dict
) -> tuple[dict[str, Callable[[], None]], dict[str, dict]]:
    """Every contender that can run, ready to time, and notes on the compiled ones; prints a
    skipped line for each of the others."""
    images, labels, options = synthetic_data(case)
    runs: dict[str, Callable[[], None]] = {}
    notes: dict[str, dict] = {}
    for name in contenders:
        compiled = bool(TORCH_MODES.get(name))
        counts_before = compile_counts() if compiled else {}
        try:
            runs[name] = build_contender(name, case, images, labels, options)
        except Skipped as reason:
            print(json.dumps(_skipped_line(name, str(reason), common)), flush=True)
            continue
        if compiled:
            # how many graphs the step became, and how many of those CUDA graphs could not take
            notes[name] = {key: value - counts_before[key] for key, value in compile_counts().items()}
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
        **torch_setup(torch_device),
    }
    for case in cases(args, torch_device):
        run_case(case, args.contenders, args.repeats, environment)


if __name__ == "__main__":
    main()
