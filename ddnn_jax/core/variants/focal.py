"""Focal loss (family ``logits-focal``; Lin et al., ICCV 2017): BCE scaled by (1 - p_t)^gamma,
where p_t is the probability the router gives the sample's label. Samples it already classifies
with confidence weigh little, so training concentrates on the hard ones; gamma = 0 is BCE.
``RouterConfig.focal_gamma`` sets gamma (2 by default, the paper's choice)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def focal_loss(logits: jax.Array, labels: jax.Array, focal_gamma: float = 2.0) -> jax.Array:
    """Per-sample focal loss [B] of router logits [B] against 0/1 labels [B]."""
    y = labels.astype(logits.dtype)
    bce = optax.sigmoid_binary_cross_entropy(logits, y)
    p_t = jnp.exp(-bce)  # the probability of the label, sigmoid(z) or 1 - sigmoid(z)
    return (1.0 - p_t) ** focal_gamma * bce
