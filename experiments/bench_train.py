"""Training throughput of the default configuration on the current JAX backend.

    python experiments/bench_train.py [--image-shape 28,28,1] [--batch-size 128] [--steps 30]

Prints one JSON line per measurement: steady-state images/s of the jitted train step (median of
repeats, compile excluded), the compile time, evaluation images/s, and the seconds one epoch of
the default Fashion-MNIST split (54,000 train, 6,000 validation images) takes at those rates.
Synthetic uint8 images: the step's cost does not depend on pixel values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from ddnn_jax.config import TrainConfig
from ddnn_jax.train import (
    build_model, create_train_state, make_predict_fn, make_train_step, predict_in_batches,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-shape", default="28,28,1")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=54000)
    parser.add_argument("--val-size", type=int, default=6000)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.image_shape.split(","))
    config = TrainConfig(batch_size=args.batch_size)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch_size, *shape), dtype=np.uint8)
    labels = rng.integers(0, args.num_classes, args.batch_size).astype(np.int32)
    mean, std = np.full(shape[-1], 0.5, np.float32), np.full(shape[-1], 0.25, np.float32)

    state = create_train_state(config, shape, args.num_classes)
    step = make_train_step(local_weight=0.5, mean=mean, std=std, horizontal_flip=True,
                           crop_padding=4 if shape[0] >= 32 else 2)
    batch = {"image": images, "label": labels}
    key = jax.random.key(0)
    started = time.perf_counter()
    state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - started

    rates = []
    for repeat in range(args.repeats):
        started = time.perf_counter()
        for i in range(args.steps):
            state, metrics = step(state, batch, jax.random.fold_in(key, i))
        jax.block_until_ready(metrics)
        rates.append(args.steps * args.batch_size / (time.perf_counter() - started))
    train_rate = statistics.median(rates)

    predict = make_predict_fn(build_model(config, args.num_classes), mean, std)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    eval_images = rng.integers(0, 256, (4 * config.eval_batch_size, *shape), dtype=np.uint8)
    predict_in_batches(predict, variables, eval_images[: config.eval_batch_size], config.eval_batch_size)
    started = time.perf_counter()
    predict_in_batches(predict, variables, eval_images, config.eval_batch_size)
    eval_rate = len(eval_images) / (time.perf_counter() - started)

    steps_per_epoch = args.train_size // args.batch_size
    common = {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
              "image_shape": list(shape), "batch_size": args.batch_size}
    for name, value, unit in [
        ("train_throughput", train_rate, "images/s"),
        ("train_step_compile", compile_s, "s"),
        ("eval_throughput", eval_rate, "images/s"),
        ("epoch_time", steps_per_epoch * args.batch_size / train_rate + args.val_size / eval_rate, "s"),
    ]:
        print(json.dumps({"measure": name, "value": round(value, 3), "unit": unit, **common}))


if __name__ == "__main__":
    main()
