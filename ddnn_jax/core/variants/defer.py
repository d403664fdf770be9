"""Learning to defer with the local exit fixed (family ``logits-defer``): the one-vs-all
surrogate of Verma & Nalisnick (ICML 2022), trained once for every budget.

With two "experts", the local exit and the cloud, the one-vs-all surrogate fits one logistic
head per expert on whether that expert is right: g_L on local_correct and g_R on cloud_correct,
each a BCE. Unlike the softmax surrogate of Mozannar & Sontag (2020), its heads are calibrated
estimates of P(correct | x) and it stays consistent for the 0-1 deferral loss, so their
difference sigmoid(g_R) - sigmoid(g_L) estimates E[cloud_correct - local_correct | x], the gain
whose order is the ideal one for every budget. The router thresholds that one score per target
on validation, like the other score families. It is trained on correctness directly: neither
the costs nor B*(L0) enter it.
"""

from __future__ import annotations

import jax
import optax

OUTPUTS = 2  # (g_L, g_R)


def one_vs_all_loss(outputs: jax.Array, columns: jax.Array) -> jax.Array:
    """Per-sample loss [B] of head outputs [B, 2] against the score columns [B, 3] (regression
    target, local_correct, cloud_correct): BCE(g_L, local_correct) + BCE(g_R, cloud_correct)."""
    return optax.sigmoid_binary_cross_entropy(outputs, columns[:, 1:3]).sum(-1)


def deferral_score(outputs: jax.Array) -> jax.Array:
    """sigmoid(g_R) - sigmoid(g_L) [B]: higher offloads first."""
    return jax.nn.sigmoid(outputs[:, 1]) - jax.nn.sigmoid(outputs[:, 0])
