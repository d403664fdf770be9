"""Costs, labels, the budgeted decision rules and the curves made of them against brute-force
Python on small arrays."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddnn_jax.core.comparisons import oracle_disagreement
from ddnn_jax.core.curves import area_under_curve, operating_points
from ddnn_jax.core.decisions import (
    local_counts,
    oracle_offload,
    unconstrained_oracle_offload,
)
from ddnn_jax.core.labels import (
    Correctness,
    benefit_thresholds,
    check_targets,
    correctness,
    cost_labels,
    label_analysis,
    normalized_entropy,
    oracle_labels,
)
from ddnn_jax.core.mechanisms import RULES, rule_offload

TARGETS = np.array([0.0, 0.1, 1 / 3, 0.5, 0.54, 0.9, 1.0], np.float32)


def _outputs(n=60, classes=4, seed=0):
    """Random logits with duplicated rows, so ties in B and in confidence occur."""
    rng = np.random.default_rng(seed)
    local = rng.normal(size=(n, classes)).astype(np.float32) * 2
    cloud = rng.normal(size=(n, classes)).astype(np.float32) * 2
    local[n // 2 : n // 2 + 6] = local[0]
    cloud[n // 2 : n // 2 + 6] = cloud[0]
    labels = rng.integers(0, classes, n).astype(np.int32)
    labels[n // 2 : n // 2 + 6] = labels[0]
    return local, cloud, labels


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_costs_and_labels_match_brute_force():
    local, cloud, labels = _outputs()
    c = correctness(local, cloud, labels)
    p_l, p_r = _softmax(local.astype(np.float64)), _softmax(cloud.astype(np.float64))
    for i, y in enumerate(labels):
        assert np.isclose(float(c.benefit[i]), (1 - p_l[i, y]) - (1 - p_r[i, y]), atol=1e-6)
        assert bool(c.local_correct[i]) == (np.argmax(local[i]) == y)
    benefit = np.asarray(c.benefit, np.float64)
    thresholds = np.asarray(benefit_thresholds(c.benefit, TARGETS))
    np.testing.assert_allclose(thresholds, np.quantile(benefit, TARGETS.astype(np.float64)), atol=1e-6)
    by_cost, by_oracle = (
        np.asarray(cost_labels(c.benefit, thresholds)),
        np.asarray(oracle_labels(c, thresholds)),
    )
    assert by_cost.shape == by_oracle.shape == (len(TARGETS), len(labels))
    for g, threshold in enumerate(thresholds):
        for i in range(len(labels)):
            cost = int(benefit[i] >= threshold)
            assert by_cost[g, i] == cost
            lc, cc = bool(c.local_correct[i]), bool(c.cloud_correct[i])
            expected = 1 if (cc and not lc) else 0 if (lc and not cc) else cost
            assert by_oracle[g, i] == expected
    # L0 = 0 offloads everything; at L0 = 1 only the largest B reaches the threshold.
    assert by_cost[0].all() and by_cost[-1].sum() == (benefit == benefit.max()).sum()


def test_label_analysis_matches_brute_force():
    local, cloud, labels = _outputs(seed=1)
    c = correctness(local, cloud, labels)
    thresholds = benefit_thresholds(c.benefit, TARGETS)
    analysis = jax.device_get(label_analysis(c, thresholds, 0.05))
    by_cost, by_oracle = (
        np.asarray(cost_labels(c.benefit, thresholds)),
        np.asarray(oracle_labels(c, thresholds)),
    )
    lc, cc, b = (np.asarray(a) for a in c[:3])
    for g in range(len(TARGETS)):
        assert np.isclose(analysis["noise_rate"][g], np.mean(by_cost[g] != by_oracle[g]))
        assert np.isclose(analysis["border_rate"][g], np.mean(np.abs(b) < 0.05))
        assert np.isclose(analysis["oracle_local_rate"][g], np.mean(by_oracle[g] == 0))
        acc = np.mean([cc[i] if by_oracle[g, i] else lc[i] for i in range(len(b))])
        assert np.isclose(analysis["oracle_accuracy"][g], acc)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_budgeted_oracle_is_the_exact_optimum(seed):
    local, cloud, labels = _outputs(n=9, classes=3, seed=seed)
    c = correctness(local, cloud, labels)
    lc, cc = np.asarray(c.local_correct), np.asarray(c.cloud_correct)
    targets = np.arange(10, dtype=np.float32) / 9
    offload = np.asarray(oracle_offload(c, jnp.asarray(targets)))
    for g, k in enumerate(np.asarray(local_counts(targets, 9))):
        assert (~offload[g]).sum() == k
        best = max(
            sum(lc[i] if i in kept else cc[i] for i in range(9))
            for kept in map(set, itertools.combinations(range(9), k))
        )
        assert sum(lc[i] if not offload[g, i] else cc[i] for i in range(9)) == best


def test_oracle_priority_and_ties():
    # only-local-right first, then both/neither by lowest B, then only-cloud-right; ties by index.
    local_correct = jnp.array([False, True, True, False, True, True])
    cloud_correct = jnp.array([True, True, False, False, True, False])
    benefit = jnp.array([0.0, 0.3, 0.5, 0.1, 0.1, 0.5])

    c = Correctness(local_correct, cloud_correct, benefit)
    offload = np.asarray(oracle_offload(c, jnp.array([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])))
    kept_order = [2, 5, 3, 4, 1]  # group 0 by index (equal B), then group 1 by B then index
    for g in range(5):
        assert set(np.flatnonzero(~offload[g])) == set(kept_order[: g + 1])
    free = np.asarray(unconstrained_oracle_offload(c))
    assert list(np.flatnonzero(free)) == [0]


@pytest.mark.parametrize("name", list(RULES))
def test_budget_matched_rules_keep_exactly_the_count(name):
    local, _, _ = _outputs(n=101)
    offload = np.asarray(rule_offload(name, jnp.asarray(local), jnp.asarray(TARGETS), jax.random.key(3)))
    expected = [int(np.floor(t * 101 + 0.5)) for t in TARGETS]
    assert [int((~row).sum()) for row in offload] == expected
    # Budgets nest: a sample kept local at a small budget stays local at every larger one.
    assert np.all(offload[1:] <= offload[:-1])


def test_entropy_keeps_the_least_uncertain():
    local, _, _ = _outputs(n=80)
    offload = np.asarray(rule_offload("entropy", jnp.asarray(local), jnp.array([0.4]), jax.random.key(0)))[0]
    entropy = np.asarray(normalized_entropy(jnp.asarray(local)))
    assert entropy[~offload].max() <= entropy[offload].min()
    assert np.all((entropy >= 0) & (entropy <= 1 + 1e-6))


def test_random_rule_is_seeded():
    local, _, _ = _outputs(n=200)
    run = lambda k: np.asarray(
        rule_offload("random", jnp.asarray(local), jnp.array([0.5]), jax.random.key(k))
    )
    assert np.array_equal(run(1), run(1)) and not np.array_equal(run(1), run(2))


@pytest.mark.parametrize("bad", [[0.5, 1.2], [-0.1], [float("nan")], []])
def test_targets_outside_the_unit_interval_are_rejected(bad):
    with pytest.raises(ValueError, match="outside|empty"):
        check_targets(bad)


def test_operating_points_and_area_match_brute_force():
    local, cloud, labels = _outputs(n=40, seed=2)
    c = correctness(local, cloud, labels)
    offload = np.random.default_rng(0).random((3, 40)) < np.array([[0.2], [0.5], [0.9]])
    local_rate, accuracy = operating_points(c, offload)
    lc, cc = np.asarray(c.local_correct), np.asarray(c.cloud_correct)
    for g in range(3):
        assert local_rate[g] == pytest.approx(sum(not o for o in offload[g]) / 40)
        assert accuracy[g] == pytest.approx(sum(cc[i] if offload[g, i] else lc[i] for i in range(40)) / 40)
    # a single point at (0.5, 1.0) between cloud-only 0.8 and edge-only 0.6: two trapezoids
    assert area_under_curve([0.5], [1.0], edge_only=0.6, cloud_only=0.8) == pytest.approx(0.45 + 0.4)
    assert area_under_curve([0.7, 0.2], [0.7, 0.7], 0.7, 0.7) == pytest.approx(0.7)  # any order


def test_oracle_disagreement_groups_partition_the_samples():
    local, cloud, labels = _outputs(n=50, seed=3)
    c = correctness(local, cloud, labels)
    rng = np.random.default_rng(1)
    offload, oracle = rng.random(50) < 0.5, rng.random(50) < 0.5
    groups = oracle_disagreement(c, offload, oracle, tau=0.05)
    assert sum(groups.shares.values()) == pytest.approx(1.0)
    assert groups.noise_rate == groups.shares["noise"] == np.mean(offload != oracle)
    lc, cc = np.asarray(c.local_correct), np.asarray(c.cloud_correct)
    noise = [i for i in range(50) if offload[i] != oracle[i]]
    wrong = [not (cc[i] if offload[i] else lc[i]) for i in noise]
    assert groups.misclassification["noise"] == pytest.approx(np.mean(wrong))
