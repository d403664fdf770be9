"""What a router minimises: one registry of losses, each written for one objective's targets.

A 'grid' loss sees, per batch, the router logits [B] and the 0/1 labels [B] of its target; a
'score' loss sees the logits [B] and the columns [B, 3] (regression target, local_correct,
cloud_correct). ``RouterConfig.loss`` names one (None: the objective's default). A new loss is one
:class:`RouterLoss` and one :func:`register_loss` call; ``ddnn route --loss NAME`` then takes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

# (router logits [B], targets [B] or [B, 3]) -> scalar loss
LossFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class RouterLoss:
    """A router loss.

    Attributes:
      name: as ``RouterConfig.loss`` and ``--loss`` spell it.
      objective: 'grid' or 'score', the targets it is written for.
      fn: (router logits [B], targets) -> the batch's loss, a scalar.
    """

    name: str
    objective: str
    fn: LossFn


LOSSES: dict[str, RouterLoss] = {}
DEFAULT_LOSS = {"grid": "bce", "score": "squared"}


def register_loss(loss: RouterLoss) -> RouterLoss:
    """Adds a loss to the registry; returns it."""
    if loss.name in LOSSES:
        raise ValueError(f"a router loss named '{loss.name}' exists already: choose another name")
    if loss.objective not in DEFAULT_LOSS:
        raise ValueError(f"router loss '{loss.name}': objective must be one of {', '.join(DEFAULT_LOSS)}")
    LOSSES[loss.name] = loss
    return loss


def router_loss(name: str | None, objective: str) -> RouterLoss:
    """The loss ``name`` (None: the objective's default), or a ValueError saying what fits."""
    name = DEFAULT_LOSS.get(objective) if name is None else name
    fitting = [n for n, loss in LOSSES.items() if loss.objective == objective]
    if name not in LOSSES or LOSSES[name].objective != objective:
        raise ValueError(
            f"router loss '{name}' does not fit the {objective} objective: choose {', '.join(fitting)}"
        )
    return LOSSES[name]


register_loss(
    RouterLoss("bce", "grid", lambda z, y: optax.sigmoid_binary_cross_entropy(z, y.astype(z.dtype)).mean())
)
register_loss(RouterLoss("squared", "score", lambda z, y: jnp.mean((z - y[:, 0]) ** 2)))
