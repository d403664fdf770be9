"""Meta-data labelled from out-of-fold predictions (family ``logits-oof``): the standard remedy
for costs measured on the very samples a model was fit to.

The training split is cut into ``FOLDS`` folds. K more DDNNs, each trained by the run's own
configuration on all but one fold (and selected on the same validation split), predict the fold
they did not see. Every training sample then has local and cloud logits from a DDNN that never
trained on it: its costs and labels are those of unseen data, as the test split's will be, and the
router learns from all of the training split rather than the validation split's few samples
(``logits-valfit``). The router trains on those out-of-fold logits (inputs and labels from the
same DDNN) and is validated, calibrated and deployed on the run's own DDNN, whose logits on unseen
data the fold models' imitate.
"""

from __future__ import annotations

import numpy as np

FOLDS = 3


def fold_of(n: int, folds: int, seed: int) -> np.ndarray:
    """The fold [n] of each training sample: a permutation seeded by the run's seed, dealt round."""
    if n < folds:
        raise ValueError(f"{n} training samples cannot be cut into {folds} folds")
    assignment = np.empty(n, np.int64)
    assignment[np.random.default_rng([seed, folds]).permutation(n)] = np.arange(n) % folds
    return assignment


def trained_on(n: int, folds: int, seed: int, fold: int) -> np.ndarray:
    """[n] bool: the samples the run without ``fold`` trains on. Every fold run trains on
    (folds - 1) * (n // folds) samples, so all of them are one compiled program: the n % folds
    samples dealt last are left out of every fold run (and predicted by their own fold's)."""
    order = np.random.default_rng([seed, folds]).permutation(n)
    spare = np.zeros(n, bool)
    spare[order[n - n % folds :]] = True
    return (fold_of(n, folds, seed) != fold) & ~spare
