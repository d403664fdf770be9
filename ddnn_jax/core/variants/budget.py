"""One router for every budget (family ``logits-budget``): the local-rate target L0 is an input.

Each training batch draws one L0 uniformly from [0, 1] and labels its samples with the cost
labels at that budget, offload iff B >= B*(L0). Since B*(L0) is the L0-quantile of the training
benefits, that label is ``rank >= L0`` with ``rank`` the sample's quantile among them
(``benefit_ranks``), so no quantile is computed in the loop. The network reads its usual
inputs followed by L0, is selected on its mean validation decision accuracy over the grid's
targets, and scores every split once per target (L0 set to it), those scores thresholded per
target on validation like any grid family's. Beside ``logits-score``, which orders the samples
once for every budget, it can order them differently at each budget while sharing what it
learns across budgets.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def benefit_ranks(train_benefit: np.ndarray, benefit: np.ndarray) -> np.ndarray:
    """Each sample's quantile among the training benefits, so that ``rank >= L0`` is the cost
    label ``B >= B*(L0)`` (B* interpolated linearly): the position of the last training
    benefit <= B, over N_train - 1 (tied benefits share the highest position, as they share a
    label). Float32 in [0, 1]."""
    ordered = np.sort(np.asarray(train_benefit, np.float64))
    position = np.searchsorted(ordered, np.asarray(benefit, np.float64), side="right") - 1
    return (np.clip(position, 0, None) / max(len(ordered) - 1, 1)).astype(np.float32)


def with_budget(x: jax.Array, budget) -> jax.Array:
    """The inputs [B, d] followed by the budget L0 as a column [B, d + 1], centred to [-0.5, 0.5]."""
    column = jnp.full((x.shape[0], 1), jnp.asarray(budget, x.dtype) - 0.5, x.dtype)
    return jnp.concatenate([x, column], axis=-1)


def draw_batch(x: jax.Array, ranks: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A batch at one budget drawn from U(0, 1): (inputs with L0, cost labels at L0)."""
    budget = jax.random.uniform(key)
    return with_budget(x, budget), (ranks >= budget).astype(jnp.int32)
