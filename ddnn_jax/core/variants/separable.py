"""A more separable benefit (family ``logits-sep``, the thesis's proposal of a better cost).

The cost of an exit is C = 1 - p[y], so B = C_L - C_R is near 0 for the large majority of
samples that both exits get right with confidence, and its sign there is decided by the cloud's
probability, which the router never sees. We add each exit's normalised entropy H in [0, 1] to
its cost: C' = (1 - p[y]) + H(p), so B' = B + H_L - H_R. An exit that is right but unsure now
costs more than one that is right and sure, which orders the near-zero mass by how unsure the
local exit is: a quantity the router reads from its own input, so the labels become more
predictable from the logits, while samples with a large B keep their label (|H_L - H_R| <= 1).
"""

from __future__ import annotations

import numpy as np


def separable_benefit(c) -> np.ndarray:
    """B' = B + H_L - H_R per sample, float32."""
    assert c.local_entropy is not None and c.cloud_entropy is not None, "correctness() gives entropies"
    return (np.asarray(c.benefit) + np.asarray(c.local_entropy) - np.asarray(c.cloud_entropy)).astype(
        np.float32
    )
