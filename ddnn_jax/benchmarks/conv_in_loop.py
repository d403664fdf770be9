"""XLA:CPU and convolutions inside compiled loops: XLA's convolution vs ``models.im2col_conv``.

    python experiments/bench_conv.py      (or: ddnn bench conv)

The gradient of one 3x3 convolution (batch 256, 14x14x32, the features-cnn router's first layer)
jitted alone, and the same computation repeated by ``lax.scan``, as our epoch and router loops
do. In the loop XLA:CPU keeps the backward convolutions in non-canonical dimension orders
(f01b_i01o->01bf in the compiled HLO) and runs them as a naive loop nest; alone, layout
assignment makes them canonical. im2col turns them into matmuls either way. One JSON line per
measurement, then the in-loop slowdown of each; with torch installed, the same gradient in
PyTorch (oneDNN on CPU) for scale. Gradients are taken with respect to the weights and the input,
as a training step needs both.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp

from ddnn_jax.models import im2col_conv

REPEATS = 3
LOOP = 3


def _xla_loss(w, x):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return (y**2).sum()


def _im2col_loss(w, x):
    return (im2col_conv(x, w, (1, 1), "SAME") ** 2).sum()


def _median_seconds(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    del argv  # no options
    x = jnp.ones((256, 14, 14, 32))
    w = jnp.full((3, 3, 32, 32), 0.01)
    for conv, loss in (("xla", _xla_loss), ("im2col", _im2col_loss)):
        grad = jax.grad(loss, argnums=(0, 1))
        alone = _median_seconds(jax.jit(grad), w, x)
        looped = jax.jit(lambda w, x, grad=grad: jax.lax.scan(
            lambda c, _: (c, grad(w, x)), 0.0, None, length=LOOP)[1])
        in_loop = _median_seconds(looped, w, x) / LOOP
        common = {"conv": conv, "backend": jax.default_backend()}
        print(json.dumps({"measure": "conv_grad_alone", "ms": round(1e3 * alone, 2), **common}))
        print(json.dumps({"measure": "conv_grad_in_scan", "ms": round(1e3 * in_loop, 2), **common}))
        print(json.dumps({"measure": "in_loop_slowdown", "ratio": round(in_loop / alone, 2), **common}))
    try:
        import torch
    except ImportError:
        return
    xt = torch.ones((256, 32, 14, 14), requires_grad=True)
    wt = torch.full((32, 32, 3, 3), 0.01, requires_grad=True)

    def torch_grad():
        return torch.autograd.grad((torch.nn.functional.conv2d(xt, wt, padding=1) ** 2).sum(), (wt, xt))

    torch_grad()
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        torch_grad()
        times.append(time.perf_counter() - started)
    print(json.dumps({"measure": "conv_grad_alone", "ms": round(1e3 * statistics.median(times), 2),
                      "conv": "torch", "backend": "cpu", "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
