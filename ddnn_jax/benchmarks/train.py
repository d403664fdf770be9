"""Training throughput: our compiled epoch vs the per-step Python loop vs the PyTorch reference.

    ddnn bench train [--image-shape 28,28,1] [--batch-size 128] [--steps 20]
    (or python experiments/bench_train.py ...)

Same model, batch, augmentation, loss and optimizer in every contender, on this machine, in one
process, interleaved (A B C A B C ...) so that load changes hit all of them alike:

* ``jax_epoch``: ``train.TrainEpoch``, the whole epoch as one compiled program;
* ``jax_epoch_progress``: the same with the live progress bar that ``ddnn train`` shows on a
  terminal (host callbacks from inside the epoch into a tqdm bar, drawn to /dev/null here). An
  epoch of ``--steps`` steps ticks every max(1, steps // 50) steps, as training does: below 100
  steps that is every step, more often than a real epoch (421 steps on Fashion-MNIST) ticks;
* ``jax_step_loop``: the jitted step driven from Python, one call per batch;
* with ``--xla-conv`` (or named in ``--contenders``), ``jax_epoch_xla_conv`` and
  ``jax_step_loop_xla_conv``: both with XLA's convolution instead of the CPU's default im2col
  (the latter is how we trained before the compiled epoch);
* ``torch``: the PyTorch reference (``ddnn_jax.interop.torch_train``), if torch is installed.

Prints one JSON line per contender (median images/s of ``--repeats``, compile excluded) and the
ratios to PyTorch, to the compiled epoch and to the step loops: of the medians, and the median of
the per-round ratios (each round runs the contenders back to back, so this one is the steadier
on a machine whose speed drifts). Synthetic uint8 images: the cost does not depend on pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np
from tqdm import tqdm

from ddnn_jax.config import TrainConfig
from ddnn_jax.train import (
    TrainEpoch,
    create_train_state,
    data_mesh,
    make_train_step,
    replicate,
    run_constants,
    train_step_fn,
)


def _jax_epoch(args, shape, images, labels, options, conv, progress=False):
    mesh = data_mesh(args.batch_size)
    bar = tqdm(total=None, file=open(os.devnull, "w"), disable=False) if progress else None  # noqa: SIM115

    def on_step(done, loss):  # what training's epoch bar does
        assert bar is not None
        bar.set_postfix_str(f"loss {float(loss):.4f}", refresh=False)
        bar.update(int(done) - bar.n)

    epoch = TrainEpoch(
        train_step_fn(horizontal_flip=options["horizontal_flip"], crop_padding=options["crop_padding"]),
        mesh,
        batch_size=args.batch_size,
        steps_per_epoch=args.steps,
    )
    state = replicate(mesh, create_train_state(TrainConfig(conv=conv), shape, args.num_classes))
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


def _jax_step_loop(args, shape, images, labels, options, conv):
    step = make_train_step(**options)
    state = create_train_state(TrainConfig(conv=conv), shape, args.num_classes)
    root, bs = jax.random.key(0), args.batch_size

    def run():
        nonlocal state
        for i in range(args.steps):
            batch = {"image": images[i * bs : (i + 1) * bs], "label": labels[i * bs : (i + 1) * bs]}
            state, metrics = step(state, batch, jax.random.fold_in(root, i))
        jax.block_until_ready(metrics)

    run()  # compile
    return run


def _torch(args, shape, images, labels, options):
    import torch

    from ddnn_jax.interop.torch_train import TorchTrainer

    trainer = TorchTrainer(
        shape,
        args.num_classes,
        mean=options["mean"],
        std=options["std"],
        crop_padding=options["crop_padding"],
        horizontal_flip=options["horizontal_flip"],
        local_weight=options["local_weight"],
    )
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels).long()
    bs = args.batch_size

    def run():
        for i in range(args.steps):
            loss = trainer.step(x[i * bs : (i + 1) * bs], y[i * bs : (i + 1) * bs])
        loss.item()

    run()
    return run


CONTENDERS = ("jax_epoch", "jax_epoch_progress", "jax_step_loop", "torch")
XLA_CONTENDERS = ("jax_epoch_xla_conv", "jax_step_loop_xla_conv")
BASELINES = ("torch", "jax_epoch", "jax_step_loop", "jax_step_loop_xla_conv")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ddnn bench train",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--image-shape", default="28,28,1", help="H,W,C of the synthetic images")
    parser.add_argument("--num-classes", type=int, default=10, help="classes of the model")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per contender (median)")
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated, from {', '.join(CONTENDERS + XLA_CONTENDERS)}",
    )
    parser.add_argument(
        "--xla-conv", action="store_true", help="add both JAX contenders with XLA's convolution (slow on CPU)"
    )
    args = parser.parse_args(argv)
    args.contenders = [c.strip() for c in args.contenders.split(",")]
    if args.xla_conv:
        args.contenders += [c for c in XLA_CONTENDERS if c not in args.contenders]
    unknown = set(args.contenders) - set(CONTENDERS + XLA_CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    return args


def _build(name: str, args, shape, images, labels, options):
    """The contender's timed run (compiled already), or None when torch is missing."""
    if name == "torch":
        try:
            return _torch(args, shape, images, labels, options)
        except ImportError:
            return None
    conv = "xla" if name.endswith("_xla_conv") else "auto"
    if name.startswith("jax_step_loop"):
        return _jax_step_loop(args, shape, images, labels, options, conv)
    return _jax_epoch(args, shape, images, labels, options, conv, progress=name == "jax_epoch_progress")


def _print_lines(rates: dict[str, list[float]], common: dict) -> None:
    """One line per contender (median images/s), then each contender over each baseline."""
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        line = {
            "measure": "train_throughput",
            "contender": name,
            "images_per_s": round(median[name], 1),
            "runs": [round(v, 1) for v in values],
            **common,
        }
        print(json.dumps(line))
    for name in median:
        for base in BASELINES:
            if base in median and name != base:
                # per round: both ran back to back, under the same load
                paired = [a / b for a, b in zip(rates[name], rates[base], strict=True)]
                line = {
                    "measure": "train_speed_ratio",
                    "contender": name,
                    "over": base,
                    "ratio": round(median[name] / median[base], 3),
                    "paired_ratio_median": round(statistics.median(paired), 3),
                    **common,
                }
                print(json.dumps(line))


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    shape = tuple(int(s) for s in args.image_shape.split(","))
    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    labels = rng.integers(0, args.num_classes, n).astype(np.int32)
    channels = shape[-1]
    options = dict(
        local_weight=0.5,
        mean=np.full(channels, 0.5, np.float32),
        std=np.full(channels, 0.25, np.float32),
        horizontal_flip=True,
        crop_padding=4 if shape[0] >= 32 else 2,
    )
    built = {name: _build(name, args, shape, images, labels, options) for name in args.contenders}
    contenders = {name: run for name, run in built.items() if run is not None}
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):  # interleaved: load changes hit every contender alike
        for name, run in contenders.items():
            started = time.perf_counter()
            run()
            rates[name].append(n / (time.perf_counter() - started))
    common = {
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "image_shape": list(shape),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
    }
    _print_lines(rates, common)


if __name__ == "__main__":
    main()
