"""Temperature scaling and its metrics, and the selective-prediction metrics, against hand-computed
small cases and brute force."""

import numpy as np
import pytest
import scipy.special

from ddnn_jax.core import calibration, selective


def test_ece_nll_and_brier_of_a_hand_computed_case():
    # two samples in bin (0.6, 0.6667], right and wrong; one in the last bin, right
    p = np.array([[0.62, 0.38], [0.65, 0.35], [0.98, 0.02]])
    labels = np.array([0, 1, 0])
    table = calibration.reliability_bins(p, labels)
    assert sum(table["count"]) == 3 and table["count"][9] == 2 and table["count"][14] == 1
    assert table["accuracy"][9] == 0.5 and table["confidence"][9] == pytest.approx(0.635)
    # ECE = 2/3 * |0.5 - 0.635| + 1/3 * |1 - 0.98|
    assert calibration.expected_calibration_error(p, labels) == pytest.approx(2 / 3 * 0.135 + 1 / 3 * 0.02)
    brier = ((0.38**2 + 0.38**2) + (0.65**2 + 0.65**2) + (0.02**2 + 0.02**2)) / 3
    assert calibration.brier_score(p, labels) == pytest.approx(brier)
    logits = np.log(p)
    assert calibration.negative_log_likelihood(logits, labels) == pytest.approx(
        -np.mean(np.log([0.62, 0.35, 0.98]))
    )


def test_a_confidence_of_exactly_one_bin_edge_falls_in_the_lower_bin():
    p = np.array([[0.6, 0.4], [1.0, 0.0]])
    table = calibration.reliability_bins(p, np.array([0, 0]), bins=5)
    assert table["count"] == [0, 0, 1, 0, 1]  # 0.6 in (0.4, 0.6], 1.0 in (0.8, 1.0]


def test_the_fitted_temperature_is_the_nll_minimum_and_tames_overconfidence():
    rng = np.random.default_rng(0)
    honest = 2.0 * rng.normal(size=(3000, 4))  # labels drawn from their softmax: calibrated
    cumulative = np.cumsum(scipy.special.softmax(honest, axis=-1), axis=-1)
    labels = np.minimum((rng.random((3000, 1)) > cumulative).sum(-1), 3)
    overconfident = 3.0 * honest  # the same ranking, three times too sharp
    t = calibration.fit_temperature(overconfident, labels)
    grid = np.exp(np.linspace(np.log(0.5), np.log(10), 4001))
    brute = grid[np.argmin([calibration.negative_log_likelihood(overconfident, labels, g) for g in grid])]
    assert t == pytest.approx(brute, rel=2e-3) and t == pytest.approx(3.0, rel=0.1)
    record = calibration.calibrate_exit(overconfident, labels, overconfident, labels)
    assert record["val"]["after"]["nll"] < record["val"]["before"]["nll"]
    assert record["test"]["after"]["ece"] < record["test"]["before"]["ece"] / 3
    # the predicted classes, and so the accuracy in each bin table, are unchanged
    before, after = record["reliability_test"]["before"], record["reliability_test"]["after"]
    right = lambda table: sum(a * c for a, c in zip(table["accuracy"], table["count"], strict=True) if c)
    assert right(before) == pytest.approx(right(after))
    probabilities = calibration.softmax(overconfident, t)
    np.testing.assert_allclose(probabilities, scipy.special.softmax(overconfident / t, axis=-1))


def test_aurc_is_the_mean_selective_risk_by_brute_force():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=200)
    correct = rng.random(200) < 0.7
    risks = []
    for k in range(1, 201):
        kept = np.argsort(scores, kind="stable")[:k]
        risks.append(1.0 - correct[kept].mean())
    assert selective.aurc(scores, correct) == pytest.approx(np.mean(risks))
    record = selective.selective_record(scores, correct)
    assert record["risk_coverage"][-1] == {"coverage": 1.0, "risk": pytest.approx(1 - correct.mean())}
    assert len(record["risk_coverage"]) == selective.COVERAGE_POINTS
    # the best ordering keeps the right answers first: error 0 until they run out
    k = int(correct.sum())
    optimal = np.mean([0.0] * k + [(j - k) / j for j in range(k + 1, 201)])
    assert selective.optimal_aurc(correct) == pytest.approx(optimal)
    assert record["e_aurc"] == pytest.approx(np.mean(risks) - optimal) and record["e_aurc"] > 0
    # a score that ranks every error last has no excess
    assert selective.selective_record(~correct * 1.0, correct)["e_aurc"] == pytest.approx(0.0, abs=1e-12)
