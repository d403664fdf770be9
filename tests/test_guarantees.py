"""Guaranteed thresholds: the bounds against SciPy's exact binomial intervals, the choice against
brute force on small cases, and the promise itself checked by drawing many validation sets."""

import numpy as np
import pytest
import scipy.stats

from ddnn_jax.core import guarantees as g


def test_one_sided_bounds_are_the_exact_binomial_interval():
    for count, n in ((0, 40), (3, 40), (17, 40), (40, 40)):
        # a one-sided (1 - delta) bound is the end of the two-sided (1 - 2 delta) interval
        interval = scipy.stats.binomtest(count, n).proportion_ci(confidence_level=0.8, method="exact")
        assert g.upper_bound(count, n, 0.1) == pytest.approx(interval.high, abs=1e-9)
        assert g.lower_bound(count, n, 0.1) == pytest.approx(interval.low, abs=1e-9)


def test_the_local_rate_threshold_is_the_last_of_the_fixed_sequence_by_brute_force():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=60).round(1)  # ties on purpose
    guarantee = g.Guarantee(g.LOCAL_RATE, epsilon=0.05, delta=0.1)
    target = 0.5
    chosen = g.local_rate_threshold(scores, target, guarantee)
    # brute force: walk down from the threshold above every score while the binomial test
    # rejects "offload rate > 1 - target + epsilon"
    values = np.unique(scores)
    down = values[::-1]
    candidates = [down[0] + 1.0] + [(a + b) / 2 for a, b in zip(down[1:], down[:-1], strict=True)]
    last = None
    for t in candidates:
        offloaded = int((scores >= t).sum())
        p_value = scipy.stats.binom.cdf(offloaded, scores.size, 1 - target + guarantee.epsilon)
        if p_value > guarantee.delta:
            break
        last = t
    assert chosen.threshold == pytest.approx(last)
    assert chosen.val_local_rate == pytest.approx((scores < last).mean())
    assert chosen.bound >= target - guarantee.epsilon and chosen.val_local_rate > chosen.bound


def test_the_accuracy_drop_threshold_keeps_the_safe_samples_and_bounds_the_drop():
    # ten safe samples (both exits right) with the lowest scores, then ten the local exit gets
    # wrong and the cloud right
    scores = np.arange(20.0)
    local = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    cloud = np.ones(20, bool)
    chosen = g.accuracy_drop_threshold(scores, local, cloud, g.Guarantee(g.ACCURACY_DROP, 0.2, 0.2))
    kept = scores < chosen.threshold
    drop = ((cloud.astype(float) - local) * kept).mean()
    assert kept[:10].all() and chosen.bound <= 0.2 and drop <= chosen.bound
    # each harmful sample kept would raise the certified bound: only as many as 0.2 allows
    harm = int(kept.sum()) - 10
    assert g.upper_bound(harm, 20, 0.1) <= 0.2 < g.upper_bound(harm + 1, 20, 0.1)
    # nothing can be certified when no drop is allowed and the first sample already harms
    none = g.accuracy_drop_threshold(scores, ~local, cloud, g.Guarantee(g.ACCURACY_DROP, 0.0, 0.1))
    assert not (scores < none.threshold).any() and none.val_local_rate == 0.0


def test_bad_guarantees_are_refused():
    for bad, fragment in (
        (g.Guarantee("coverage"), "unknown guarantee"),
        (g.Guarantee(epsilon=-0.1), "epsilon"),
        (g.Guarantee(delta=1.0), "delta"),
    ):
        with pytest.raises(ValueError, match=fragment):
            bad.check()


@pytest.mark.parametrize("kind", g.GUARANTEES)
def test_the_promise_fails_at_most_delta_of_the_time(kind):
    """Validation sets drawn from a known pool: the guaranteed threshold's risk on the pool
    exceeds its bound in at most delta of the draws (with a binomial margin), while the plug-in
    threshold's does far more often."""
    rng = np.random.default_rng(3)
    m = 20_000
    scores = rng.normal(size=m)
    # the local exit is more often wrong at high scores, the cloud mostly right
    local = rng.random(m) > 1 / (1 + np.exp(-(scores - 1.0) * 2))
    cloud = rng.random(m) < 0.92
    guarantee = g.Guarantee(kind, epsilon=0.005 if kind == g.LOCAL_RATE else 0.01, delta=0.1)
    rates = g.violation_rates(scores, local, cloud, 0.5, guarantee, n_val=1000, draws=400, seed=0)
    margin = 2.6 * np.sqrt(0.1 * 0.9 / 400)  # about 99.5 % one-sided
    assert rates["guaranteed_violation_rate"] <= 0.1 + margin
    assert rates["plug_in_violation_rate"] > 0.25
    assert (rates["draws"], rates["n_val"], rates["pool"]) == (400, 1000, m)
