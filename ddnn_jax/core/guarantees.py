"""Thresholds with a stated guarantee: Learn-then-Test on the validation split.

A calibrated threshold keeps the target share local on validation and so, on average, on new
data; half the time it keeps less. A guaranteed threshold holds its promise with probability at
least 1 - delta over the draw of the validation set (i.i.d. from the deployment distribution):

- ``local-rate``: the local rate on new data is at least L0 - epsilon;
- ``accuracy-drop``: the accuracy lost against sending every sample to the cloud is at most
  epsilon, keeping as many samples local as that allows.

Method: Learn-then-Test (Angelopoulos, Bates, Candes, Jordan & Lei, "Learn then Test:
Calibrating predictive algorithms to achieve risk control", 2021). Each candidate threshold is a
null hypothesis "its risk exceeds the allowed level"; the candidates are tested in a fixed order
fixed before seeing the data, from the one that keeps everything safe (all local for the local
rate, all offloaded for the accuracy drop) outwards, each at level delta, stopping at the first
that is not rejected (fixed-sequence testing, Bauer 1991: the family-wise error stays <= delta
with no correction). The threshold deployed is the last one rejected. The tests are exact
binomial ones, by their dual one-sided Clopper-Pearson bounds (SciPy's beta quantiles):

- local rate: the offload count is Binomial(N, q); reject q > 1 - L0 + epsilon when the upper
  (1 - delta) bound on q is below it.
- accuracy drop: the drop is harm - help, where harm is the share kept local that the local exit
  gets wrong and the cloud right, help the reverse; both are binomial. Reject "drop > epsilon"
  when upper_{delta/2}(harm) - lower_{delta/2}(help) <= epsilon (a union bound over the two).

Why not conformal risk control: it bounds the risk in expectation over the validation draw, not
with a stated probability, which is the question a deployment asks. Why exact binomials rather
than Hoeffding-Bentkus: the losses here are counts of 0/1 events, for which the binomial tail is
exact and tighter.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import scipy.stats

from ddnn_jax.core.decisions import calibrated_thresholds

LOCAL_RATE, ACCURACY_DROP = "local-rate", "accuracy-drop"
GUARANTEES = (LOCAL_RATE, ACCURACY_DROP)


@dataclasses.dataclass(frozen=True)
class Guarantee:
    """What a guaranteed threshold promises, and with which confidence."""

    kind: str = LOCAL_RATE  # GUARANTEES
    epsilon: float = 0.005  # local-rate: slack below L0; accuracy-drop: the largest drop allowed
    delta: float = 0.1  # the promise fails with probability at most delta

    def check(self) -> None:
        """Raises ValueError naming the first bad field."""
        if self.kind not in GUARANTEES:
            raise ValueError(f"unknown guarantee '{self.kind}': choose {' or '.join(GUARANTEES)}")
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"epsilon {self.epsilon} is outside [0, 1)")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta {self.delta} is outside (0, 1)")


def upper_bound(count, n: int, delta: float) -> np.ndarray:
    """One-sided (1 - delta) Clopper-Pearson upper bound on a binomial proportion."""
    count = np.asarray(count, np.float64)
    bound = scipy.stats.beta.ppf(1.0 - delta, count + 1.0, np.maximum(n - count, 1e-300))
    return np.where(count >= n, 1.0, bound)


def lower_bound(count, n: int, delta: float) -> np.ndarray:
    """One-sided (1 - delta) Clopper-Pearson lower bound on a binomial proportion."""
    count = np.asarray(count, np.float64)
    bound = scipy.stats.beta.ppf(delta, np.maximum(count, 1e-300), n - count + 1.0)
    return np.where(count <= 0, 0.0, bound)


@functools.lru_cache(maxsize=16)
def _bounds(n: int, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """The upper and lower bounds of every count 0..n: a threshold's test then indexes them
    (the check draws a thousand validation sets of one size)."""
    counts = np.arange(n + 1)
    return upper_bound(counts, n, delta), lower_bound(counts, n, delta)


def _candidates(scores: np.ndarray) -> np.ndarray:
    """Every distinct split of the scores (offload iff score >= threshold), ascending: below
    the smallest, the midpoints between distinct values, above the largest."""
    values = np.unique(scores)
    return np.concatenate([values[:1] - 1.0, (values[:-1] + values[1:]) / 2.0, values[-1:] + 1.0])


def _last_rejected(rejected: np.ndarray) -> int:
    """Fixed-sequence testing: the index of the last hypothesis rejected before the first that is
    not (-1 when the first is not)."""
    kept = np.flatnonzero(~rejected)
    return (int(kept[0]) if kept.size else rejected.size) - 1


@dataclasses.dataclass(frozen=True)
class Certified:
    """A guaranteed threshold (offload iff score >= threshold) and what it certifies."""

    threshold: float
    bound: float  # local-rate: the lower bound on the local rate; accuracy-drop: the upper
    # bound on the drop, each holding with probability >= 1 - delta
    val_local_rate: float  # the share of validation samples it keeps local


def local_rate_threshold(val_scores, target: float, guarantee: Guarantee) -> Certified:
    """The lowest threshold whose local rate is certified >= target - epsilon."""
    scores = np.asarray(val_scores, np.float64)
    n = scores.size
    thresholds = _candidates(scores)[::-1]  # from keeping everything local downwards
    offloaded = n - np.searchsorted(np.sort(scores), thresholds, side="left")
    upper = _bounds(n, guarantee.delta)[0][offloaded]
    j = max(_last_rejected(upper <= 1.0 - target + guarantee.epsilon), 0)
    return Certified(float(thresholds[j]), float(1.0 - upper[j]), float(1.0 - offloaded[j] / n))


def _drop_counts(val_scores, local_correct, cloud_correct):
    """Per candidate threshold, ascending (``_candidates``): the threshold, and among the samples
    it keeps local their count, harm count (local wrong, cloud right) and help count (the
    reverse)."""
    scores = np.asarray(val_scores, np.float64)
    order = np.argsort(scores, kind="stable")
    lc, cc = np.asarray(local_correct, bool)[order], np.asarray(cloud_correct, bool)[order]
    harm = np.concatenate([[0], np.cumsum(~lc & cc)])  # among the k lowest scores, k = 0..N
    help_ = np.concatenate([[0], np.cumsum(lc & ~cc)])
    thresholds = _candidates(scores)
    kept = np.searchsorted(scores[order], thresholds, side="left")
    return thresholds, kept, harm[kept], help_[kept]


def accuracy_drop_threshold(val_scores, local_correct, cloud_correct, guarantee: Guarantee) -> Certified:
    """The highest threshold whose accuracy drop against cloud-only is certified <= epsilon."""
    n = np.size(val_scores)
    # from offloading everything upwards
    thresholds, kept, harm, help_ = _drop_counts(val_scores, local_correct, cloud_correct)
    upper, lower = _bounds(n, guarantee.delta / 2)
    drop_bound = upper[harm] - lower[help_]
    j = max(_last_rejected(drop_bound <= guarantee.epsilon), 0)
    return Certified(float(thresholds[j]), float(drop_bound[j]), float(kept[j] / n))


def guaranteed_threshold(val_scores, target: float | None, val_correct, guarantee: Guarantee) -> Certified:
    """The guarantee's threshold on validation scores; ``target`` is the local-rate's L0 and
    ``val_correct`` the (local, cloud) correctness the accuracy drop needs."""
    if guarantee.kind == LOCAL_RATE:
        assert target is not None
        return local_rate_threshold(val_scores, target, guarantee)
    local_correct, cloud_correct = val_correct
    return accuracy_drop_threshold(val_scores, local_correct, cloud_correct, guarantee)


def _plug_in_threshold(val_scores, target: float, val_correct, guarantee: Guarantee) -> float:
    """What a threshold without a guarantee would be: the calibrated one for the local rate, the
    highest whose validation drop is at most epsilon for the accuracy drop."""
    if guarantee.kind == LOCAL_RATE:
        return float(calibrated_thresholds(val_scores, [target])[0])
    thresholds, _, harm, help_ = _drop_counts(val_scores, *val_correct)
    return float(thresholds[np.flatnonzero((harm - help_) / np.size(val_scores) <= guarantee.epsilon)[-1]])


def violation_rates(
    scores,
    local_correct,
    cloud_correct,
    target: float,
    guarantee: Guarantee,
    n_val: int,
    draws: int,
    seed: int,
) -> dict[str, float | int]:
    """How often the guarantee fails, checked on a known distribution: ``draws`` validation sets
    of ``n_val`` samples drawn with replacement from the pooled outputs (scores [M] with their
    exits' correctness), each threshold's risk measured on the pool itself, for the guaranteed
    threshold and, beside it, the plug-in one. The guaranteed rate should be <= delta."""
    scores = np.asarray(scores, np.float64)
    lc, cc = np.asarray(local_correct, np.float64), np.asarray(cloud_correct, np.float64)
    rng = np.random.default_rng(seed)
    ordered = np.sort(scores)

    def fails(threshold: float) -> bool:
        if guarantee.kind == LOCAL_RATE:
            local_rate = np.searchsorted(ordered, threshold, side="left") / scores.size
            return bool(local_rate < target - guarantee.epsilon)
        drop = float(((cc - lc) * (scores < threshold)).mean())
        return drop > guarantee.epsilon

    guaranteed = plug_in = 0
    for _ in range(draws):
        i = rng.integers(0, scores.size, n_val)
        correct = (lc[i] > 0, cc[i] > 0)
        guaranteed += fails(guaranteed_threshold(scores[i], target, correct, guarantee).threshold)
        plug_in += fails(_plug_in_threshold(scores[i], target, correct, guarantee))
    return {
        "draws": draws,
        "n_val": n_val,
        "pool": int(scores.size),
        "guaranteed_violation_rate": guaranteed / draws,
        "plug_in_violation_rate": plug_in / draws,
    }
