"""Reduce-on-plateau, shared by the DDNN and the routers: the validation error is fed to the
schedule once per epoch, and every optimizer update is scaled by the schedule's current factor.

Scaling Adam's updates by s is the same as scaling its learning rate by s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from optax.contrib import ReduceLROnPlateauState as PlateauState

__all__ = ["PlateauState", "end_of_epoch", "plateau", "scale_updates"]


def plateau(factor: float, patience: int) -> optax.GradientTransformationExtraArgs:
    """Multiplies the scale by ``factor`` after ``patience`` epochs without a lower error."""
    return optax.contrib.reduce_on_plateau(factor=factor, patience=patience)


def end_of_epoch(schedule, state: PlateauState, validation_error) -> PlateauState:
    """The schedule's state after an epoch whose validation error is ``validation_error``."""
    _, state = schedule.update(updates={}, state=state, value=jnp.asarray(validation_error, jnp.float32))
    return state


def scale_updates(updates, state: PlateauState):
    """The optimizer's updates times the schedule's current factor."""
    return jax.tree.map(lambda u: u * state.scale, updates)
