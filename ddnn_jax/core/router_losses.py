"""What a router minimises: one registry of losses, each written for one objective's targets.

A loss maps a batch's router outputs and targets to per-sample losses [B]; the trainer averages
them weighted by the labelling's per-sample weights (``core.meta``). A 'grid' loss sees the router
logits [B] and the 0/1 labels [B] of its target; a 'score' loss sees the outputs and the columns
[B, 3] (regression target, local_correct, cloud_correct). A loss may ask for more than one
output per sample (``outputs``), with ``score`` folding them into the one score that is
thresholded. ``RouterConfig.loss`` names one (None: the objective's default). A new loss is one
:class:`RouterLoss` and one :func:`register_loss` call; ``ddnn route --loss NAME`` then takes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from ddnn_jax.core.variants import defer, focal

# (router outputs [B] or [B, k], targets [B] or [B, 3], **options) -> per-sample losses [B]
LossFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class RouterLoss:
    """A router loss.

    Attributes:
      name: as ``RouterConfig.loss`` and ``--loss`` spell it.
      objective: 'grid' or 'score', the targets it is written for.
      fn: (router outputs, targets, **options) -> per-sample losses [B].
      options: RouterConfig fields passed to ``fn`` by name (focal's 'focal_gamma').
      outputs: router outputs per sample; more than one needs ``score``.
      score: outputs [B, k] -> the score [B] that is thresholded (higher offloads first).
    """

    name: str
    objective: str
    fn: LossFn
    options: tuple[str, ...] = ()
    outputs: int = 1
    score: Callable[[jax.Array], jax.Array] | None = None


LOSSES: dict[str, RouterLoss] = {}
DEFAULT_LOSS = {"grid": "bce", "score": "squared"}


def register_loss(loss: RouterLoss) -> RouterLoss:
    """Adds a loss to the registry; returns it."""
    if loss.name in LOSSES:
        raise ValueError(f"a router loss named '{loss.name}' exists already: choose another name")
    if loss.objective not in DEFAULT_LOSS:
        raise ValueError(f"router loss '{loss.name}': objective must be one of {', '.join(DEFAULT_LOSS)}")
    if (loss.outputs > 1) != (loss.score is not None):
        raise ValueError(f"router loss '{loss.name}': give a score exactly when it has several outputs")
    LOSSES[loss.name] = loss
    return loss


def router_loss(name: str | None, objective: str) -> RouterLoss:
    """The loss ``name`` (None: the objective's default), or a ValueError saying what fits. A
    'budget' router classifies like a 'grid' one: grid losses fit it."""
    objective = "grid" if objective == "budget" else objective
    name = DEFAULT_LOSS.get(objective) if name is None else name
    fitting = [n for n, loss in LOSSES.items() if loss.objective == objective]
    if name not in LOSSES or LOSSES[name].objective != objective:
        raise ValueError(
            f"router loss '{name}' does not fit the {objective} objective: choose {', '.join(fitting)}"
        )
    return LOSSES[name]


def weighted_mean(per_sample: jax.Array, weights: jax.Array) -> jax.Array:
    """sum(w * loss) / sum(w): the batch's loss (0 when every weight is 0)."""
    total = weights.sum()
    return (weights * per_sample).sum() / jnp.where(total > 0, total, 1.0)


for _loss in (
    RouterLoss("bce", "grid", lambda z, y: optax.sigmoid_binary_cross_entropy(z, y.astype(z.dtype))),
    RouterLoss("focal", "grid", focal.focal_loss, options=("focal_gamma",)),
    RouterLoss("squared", "score", lambda z, y: (z - y[:, 0]) ** 2),
    RouterLoss("defer", "score", defer.one_vs_all_loss, outputs=defer.OUTPUTS, score=defer.deferral_score),
):
    register_loss(_loss)
