"""Why CNN routers are slow on XLA:CPU: a convolution's gradient inside a compiled loop vs outside.

    python experiments/bench_router.py

Prints one JSON line per measurement: the gradient of one 3x3 convolution (batch 256, 14x14x32,
the features-cnn router's first layer) jitted alone, and the same computation repeated by
``lax.scan`` (as the router trainer's step loop does); the ratio is the in-loop slowdown per
iteration. Measured on the 2-core development CPU (jax 0.10.2): about 8.5x.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp

REPEATS = 3
LOOP = 3


def _conv_loss(w, x):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return (y**2).sum()


def _median_seconds(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    x = jnp.ones((256, 14, 14, 32))
    w = jnp.full((3, 3, 32, 32), 0.01)
    grad = jax.grad(_conv_loss)
    alone = _median_seconds(jax.jit(grad), w, x)
    looped = jax.jit(lambda w, x: jax.lax.scan(lambda c, _: (c, grad(w, x)), 0.0, None, length=LOOP)[1])
    in_loop = _median_seconds(looped, w, x) / LOOP
    for name, seconds in (("conv_grad_alone", alone), ("conv_grad_in_scan", in_loop)):
        print(json.dumps({"bench": name, "backend": jax.default_backend(), "ms": 1e3 * seconds}))
    print(json.dumps({"bench": "in_loop_slowdown", "ratio": in_loop / alone}))


if __name__ == "__main__":
    main()
