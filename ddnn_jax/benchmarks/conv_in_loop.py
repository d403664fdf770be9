"""XLA:CPU and convolutions inside compiled loops: XLA's convolution vs ``models.im2col_conv``.

    ddnn bench conv      (or python experiments/bench_conv.py)

A gradient step on one 3x3 convolution (batch 256, 14x14x32, the features-cnn router's first
layer; gradients with respect to the weights and the input, as training needs both) jitted alone,
and the same step repeated by ``lax.scan``, each iteration on the last one's result, as our epoch
and router loops do. In the loop XLA:CPU keeps the backward convolutions in non-canonical
dimension orders (f01b_i01o->01bf in the compiled HLO) and runs them as a naive loop nest;
alone, layout assignment makes them canonical. im2col turns them into matmuls either way. One
JSON line per measurement, then the in-loop slowdown of each; with torch installed, the same
step in PyTorch (oneDNN on CPU) for scale.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp

from ddnn_jax.core.models import im2col_conv

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

        def body(carry, _, grad=grad):  # a step that depends on the last, so XLA cannot hoist it
            w, x = carry
            dw, dx = grad(w, x)
            return (w - 1e-6 * dw, x - 1e-6 * dx), None

        alone = _median_seconds(jax.jit(lambda w, x, body=body: body((w, x), None)[0]), w, x)
        looped = jax.jit(lambda w, x, body=body: jax.lax.scan(body, (w, x), None, length=LOOP)[0])
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
        loss = (torch.nn.functional.conv2d(xt, wt, padding=1) ** 2).sum()
        dw, dx = torch.autograd.grad(loss, (wt, xt))
        with torch.no_grad():
            return wt - 1e-6 * dw, xt - 1e-6 * dx

    torch_grad()
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        torch_grad()
        times.append(time.perf_counter() - started)
    print(
        json.dumps(
            {
                "measure": "conv_grad_alone",
                "ms": round(1e3 * statistics.median(times), 2),
                "conv": "torch",
                "backend": "cpu",
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
