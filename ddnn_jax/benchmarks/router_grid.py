"""Router grid training: the vmapped grid (one program for every L0) vs a sequential loop.

    ddnn bench router [--targets 9] [--n-train 20000] [--epochs 5] [--repeats 3]
    (or python experiments/bench_router.py ...)

Both train the same MLP routers on logits with the same keys, ``--epochs`` epochs each (early
stopping off so both do equal work): ``router_training.make_grid_trainer`` once for the whole grid, and
the same trainer compiled for a grid of one target, called once per target. Synthetic logits
and labels; compile excluded (timed separately). One JSON line per contender (median of
``--repeats``, interleaved), then the speed-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import numpy as np

from ddnn_jax.core.router_net import RouterConfig
from ddnn_jax.core.router_training import make_grid_trainer, target_keys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="ddnn bench router",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--targets", type=int, default=9, help="grid points (0.1 .. 0.9 for 9)")
    parser.add_argument("--n-train", type=int, default=20000, help="training samples")
    parser.add_argument("--n-val", type=int, default=5000, help="validation samples")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per target")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per contender (median)")
    args = parser.parse_args(argv)
    targets = tuple(np.linspace(0.1, 0.9, args.targets).round(4).tolist())
    config = dataclasses.replace(
        RouterConfig(), targets=targets, max_epochs=args.epochs, early_stopping_patience=args.epochs + 1
    )
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(args.n_train, 10)).astype(np.float32)
    x_val = rng.normal(size=(args.n_val, 10)).astype(np.float32)
    y_train = (rng.random((len(targets), args.n_train)) < 0.5).astype(np.int32)
    y_val = (rng.random((len(targets), args.n_val)) < 0.5).astype(np.int32)
    keys = target_keys(config.seed, targets)

    grid = make_grid_trainer(config, args.n_train)
    grid_args = (keys, x_train, y_train, x_val, y_val)
    grid_compile = grid.compile(*grid_args)
    one = make_grid_trainer(dataclasses.replace(config, targets=targets[:1]), args.n_train)
    one_compile = one.compile(keys[:1], x_train, y_train[:1], x_val, y_val[:1])

    def vmapped():
        jax.block_until_ready(grid(*grid_args))

    def sequential():
        for g in range(len(targets)):
            jax.block_until_ready(one(keys[g : g + 1], x_train, y_train[g : g + 1], x_val, y_val[g : g + 1]))

    seconds: dict[str, list[float]] = {"vmapped_grid": [], "sequential_loop": []}
    for _ in range(args.repeats):  # interleaved
        for name, run in (("vmapped_grid", vmapped), ("sequential_loop", sequential)):
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    grid_seconds = statistics.median(seconds["vmapped_grid"])
    sequential_seconds = statistics.median(seconds["sequential_loop"])

    common = {
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "targets": len(targets),
        "n_train": args.n_train,
        "epochs": args.epochs,
    }
    for name, median_seconds, compile_s in (
        ("vmapped_grid", grid_seconds, grid_compile),
        ("sequential_loop", sequential_seconds, one_compile),
    ):
        print(
            json.dumps(
                {
                    "measure": "router_grid_training",
                    "contender": name,
                    "seconds": round(median_seconds, 3),
                    "compile_seconds": round(compile_s, 3),
                    **common,
                }
            )
        )
    print(
        json.dumps(
            {"measure": "router_grid_speedup", "ratio": round(sequential_seconds / grid_seconds, 3), **common}
        )
    )


if __name__ == "__main__":
    main()
