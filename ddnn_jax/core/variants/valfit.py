"""The router fit on the validation split's own meta-data (family ``logits-valfit``), the cheap
reference for labels from unseen data.

The training split's costs come from a DDNN fit to those very samples, so they are lower, and
more often 'easy', than on data it has not seen; the validation split's are honest. This family
labels the validation split by its own costs (B*(L0) its own quantiles) and cross-fits on it:
the split is cut into ``FOLDS`` folds, one router per target is trained on all but one fold and
selected (best epoch) on that fold, and

* a validation sample is scored by the router that did not train on it (out of fold), so the
  thresholds calibrated on validation come from scores of unseen samples;
* any other sample is scored by the mean of the fold routers' logits, which is also what a
  deployed router of this family computes.

The folds are of equal size so that every fold trains through one compiled program; the few
samples left over (fewer than ``FOLDS``) are always trained on and scored by the mean.
"""

from __future__ import annotations

import numpy as np

FOLDS = 5


def folds(n: int, seed: int, k: int = FOLDS) -> tuple[list[np.ndarray], np.ndarray]:
    """A seeded permutation of range(n) cut into k folds of n // k: (the folds, the rest)."""
    if n < 2 * k:
        raise ValueError(f"cross-fitting on {n} validation samples needs at least {2 * k}")
    order = np.random.default_rng(seed).permutation(n)
    size = n // k
    return [np.sort(order[i * size : (i + 1) * size]) for i in range(k)], np.sort(order[k * size :])


def out_of_fold(per_fold: list[np.ndarray], fold_rows: list[np.ndarray]) -> np.ndarray:
    """Scores [G, N] of a split the folds were cut from: each held-out sample's from its fold's
    routers, the rest the mean over folds. ``per_fold[k]`` is fold k's routers' [G, N]."""
    scores = np.mean(per_fold, axis=0)
    for rows, fold_scores in zip(fold_rows, per_fold, strict=True):
        scores[:, rows] = fold_scores[:, rows]
    return scores
