"""The records of results.json that judge how far a deployment can rely on its decisions: both
exits' calibration, the rules on temperature-scaled probabilities, every score's selective-
prediction metrics, and the guaranteed thresholds with the check of their promise."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from ddnn_jax.core import calibration, guarantees, selective
from ddnn_jax.core.families import curve_name, guaranteed, reference_row
from ddnn_jax.core.labels import Correctness
from ddnn_jax.core.mechanisms import ENTROPY, RANDOM, RULE_TARGETS, RULES
from ddnn_jax.rundir import FamilyRecord, Point, SplitOutputs
from ddnn_jax.stages.analyses import correctness_of, points, rule_curve

TS = "_ts"  # suffix of a rule's curve on temperature-scaled probabilities
# the accuracy-drop guarantee's curve: one point per allowed drop (the one asked for added)
ACCURACY_DROPS = (0.0025, 0.005, 0.01, 0.02, 0.05)


def exit_calibration(outputs: dict[str, SplitOutputs]) -> dict[str, dict]:
    """Temperature scaling of each exit, fitted on validation, with its metrics."""
    val, test = outputs["val"], outputs["test"]
    return {
        exit_name: calibration.calibrate_exit(
            getattr(val, f"{exit_name}_logits"), val.labels, getattr(test, f"{exit_name}_logits"), test.labels
        )
        for exit_name in ("local", "cloud")
    }


def scaled_rule_curves(c_test: Correctness, local_logits, temperature: float, key) -> dict[str, list[Point]]:
    """Every rule but random on the local exit's temperature-scaled logits, budgets matched."""
    scaled = jnp.asarray(np.asarray(local_logits, np.float64) / temperature, jnp.float32)
    return {
        f"{name}{TS}": rule_curve(name, c_test, scaled, RULE_TARGETS, key) for name in RULES if name != RANDOM
    }


def offload_scores(
    outputs: dict[str, SplitOutputs],
    families: dict[str, tuple[FamilyRecord, dict[str, np.ndarray]]],
    temperature: float,
    reference_target: float,
    key,
) -> dict[str, dict[str, np.ndarray]]:
    """Per mechanism with a score, its validation and test offload scores (offload the highest):
    each rule, each non-random rule on scaled logits, and each router family's reference row."""
    scores: dict[str, dict[str, np.ndarray]] = {}
    offload = lambda priority: -np.asarray(priority, np.float64)
    for split in ("val", "test"):
        logits = np.asarray(outputs[split].local_logits, np.float64)
        plain, scaled = jnp.asarray(logits, jnp.float32), jnp.asarray(logits / temperature, jnp.float32)
        for name, rule in RULES.items():
            scores.setdefault(name, {})[split] = offload(rule.priority(plain, key))
            if name != RANDOM:
                scores.setdefault(f"{name}{TS}", {})[split] = offload(rule.priority(scaled, key))
        for family, (record, family_scores) in families.items():
            row = family_scores[split][
                reference_row(record.config["objective"], record.config["targets"], reference_target)
            ]
            scores.setdefault(curve_name(family), {})[split] = np.asarray(row, np.float64)
    return scores


def selective_metrics(scores: dict[str, dict[str, np.ndarray]], c_test: Correctness) -> dict[str, dict]:
    """AURC, E-AURC and the risk-coverage curve of the local exit under each score, on test."""
    correct = np.asarray(c_test.local_correct)
    return {name: selective.selective_record(s["test"], correct) for name, s in scores.items()}


def _guaranteed_point(c_test: Correctness, test_scores, level: float, certified, guarantee) -> Point:
    offload = np.asarray(test_scores, np.float64)[None] >= certified.threshold
    (point,) = points(c_test, offload, [level])
    extra = {
        "threshold": certified.threshold,
        "guarantee": guarantee.kind,
        "epsilon": guarantee.epsilon,
        "delta": guarantee.delta,
        "certified_bound": certified.bound,
        "val_local_rate": certified.val_local_rate,
    }
    return {**point, **extra}  # type: ignore[typeddict-item]


def _rows(record: FamilyRecord | None, family_scores, reference: dict[str, np.ndarray], targets):
    """Per target, the (val, test) scores deciding it: a per-target router's own row, else the
    mechanism's one score."""
    if record is None or record.config["objective"] == "score":
        return [(reference["val"], reference["test"])] * len(targets)
    return [(family_scores["val"][g], family_scores["test"][g]) for g in range(len(targets))]


def guaranteed_curves(
    scores: dict[str, dict[str, np.ndarray]],
    families: dict[str, tuple[FamilyRecord, dict[str, np.ndarray]]],
    c_val: Correctness,
    c_test: Correctness,
    guarantee: guarantees.Guarantee,
) -> dict[str, list[Point]]:
    """``entropy_guaranteed`` and ``router_<family>_guaranteed``, thresholds chosen on
    validation (``core.guarantees``). The local-rate guarantee gives one point per target (the
    rules' grid, each family's own; a per-target router decides each with its own router); the
    accuracy drop one point per allowed drop (ACCURACY_DROPS and the epsilon asked for, each
    point's target being its drop) on the mechanism's one score (``offload_scores``)."""
    mechanisms: dict[str, tuple] = {ENTROPY: (None, None)}
    mechanisms |= {curve_name(f): (record, family_scores) for f, (record, family_scores) in families.items()}
    val_correct = (np.asarray(c_val.local_correct), np.asarray(c_val.cloud_correct))
    curves: dict[str, list[Point]] = {}
    for name, (record, family_scores) in mechanisms.items():
        if guarantee.kind == guarantees.LOCAL_RATE:
            targets = list(RULE_TARGETS) if record is None else list(record.config["targets"])
            rows = _rows(record, family_scores, scores[name], targets)
            curves[guaranteed(name)] = [
                _guaranteed_point(
                    c_test, test, t, guarantees.local_rate_threshold(val, t, guarantee), guarantee
                )
                for t, (val, test) in zip(targets, rows, strict=True)
            ]
            continue
        curve = []
        for drop in sorted({*ACCURACY_DROPS, guarantee.epsilon}):
            asked = dataclasses.replace(guarantee, epsilon=drop)
            certified = guarantees.accuracy_drop_threshold(scores[name]["val"], *val_correct, asked)
            curve.append(_guaranteed_point(c_test, scores[name]["test"], drop, certified, asked))
        curves[guaranteed(name)] = curve
    return curves


def guarantee_check(
    scores: dict[str, np.ndarray],
    outputs: dict[str, SplitOutputs],
    target: float,
    guarantee: guarantees.Guarantee,
    draws: int,
    seed: int,
) -> dict[str, Any]:
    """The promise checked on this run's pooled validation and test outputs
    (``core.guarantees.violation_rates``), validation sets of the run's own size."""
    c = [correctness_of(outputs[split]) for split in ("val", "test")]
    pooled = lambda field: np.concatenate([np.asarray(getattr(x, field)) for x in c])
    return {
        "target": target,
        **guarantees.violation_rates(
            np.concatenate([scores["val"], scores["test"]]),
            pooled("local_correct"),
            pooled("cloud_correct"),
            target,
            guarantee,
            n_val=len(outputs["val"]),
            draws=draws,
            seed=seed,
        ),
    }
