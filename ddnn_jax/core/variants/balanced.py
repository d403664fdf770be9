"""Class-balanced weights (family ``logits-wbce``): at every target, the samples of each label
together weigh as much as those of the other, so that a router at an extreme budget (L0 = 0.1:
nine samples in ten labelled 'offload') is not rewarded for predicting the majority label."""

from __future__ import annotations

import numpy as np


def class_balance_weights(c, labels: np.ndarray, thresholds: np.ndarray) -> tuple:
    """Per target g and label y, weight N / (2 N_gy): both labels sum to N / 2 (a label that no
    sample has weighs nothing). One model per target."""
    g, n = labels.shape
    offload = labels.astype(bool)
    n_offload = offload.sum(-1, keepdims=True)
    n_local = n - n_offload
    weights = np.where(offload, n / (2.0 * np.maximum(n_offload, 1)), n / (2.0 * np.maximum(n_local, 1)))
    return weights.astype(np.float32), np.arange(g), (None,) * g
