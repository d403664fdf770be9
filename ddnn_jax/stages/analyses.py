"""The records of results.json computed from what the evaluate stage has read: every mechanism's
curve on the test split, each router family's result, the label and test analyses, the summary."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.core.comparisons import oracle_disagreement
from ddnn_jax.core.curves import area_under_curve, operating_points
from ddnn_jax.core.decisions import calibrated_thresholds, oracle_offload, router_offload, threshold_offload
from ddnn_jax.core.families import calibrated, curve_name
from ddnn_jax.core.labels import (
    Correctness,
    benefit_thresholds,
    correctness,
    label_analysis,
    oracle_labels,
)
from ddnn_jax.core.mechanisms import (
    ENTROPY,
    ORACLE,
    RANDOM,
    RULE_TARGETS,
    RULES,
    decision_rule,
    deployable_rules,
    rule_offload,
)
from ddnn_jax.core.meta import grid_labels, labelling
from ddnn_jax.rundir import (
    FamilyRecord,
    Point,
    RouterResult,
    RunRecord,
    SplitOutputs,
    SweepRun,
    TestAnalysis,
    family_fingerprint,
)


class Decisions(NamedTuple):
    """A router curve's offload masks [G, N] at its targets [G]."""

    targets: np.ndarray
    offload: np.ndarray


def correctness_of(outputs: SplitOutputs) -> Correctness:
    """Which exit gets each sample of a split right, and the benefit of offloading it."""
    return correctness(outputs.local_logits, outputs.cloud_logits, outputs.labels)


def points(c: Correctness, offload: jax.Array | np.ndarray, targets) -> list[Point]:
    """The operating points of offload masks [G, N] asked for at targets [G]."""
    local_rate, accuracy = operating_points(c, offload)
    return [
        {"target": float(t), "local_rate": float(r), "accuracy": float(a)}
        for t, r, a in zip(targets, local_rate, accuracy, strict=False)
    ]


def rule_curve(name: str, c: Correctness, local_logits, targets, key) -> list[Point]:
    """A registered rule's points at the given targets, budgets matched."""
    offload = rule_offload(name, local_logits, jnp.asarray(targets, jnp.float32), key)
    return points(c, offload, targets)


def mechanism_curves(c_test: Correctness, local_logits, val_local_logits, key) -> dict[str, list[Point]]:
    """Every registered rule at matched budgets, the budgeted oracle, and each calibrated rule with
    its threshold fixed on validation (what a deployed edge runs, ``ddnn edge``), at RULE_TARGETS."""
    curves = {name: rule_curve(name, c_test, local_logits, RULE_TARGETS, key) for name in RULES}
    targets = jnp.asarray(RULE_TARGETS, jnp.float32)
    curves[ORACLE] = points(c_test, oracle_offload(c_test, targets), RULE_TARGETS)
    for name in deployable_rules():
        rule = decision_rule(name)
        thresholds = calibrated_thresholds(rule.offload_scores(val_local_logits), RULE_TARGETS)
        offload = threshold_offload(rule.offload_scores(local_logits), thresholds)
        curves[calibrated(name)] = points(c_test, offload, RULE_TARGETS)
        for point, threshold in zip(curves[calibrated(name)], thresholds, strict=True):
            point["threshold"] = float(threshold)
    return curves


def _router_points(c_test: Correctness, decisions: Decisions, labels, record: FamilyRecord) -> list[Point]:
    result = points(c_test, decisions.offload, decisions.targets)
    if labels is not None:  # per-target routers: agreement with their own meta-labels
        agree = np.asarray((decisions.offload == (np.asarray(labels) == 1)).mean(-1))
        for point, d in zip(result, agree, strict=True):
            point["decision_accuracy"] = float(d)
    if len(record.best_epoch) == len(result):
        for point, best, ran in zip(result, record.best_epoch, record.epochs_run, strict=True):
            point["best_epoch"], point["epochs_run"] = int(best), int(ran)
    return result


def _family_thresholds(name: str, val_scores: np.ndarray, targets: np.ndarray, given) -> np.ndarray:
    """The thresholds given for a family (one per target), or those calibrated on validation."""
    if given is None:
        return calibrated_thresholds(val_scores, targets)
    if len(given) != len(targets):
        raise UsageError(
            f"--thresholds gives {len(given)} values for router family '{name}', which has "
            f"{len(targets)} targets: give one per target"
        )
    return np.asarray(given, np.float64)


