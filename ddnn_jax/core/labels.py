"""Per-sample costs and the offloading meta-dataset, for a whole grid of local-rate targets at once.

For a sample with label y and exit probabilities p_L (local) and p_R (cloud):

* costs ``C_L = 1 - p_L[y]`` and ``C_R = 1 - p_R[y]``; benefit of offloading ``B = C_L - C_R``;
* cost label at target L0: offload (1) iff ``B >= B*(L0)``, where ``B*(L0)`` is the L0-quantile of
  B over the *training* split, so that about a fraction L0 of training samples is labelled local;
* oracle label: offload iff only the cloud is right, local iff only the local exit is right, the
  cost label when both or neither are right.

The target grid is the leading array axis of every labelled output: shape [G, N].
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_BORDER_TAU = 0.01


class Correctness(NamedTuple):
    """Which exit classifies each sample correctly, the benefit B of offloading it, and how
    unsure each exit is."""

    local_correct: jax.Array  # [N] bool
    cloud_correct: jax.Array  # [N] bool
    benefit: jax.Array  # [N] float, B = C_L - C_R
    local_entropy: jax.Array | None = None  # [N] normalized_entropy of the local exit
    cloud_entropy: jax.Array | None = None


def normalized_entropy(logits: jax.Array) -> jax.Array:
    """H = -sum p log p / log C of the softmax, in [0, 1]."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    entropy = -(jnp.exp(log_p) * log_p).sum(-1)
    return entropy / jnp.log(logits.shape[-1])


@jax.jit
def correctness(local_logits: jax.Array, cloud_logits: jax.Array, labels: jax.Array) -> Correctness:
    """Exit correctness, the offloading benefit B = (1 - p_L[y]) - (1 - p_R[y]) and both exits'
    normalised entropies."""
    p_local = jax.nn.softmax(local_logits, axis=-1)
    p_cloud = jax.nn.softmax(cloud_logits, axis=-1)
    pick = lambda p: jnp.take_along_axis(p, labels[:, None], axis=-1)[:, 0]
    return Correctness(
        local_correct=local_logits.argmax(-1) == labels,
        cloud_correct=cloud_logits.argmax(-1) == labels,
        benefit=(1.0 - pick(p_local)) - (1.0 - pick(p_cloud)),
        local_entropy=normalized_entropy(local_logits),
        cloud_entropy=normalized_entropy(cloud_logits),
    )


@jax.jit
def benefit_thresholds(train_benefit: jax.Array, targets: jax.Array) -> jax.Array:
    """B*(L0) for every target: the L0-quantiles of the training benefits (linear interpolation)."""
    return jnp.quantile(train_benefit, targets, method="linear")


@jax.jit
def cost_labels(benefit: jax.Array, thresholds: jax.Array) -> jax.Array:
    """[G, N] int32: 1 (offload) where B >= B*(L0)."""
    return (benefit[None, :] >= thresholds[:, None]).astype(jnp.int32)


@jax.jit
def oracle_labels(c: Correctness, thresholds: jax.Array) -> jax.Array:
    """[G, N] int32: correctness first, the cost label where both or neither exit is right."""
    only_cloud = c.cloud_correct & ~c.local_correct
    only_local = c.local_correct & ~c.cloud_correct
    by_cost = cost_labels(c.benefit, thresholds)
    return jnp.where(only_cloud, 1, jnp.where(only_local, 0, by_cost)).astype(jnp.int32)


def decision_accuracy(c: Correctness, offload: jax.Array) -> jax.Array:
    """Classification accuracy of the mixed system for offload decisions of shape [..., N]."""
    return jnp.where(offload.astype(bool), c.cloud_correct, c.local_correct).mean(-1)


@jax.jit
def label_analysis(c: Correctness, thresholds: jax.Array, tau: float = DEFAULT_BORDER_TAU) -> dict:
    """Fig. 5.1 per target: noise, border and oracle-local rates, accuracy of both labellings.

    Returns a dict of [G] arrays (``border_rate`` does not depend on the target but is repeated).
    """
    by_cost = cost_labels(c.benefit, thresholds)
    by_oracle = oracle_labels(c, thresholds)
    border = (jnp.abs(c.benefit) < tau).mean()
    return {
        "noise_rate": (by_cost != by_oracle).mean(-1),
        "border_rate": jnp.full(thresholds.shape, border),
        "oracle_local_rate": (by_oracle == 0).mean(-1),
        "oracle_accuracy": decision_accuracy(c, by_oracle),
        "cost_label_local_rate": (by_cost == 0).mean(-1),
        "cost_label_accuracy": decision_accuracy(c, by_cost),
    }


def check_targets(targets) -> np.ndarray:
    """The targets as a float32 array, or a ValueError naming the value outside [0, 1]."""
    targets = np.asarray(targets, np.float64).reshape(-1)
    if targets.size == 0:
        raise ValueError("the target grid is empty: give at least one local-rate target in [0, 1]")
    bad = targets[~((targets >= 0.0) & (targets <= 1.0))]
    if bad.size:
        raise ValueError(f"local-rate target {bad[0]:g} is outside [0, 1]: use fractions such as 0.54")
    return targets.astype(np.float32)
