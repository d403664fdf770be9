"""Offloading decision rules: edge-only information in, ``offload`` masks of shape [G, N] out.

Budget-matched rules rank the samples once by a keep-local priority and keep exactly
``round(L0 * N)`` of them local for each target L0 (the grid is an array axis, no loop over it);
ties keep the lower sample index local first, so the result is deterministic. The registered
rules (:mod:`ddnn_jax.core.mechanisms`) and the oracle differ only in their ranking.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.core.labels import Correctness


def local_counts(targets, n: int) -> jax.Array:
    """round(L0 * N) for every target, rounding halves up: floor(L0 * N + 0.5) in float64 on the
    host (float32 would round 0.7 * 45 up to 32)."""
    return jnp.asarray(np.floor(np.asarray(targets, np.float64) * n + 0.5).astype(np.int32))


@jax.jit
def keep_top(order: jax.Array, counts: jax.Array) -> jax.Array:
    """[G, N] offload mask keeping local the first ``counts[g]`` samples of ``order``."""
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
    return rank[None, :] >= counts[:, None]


def order_by_priority(priority: jax.Array) -> jax.Array:
    """Sample indices, highest keep-local priority first; equal priorities by index."""
    return jnp.argsort(-priority, stable=True)


def top2_margin(logits: jax.Array) -> jax.Array:
    """p1 - p2: the gap between the two largest softmax probabilities."""
    top2 = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), 2)[0]
    return top2[..., 0] - top2[..., 1]


def max_probability(logits: jax.Array) -> jax.Array:
    return jax.nn.softmax(logits, axis=-1).max(-1)


def oracle_order(c: Correctness) -> jax.Array:
    """The oracle's keep-local order: only-local-right, then both/neither, then only-cloud-right;
    lowest benefit B first within each group, then lowest index."""
    group = jnp.where(
        c.local_correct & ~c.cloud_correct, 0, jnp.where(c.cloud_correct & ~c.local_correct, 2, 1)
    )
    index = jnp.arange(group.shape[0])
    return jnp.lexsort((index, c.benefit, group))


def oracle_offload(c: Correctness, targets: jax.Array) -> jax.Array:
    """[G, N] offload mask of the budgeted oracle: the most accurate choice of round(L0*N) locals."""
    return keep_top(oracle_order(c), local_counts(targets, c.benefit.shape[0]))


def unconstrained_oracle_offload(c: Correctness) -> jax.Array:
    """[N] offload mask that offloads only the samples that only the cloud gets right: the best
    accuracy reachable, at the highest local rate that reaches it."""
    return c.cloud_correct & ~c.local_correct


def router_offload(router_logits: jax.Array) -> jax.Array:
    """Offload where sigmoid(router output) >= 0.5, i.e. where the logit is >= 0."""
    return router_logits >= 0.0


def calibrated_thresholds(val_scores: np.ndarray, targets) -> np.ndarray:
    """Per target L0, the threshold on a router's score that keeps k = ``local_counts`` (L0 * N_val
    rounded half up) validation samples local (offload iff score >= threshold): the midpoint
    between the k-th and (k+1)-th smallest validation score; 0.5 below the smallest for k = 0,
    0.5 above the largest for k = N_val. Exactly k stay local unless those two scores are equal:
    tied scores fall on one side together. Computed on the host in float64.

    Args:
      val_scores: [N_val] one router's scores, or [G, N_val] one router per target.
      targets: G local-rate targets.
    """
    targets = np.asarray(targets, np.float64).reshape(-1)
    scores = np.broadcast_to(np.asarray(val_scores, np.float64), (targets.size, np.shape(val_scores)[-1]))
    ordered = np.sort(scores, axis=-1)
    n = ordered.shape[-1]
    padded = np.concatenate([ordered[:, :1] - 1.0, ordered, ordered[:, -1:] + 1.0], axis=-1)
    k = np.asarray(local_counts(targets, n))  # the k-th smallest sits at padded[k]
    rows = np.arange(targets.size)
    return (padded[rows, k] + padded[rows, k + 1]) / 2.0


def threshold_offload(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """[G, N] offload mask: score >= threshold per target (scores [N] or [G, N])."""
    return np.asarray(scores, np.float64) >= np.asarray(thresholds, np.float64)[:, None]
