"""What evaluate writes on how far its decisions can be relied on, recomputed from the pristine
run's own files: the exits' calibration, every score's AURC, and the guaranteed thresholds."""

import json
import typing

import numpy as np
import pytest
import scipy.special
import scipy.stats

from ddnn_jax.core.mechanisms import RULES


def _ece(probabilities, labels, bins=15):
    """Expected calibration error written out: bins ((m-1)/M, m/M] of the max probability."""
    confidence, right = probabilities.max(-1), probabilities.argmax(-1) == labels
    total = 0.0
    for m in range(bins):
        inside = (confidence > m / bins) & (confidence <= (m + 1) / bins)
        if m == 0:
            inside |= confidence == 0
        if inside.any():
            total += inside.mean() * abs(right[inside].mean() - confidence[inside].mean())
    return total


@pytest.fixture(scope="module")
def results(pristine):
    return json.loads((pristine / "results.json").read_text())


def _nll(logits, labels, temperature):
    log_p = scipy.special.log_softmax(logits.astype(np.float64) / temperature, axis=-1)
    return -log_p[np.arange(len(labels)), labels].mean()


def test_calibration_of_both_exits_recomputes_from_the_outputs(pristine, results):
    outputs = {split: np.load(pristine / "outputs" / f"{split}.npz") for split in ("val", "test")}
    for exit_name in ("local", "cloud"):
        record = results["calibration"][exit_name]
        t = record["temperature"]
        for split in ("val", "test"):
            logits, labels = outputs[split][f"{exit_name}_logits"], outputs[split]["labels"]
            for when, temperature in (("before", 1.0), ("after", t)):
                p = scipy.special.softmax(logits.astype(np.float64) / temperature, axis=-1)
                assert record[split][when]["ece"] == pytest.approx(_ece(p, labels), abs=1e-9)
                nll = _nll(logits, labels, temperature)
                assert record[split][when]["nll"] == pytest.approx(nll, rel=1e-6)
        # T minimises the validation NLL: a 2 % step either way does worse
        logits, labels = outputs["val"][f"{exit_name}_logits"], outputs["val"]["labels"]
        assert _nll(logits, labels, t) <= min(_nll(logits, labels, t * 1.02), _nll(logits, labels, t / 1.02))


def test_every_scored_mechanism_has_its_aurc(pristine, results):
    routers = {name for name in results["routers"]}
    rules = set(RULES) | {f"{name}_ts" for name in RULES if name != "random"}
    assert set(results["selective"]) == rules | routers
    test = np.load(pristine / "outputs" / "test.npz")
    right = test["local_logits"].argmax(-1) == test["labels"]
    p = scipy.special.softmax(test["local_logits"].astype(np.float64), axis=-1)
    entropy = -(p * np.log(p)).sum(-1)
    order = np.argsort(entropy, kind="stable")  # the least sure offloaded first
    risks = np.cumsum(~right[order]) / np.arange(1, right.size + 1)
    # the run ranks float32 entropies: near-ties may fall the other way than in float64
    assert results["selective"]["entropy"]["aurc"] == pytest.approx(risks.mean(), abs=2e-4)
    # the temperature-scaled curves are the rules on logits / T
    assert "entropy_ts" in results["curves"] and "margin_ts" in results["curves"]


def test_guaranteed_thresholds_recompute_from_the_validation_scores(pristine, results):
    guarantee = results["guarantees"]
    assert (guarantee["kind"], guarantee["delta"]) == ("local-rate", 0.1)
    scores = np.load(pristine / "routers" / "logits" / "scores.npz")["val"]
    (point,) = results["curves"]["router_logits_guaranteed"]
    target, eps, delta = point["target"], point["epsilon"], point["delta"]
    values = np.unique(scores[0])[::-1]
    candidates = [values[0] + 1.0] + [(a + b) / 2 for a, b in zip(values[1:], values[:-1], strict=True)]
    chosen = candidates[0]
    for t in candidates:  # fixed-sequence: down while the binomial test rejects
        offloaded = int((scores[0] >= t).sum())
        if scipy.stats.binom.cdf(offloaded, scores.shape[1], 1 - target + eps) > delta:
            break
        chosen = t
    assert point["threshold"] == pytest.approx(chosen)
    assert point["certified_bound"] >= target - eps and point["local_rate"] > 0
    check = guarantee["check"]
    assert check["draws"] == 1000 and check["guaranteed_violation_rate"] <= delta + 0.03
    report = (pristine / "report.md").read_text()
    for figure in ("R.1", "R.2", "R.3"):
        assert f"figures/fig_{figure.replace('.', '_')}.png" in report


def test_results_written_before_these_records_are_still_read(tmp_path):
    from ddnn_jax.rundir import RunDir, read_results, write_results
    from ddnn_jax.rundir.results import Results

    def empty(hint):  # the plainest value of a field's type
        if type(None) in typing.get_args(hint):
            return None
        origin = typing.get_origin(hint) or hint
        return {dict: {}, list: [], str: "", int: 0, float: 0.0}.get(origin, {})

    run = RunDir(tmp_path)
    hints = typing.get_type_hints(Results)
    write_results(run, {key: empty(hints[key]) for key in Results.__required_keys__})  # type: ignore[arg-type]
    assert set(read_results(run)) == set(Results.__required_keys__)
    assert {"calibration", "selective", "guarantees"} <= Results.__optional_keys__