def router_family_result(
    name: str,
    record: FamilyRecord,
    scores: dict[str, np.ndarray],
    c_test: Correctness,
    local_logits,
    key,
    given: list[float] | None,
) -> tuple[RouterResult, dict[str, Decisions]]:
    """One router family's curves (calibrated, and the thesis decision for per-target routers),
    their decisions by curve name, decision accuracy, histories and timings.

    Args:
      given: thresholds to use instead of calibrating on validation (one per target).
    """
    targets = np.asarray(record.config["targets"], np.float64)
    grid = record.config["objective"] != "score"  # a score per target: grid and budget routers
    thresholds = _family_thresholds(name, scores["val"], targets, given)
    labels = (
        grid_labels(labelling(record.config["labels"], "grid"), c_test, record.benefit_thresholds)
        if grid
        else None
    )
    curve = curve_name(name)
    decisions = {
        calibrated(curve): Decisions(targets, threshold_offload(scores["test"], thresholds)),
    }
    calibrated_points = _router_points(c_test, decisions[calibrated(curve)], labels, record)
    for point, t in zip(calibrated_points, thresholds, strict=True):
        point["threshold"] = float(t)
    result: RouterResult = {
        "family": name,
        "made_from": family_fingerprint(scores),
        "config": record.config,
        "points": [],
        "entropy_at_achieved_rate": [],
        "calibrated": calibrated_points,
        "threshold_source": "validation" if given is None else "given",
        "quality": record.quality,
        "train_quality": record.train_quality,
        "val_quality": record.val_quality,
        "seconds": record.seconds,
        "backend": record.backend,
    }
    if grid:
        decisions[curve] = Decisions(targets, np.asarray(router_offload(jnp.asarray(scores["test"]))))
        result["points"] = _router_points(c_test, decisions[curve], labels, record)
        # The entropy rule at the local rates the thesis decisions achieved.
        rates = [p["local_rate"] for p in result["points"]]
        result["entropy_at_achieved_rate"] = rule_curve(ENTROPY, c_test, local_logits, rates, key)
    return result, decisions


def _nearest(targets: list[float], wanted: float) -> int:
    return int(np.argmin(np.abs(np.asarray(targets) - wanted)))


def router_error_analysis(
    c_test: Correctness,
    router: RouterResult,
    record: FamilyRecord,
    scores_test: np.ndarray,
    reference_target: float,
    tau: float,
) -> TestAnalysis:
    """Fig. 6.12: router-vs-oracle disagreement ("noise"), borderline |B| < tau, the rest, and
    the mixed system's error rate within each (disjoint) group, for the thesis decision
    (logit >= 0) of the per-target router nearest the reference target, as in the thesis."""
    i = _nearest([p["target"] for p in router["points"]], reference_target)
    threshold = jnp.asarray(record.benefit_thresholds[i : i + 1], jnp.float32)
    oracle = np.asarray(oracle_labels(c_test, threshold))[0] == 1
    groups = oracle_disagreement(c_test, scores_test[i] >= 0.0, oracle, tau)
    return {
        "router": router["family"],
        "target": float(router["points"][i]["target"]),
        "tau": tau,
        "noise_rate": groups.noise_rate,
        "border_rate": groups.border_rate,
        "shares": groups.shares,
        "misclassification": groups.misclassification,
    }


def training_label_analysis(
    c_train: Correctness, targets: list[float], reference_target: float, tau: float
) -> dict:
    """Fig. 5.1 on the training meta-dataset: the reference target's values and every target's."""
    analysis = jax.device_get(
        label_analysis(c_train, benefit_thresholds(c_train.benefit, jnp.asarray(targets, jnp.float32)), tau)
    )
    per_target = [
        {"target": t, **{k: float(v[i]) for k, v in analysis.items()}} for i, t in enumerate(targets)
    ]
    reference = per_target[_nearest(targets, reference_target)]
    return {**reference, "split": "train", "tau": tau, "per_target": per_target}


def weight_sweep_run(record: RunRecord, test: SplitOutputs, key) -> SweepRun:
    """Edge-only, cloud-only and entropy-curve accuracy of one local-weight sweep run."""
    c = correctness_of(test)
    return {
        "local_weight": float(record.local_weight or 0.0),
        "seed": record.seed,
        "epochs": record.train.epochs,
        "limit_train": record.train.limit_train,
        "edge_only_accuracy": float(np.asarray(c.local_correct).mean()),
        "cloud_only_accuracy": float(np.asarray(c.cloud_correct).mean()),
        "entropy": rule_curve(ENTROPY, c, test.local_logits, RULE_TARGETS, key),
    }


def summary(curves: dict[str, list[Point]], edge_only: float, cloud_only: float) -> dict:
    """AUC, gap to the oracle and share of the random-to-oracle gap recovered of every curve with
    at least 3 points (single-budget studies have no curve to integrate)."""
    auc = lambda curve: area_under_curve(
        [p["local_rate"] for p in curve], [p["accuracy"] for p in curve], edge_only, cloud_only
    )
    result: dict[str, dict[str, Any]] = {
        name: {"auc": auc(curve)} for name, curve in curves.items() if len(curve) >= 3
    }
    for name in result:
        result[name]["gap_to_oracle"] = result[ORACLE]["auc"] - result[name]["auc"]
        result[name]["oracle_gap_recovered"] = (
            oracle_gap_recovered(result[name]["auc"], result[RANDOM]["auc"], result[ORACLE]["auc"])
            if RANDOM in result
            else None
        )
    return result


def oracle_gap_recovered(auc: float, auc_random: float, auc_oracle: float) -> float | None:
    """(AUC - AUC_random) / (AUC_oracle - AUC_random): 0 for random offloading, 1 for the
    oracle; None where the oracle is no better than random."""
    gap = auc_oracle - auc_random
    return (auc - auc_random) / gap if gap > 0 else None
