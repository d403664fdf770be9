"""Border samples left out (family ``logits-border``, the thesis's proposal on labelling): a
sample with |B| < tau has exits that agree to within tau on the true class, so its cost label is
decided by noise; training leaves it out (weight 0). The cut-off is chosen per target on the
validation split among ``TAUS``: every value trains a router of its own (one compiled program,
the candidates on the model axis) and the one with the best validation decision accuracy against
the full cost labels is kept."""

from __future__ import annotations

import numpy as np

TAUS = (0.005, 0.01, 0.02, 0.05)  # around the thesis's border width 0.01


def without_border(c, labels: np.ndarray, thresholds: np.ndarray) -> tuple:
    """len(TAUS) models per target, target-major: model g * len(TAUS) + i leaves out |B| < TAUS[i]."""
    g, _ = labels.shape
    near = np.abs(np.asarray(c.benefit, np.float64))
    per_tau = np.stack([(near >= tau).astype(np.float32) for tau in TAUS])  # [T, N]
    weights = np.tile(per_tau, (g, 1))
    return weights, np.repeat(np.arange(g), len(TAUS)), TAUS * g
