"""A router trained inside the DDNN's training (families ``cotrain`` and ``cotrain-joint``, the
thesis's fourth proposal): after a warm-up, every training step also fits a one-score router on
the local logits to that batch's live benefit B = C_L - C_R, measured on the DDNN as it is at that
step, instead of on one frozen pass over the training split.

Two modes. ``detached``: the router reads the local logits through a stop-gradient, so only the
router learns from its loss and the DDNN trains exactly as it would without it (Adam is per
parameter, and the router draws its dropout from a stream of its own). ``joint``: the router's
loss also reaches the edge (the feature extractor and the local exit), weighted by
``TrainConfig.cotrain_weight``, so the edge is pushed to make its own difficulty legible. The
target B is a stop-gradient in both: the router follows the exits, it does not move them to be
easier to predict.

The router is ``router_net.RouterNet`` with the default depth, on unstandardised logits (its first
batch norm absorbs their scale), so that it is deployed, evaluated and reported like any score
family.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ddnn_jax.core.models import DDNN
from ddnn_jax.core.router_net import DEPTH_PRESETS, RouterConfig, RouterNet

MODES = ("detached", "joint")
FAMILY = {"detached": "cotrain", "joint": "cotrain-joint"}  # the family each mode writes
ROUTER = RouterConfig(objective="score", labels="benefit")  # what the co-trained router is


class CotrainedDDNN(DDNN):
    """The DDNN with a router on its local logits. ``__call__`` is the DDNN's (the router's
    variables are made at init); ``with_router`` also returns the router's score."""

    detach: bool = True

    def setup(self):
        super().setup()
        self.router = RouterNet(hidden=DEPTH_PRESETS[5])

    def __call__(self, x: jax.Array, train: bool = False):
        local_logits, cloud_logits, z = super().__call__(x, train)
        if self.is_initializing():
            self.router(local_logits, train=False)
        return local_logits, cloud_logits, z

    def with_router(self, x: jax.Array, train: bool = True, edge_weight: jax.Array | float = 0.0):
        """(local_logits, cloud_logits, router score [B]); the router's loss reaches the edge
        scaled by ``edge_weight`` ('joint'), or not at all ('detached')."""
        local_logits, cloud_logits, _ = super().__call__(x, train)
        if self.detach:
            seen = jax.lax.stop_gradient(local_logits)
        else:  # the same values; the gradient through them scaled by edge_weight
            frozen = jax.lax.stop_gradient(local_logits)
            seen = frozen + edge_weight * (local_logits - frozen)
        return local_logits, cloud_logits, self.router(seen, train, ROUTER.dropout_rate)


def live_benefit(local_logits: jax.Array, cloud_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """B = p_R[y] - p_L[y] of each sample of the batch, a stop-gradient."""
    pick = lambda logits: jnp.take_along_axis(jax.nn.softmax(logits, -1), labels[:, None], -1)[:, 0]
    return jax.lax.stop_gradient(pick(cloud_logits) - pick(local_logits))


def router_loss(score: jax.Array, local_logits: jax.Array, cloud_logits: jax.Array, labels: jax.Array):
    """The router's squared error against the batch's live benefit (logits-score's loss)."""
    return jnp.mean((score - live_benefit(local_logits, cloud_logits, labels)) ** 2)
