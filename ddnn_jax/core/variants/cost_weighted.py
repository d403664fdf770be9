"""Cost-weighted classification (family ``logits-costweighted``, after Bolukbasi et al., ICML
2017): a sample's BCE is weighted by what routing it the wrong way costs. At target L0 the cost
labels are the decisions that minimise C_L(local) + C_R(offload) + B*(L0)·(offload), the
threshold acting as the price of an offload; a wrong decision on a sample then costs
|B - B*(L0)|, which is |B| where B* = 0. Samples near the threshold, whose label is a coin toss
the router cannot read, weigh little; samples far from it, whose exits differ a lot, weigh much."""

from __future__ import annotations

import numpy as np


def regret_weights(c, labels: np.ndarray, thresholds: np.ndarray) -> tuple:
    """Per target, |B - B*(L0)| scaled to mean 1 (all ones where every sample sits on the
    threshold). One model per target."""
    g, _ = labels.shape
    regret = np.abs(np.asarray(c.benefit, np.float64)[None, :] - np.asarray(thresholds, np.float64)[:, None])
    mean = regret.mean(-1, keepdims=True)
    weights = np.where(mean > 0, regret / np.where(mean > 0, mean, 1.0), 1.0)
    return weights.astype(np.float32), np.arange(g), (None,) * g
