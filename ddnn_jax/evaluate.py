"""The evaluate stage: every mechanism on the test split of one trained DDNN -> ``results.json``.

Heuristics and the oracle are swept over ``HEURISTIC_TARGETS`` at matched budgets; each trained
router family contributes its curve at its own targets, the entropy rule evaluated at the local
rates the routers actually achieved, and its decision accuracy against its own kind of labels.
Label analysis (Fig. 5.1) is on the training split's meta-dataset; the test analysis (Fig. 6.12)
is at the reference target. Rates and accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.errors import UsageError
from ddnn_jax.families import curve_name
from ddnn_jax.labels import (
    DEFAULT_BORDER_TAU,
    Correctness,
    benefit_thresholds,
    correctness,
    label_analysis,
    labels_of_kind,
    oracle_labels,
)
from ddnn_jax.policies import (
    HEURISTICS,
    heuristic_offload,
    oracle_offload,
    router_offload,
    unconstrained_oracle_offload,
)
from ddnn_jax.rundir import (
    FamilyRecord,
    Point,
    Results,
    RouterResult,
    RunDir,
    SplitOutputs,
    SweepRun,
    TestAnalysis,
    UnconstrainedPoint,
    as_run,
    outputs_fingerprint,
    read_family,
    read_family_scores,
    read_inference_timings,
    read_metrics,
    read_outputs,
    read_run_record,
    write_results,
)

HEURISTIC_TARGETS = tuple(sorted({round(i * 0.05, 2) for i in range(21)} | {0.54}))
STREAM_RANDOM_RULE = 200  # fold_in stream of the run seed for the random baseline


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Settings of the evaluate stage."""

    reference_target: float = 0.54  # L0 of the thesis's single-budget analyses (Fig. 6.3, 6.4, 6.12)
    border_tau: float = DEFAULT_BORDER_TAU  # |B| < tau counts as borderline
    edge_ms: float = 10.0  # latency model: edge inference time (thesis UAV example)
    cloud_ms: float = 80.0  # latency model: uplink + cloud time, 8x the edge's


def _correctness(o: SplitOutputs) -> Correctness:
    return correctness(o.local_logits, o.cloud_logits, o.labels)


def _points(c: Correctness, offload: jax.Array, targets) -> list[Point]:
    sent = np.asarray(offload, bool)
    local_rate = 1.0 - sent.mean(-1)
    # float64 on the host: accuracies are exact fractions of the test split.
    acc = np.where(sent, np.asarray(c.cloud_correct), np.asarray(c.local_correct)).mean(-1)
    return [
        {"target": float(t), "local_rate": float(r), "accuracy": float(a)}
        for t, r, a in zip(targets, local_rate, acc, strict=False)
    ]


def area_under_curve(points: list[Point], edge_only: float, cloud_only: float) -> float:
    """Trapezoid area of accuracy over local rate on [0, 1], closed by the cloud-only (0) and
    edge-only (1) points."""
    xs = [0.0] + [p["local_rate"] for p in points] + [1.0]
    ys = [cloud_only] + [p["accuracy"] for p in points] + [edge_only]
    order = np.argsort(xs, kind="stable")
    return float(np.trapezoid(np.asarray(ys)[order], np.asarray(xs)[order]))


def _heuristic_curve(name: str, c: Correctness, local_logits, targets, key) -> list[Point]:
    """A budget-matched heuristic's points at the given targets."""
    offload = heuristic_offload(name, local_logits, jnp.asarray(targets, jnp.float32), key)
    return _points(c, offload, targets)


def _router_family(
    name: str, record: FamilyRecord, test_scores: np.ndarray, local_logits, c_test: Correctness, key
) -> RouterResult:
    """One router family's test curve, decision accuracy, histories and timings."""
    targets = record.config["targets"]
    # B*(L0) as route computed them from the training split.
    thresholds = jnp.asarray(record.benefit_thresholds, jnp.float32)
    labels = labels_of_kind(record.config["labels"], c_test, thresholds)
    offload = router_offload(jnp.asarray(test_scores))
    points = _points(c_test, offload, targets)
    decisions = np.asarray((offload == (labels == 1)).mean(-1))
    for point, d, best, ran in zip(points, decisions, record.best_epoch, record.epochs_run, strict=False):
        point["decision_accuracy"] = float(d)
        point["best_epoch"] = int(best)
        point["epochs_run"] = int(ran)
    rates = [p["local_rate"] for p in points]
    return {
        "family": name,
        "config": record.config,
        "points": points,
        # The entropy rule at the local rates the routers achieved (each point's target).
        "entropy_at_achieved_rate": _heuristic_curve("entropy", c_test, local_logits, rates, key),
        "train_decision_accuracy": record.train_decision_accuracy,
        "val_decision_accuracy": record.val_decision_accuracy,
        "seconds": record.seconds,
        "backend": record.backend,
    }


def _nearest(targets: list[float], wanted: float) -> int:
    return int(np.argmin(np.abs(np.asarray(targets) - wanted)))


def _test_analysis(
    c_test: Correctness,
    router: RouterResult,
    record: FamilyRecord,
    scores_test: np.ndarray,
    config: EvaluationConfig,
) -> TestAnalysis:
    """Fig. 6.12: router-vs-oracle disagreement ("noise"), borderline |B| < tau, the rest, and
    the mixed system's error rate within each (disjoint) group."""
    i = _nearest([p["target"] for p in router["points"]], config.reference_target)
    target = router["points"][i]["target"]
    threshold = jnp.asarray(record.benefit_thresholds[i : i + 1], jnp.float32)
    oracle = np.asarray(oracle_labels(c_test, threshold))[0] == 1
    offload = scores_test[i] >= 0.0
    noise = offload != oracle
    border = np.abs(np.asarray(c_test.benefit)) < config.border_tau
    wrong = ~np.where(offload, np.asarray(c_test.cloud_correct), np.asarray(c_test.local_correct))
    groups = {"noise": noise, "border": border & ~noise, "normal": ~noise & ~border}
    return {
        "router": router["family"],
        "target": float(target),
        "tau": config.border_tau,
        "noise_rate": float(noise.mean()),
        "border_rate": float(border.mean()),
        "shares": {g: float(m.mean()) for g, m in groups.items()},
        "misclassification": {g: (float(wrong[m].mean()) if m.any() else None) for g, m in groups.items()},
    }


def _label_analysis(c_train, targets, config) -> dict:
    """Fig. 5.1 on the training meta-dataset: the reference target's values and every target's."""
    analysis = jax.device_get(
        label_analysis(
            c_train,
            benefit_thresholds(c_train.benefit, jnp.asarray(targets, jnp.float32)),
            config.border_tau,
        )
    )
    per_target = [
        {"target": t, **{k: float(v[i]) for k, v in analysis.items()}} for i, t in enumerate(targets)
    ]
    reference = per_target[_nearest(targets, config.reference_target)]
    return {**reference, "split": "train", "tau": config.border_tau, "per_target": per_target}


def _latency_model(edge_only: float, cloud_only: float, config) -> dict:
    """T(L0) = L0*T_edge + (1-L0)*(T_edge+T_cloud) and the naive mix of the exits' accuracies."""
    return {
        "edge_ms": config.edge_ms,
        "cloud_ms": config.cloud_ms,
        "points": [
            {
                "target": t,
                "latency_ms": config.edge_ms + (1.0 - t) * config.cloud_ms,
                "naive_accuracy": t * edge_only + (1.0 - t) * cloud_only,
            }
            for t in HEURISTIC_TARGETS
        ],
    }


def _weight_sweep(run: RunDir, key) -> list[SweepRun]:
    """Edge-only, cloud-only and entropy-curve accuracy of each local-weight sweep run."""
    rows: list[SweepRun] = []
    for sub in run.sweep_runs():
        try:
            test = read_outputs(sub)["test"]
        except UsageError:  # an unfinished sweep run is left out, not fatal
            continue
        record = read_run_record(sub)
        c = _correctness(test)
        rows.append(
            {
                "local_weight": float(record.local_weight or 0.0),
                "seed": record.seed,
                "epochs": record.train.epochs,
                "limit_train": record.train.limit_train,
                "edge_only_accuracy": float(np.asarray(c.local_correct).mean()),
                "cloud_only_accuracy": float(np.asarray(c.cloud_correct).mean()),
                "entropy": _heuristic_curve("entropy", c, test.local_logits, HEURISTIC_TARGETS, key),
            }
        )
    return rows


def _routers(run: RunDir, c_test: Correctness, local_logits, key, config: EvaluationConfig):
    """Every trained family's result by curve name, and Fig. 6.12's analysis of 'logits'."""
    routers: dict[str, RouterResult] = {}
    test_analysis = None
    for family, family_dir in run.families().items():
        record = read_family(family_dir)
        test_scores = read_family_scores(family_dir)["test"]
        name = curve_name(family)
        routers[name] = _router_family(family, record, test_scores, local_logits, c_test, key)
        if family == "logits":
            test_analysis = _test_analysis(c_test, routers[name], record, test_scores, config)
    return routers, test_analysis


def _summary(curves: dict[str, list[Point]], edge_only: float, cloud_only: float) -> dict:
    """AUC and gap to the oracle of every curve with at least 3 points (single-budget studies
    have no curve to integrate)."""
    summary = {
        name: {"auc": area_under_curve(points, edge_only, cloud_only)}
        for name, points in curves.items()
        if len(points) >= 3
    }
    for name in summary:
        summary[name]["gap_to_oracle"] = summary["oracle"]["auc"] - summary[name]["auc"]
    return summary


def _mechanism_curves(c_test: Correctness, local_logits, key) -> dict[str, list[Point]]:
    """The budget-matched heuristics and the budgeted oracle at HEURISTIC_TARGETS."""
    curves = {
        name: _heuristic_curve(name, c_test, local_logits, HEURISTIC_TARGETS, key) for name in HEURISTICS
    }
    targets = jnp.asarray(HEURISTIC_TARGETS, jnp.float32)
    curves["oracle"] = _points(c_test, oracle_offload(c_test, targets), HEURISTIC_TARGETS)
    return curves


def evaluate(run_dir: RunDir | Path, config: EvaluationConfig = EvaluationConfig()) -> Results:
    """Computes every mechanism's test curve and the analyses; writes and returns results.json."""
    if not np.isfinite(config.border_tau) or config.border_tau < 0:
        raise UsageError(f"--tau must be a non-negative number, got {config.border_tau}")
    run = as_run(run_dir)
    record = read_run_record(run)
    outputs = read_outputs(run)
    c_train, c_test = _correctness(outputs["train"]), _correctness(outputs["test"])
    key = jax.random.fold_in(jax.random.key(record.seed), STREAM_RANDOM_RULE)
    local_logits = outputs["test"].local_logits
    edge_only = float(np.asarray(c_test.local_correct).mean())
    cloud_only = float(np.asarray(c_test.cloud_correct).mean())

    curves = _mechanism_curves(c_test, local_logits, key)
    best = _points(c_test, unconstrained_oracle_offload(c_test)[None], [np.nan])[0]
    # the oracle chooses its own local rate here
    unconstrained: UnconstrainedPoint = {
        "target": None,
        "local_rate": best["local_rate"],
        "accuracy": best["accuracy"],
    }
    routers, test_analysis = _routers(run, c_test, local_logits, key, config)
    for name, router in routers.items():
        curves[name] = router["points"]
        curves[f"entropy_at_{name}"] = router["entropy_at_achieved_rate"]

    results: Results = {
        "dataset": record.dataset,
        "seed": record.seed,
        "local_weight": record.local_weight,
        "local_weight_mode": record.local_weight_mode,
        "best_epoch": outputs["test"].epoch,
        "test_size": len(outputs["test"]),
        "made_from": outputs_fingerprint(outputs),
        "edge_only_accuracy": edge_only,
        "cloud_only_accuracy": cloud_only,
        "oracle_unconstrained": unconstrained,
        "curves": curves,
        "summary": _summary(curves, edge_only, cloud_only),
        "routers": routers,
        "label_analysis": _label_analysis(c_train, list(HEURISTIC_TARGETS), config),
        "test_analysis": test_analysis,
        "latency_model": _latency_model(edge_only, cloud_only, config),
        "local_weight_sweep": _weight_sweep(run, key),
        "timing": {
            "ddnn_training_seconds": float(sum(row["seconds"] for row in read_metrics(run))),
            "ddnn_training_backend": record.backend,
            "router_training_seconds": {name: r["seconds"]["train"] for name, r in routers.items()},
        },
        "evaluation_config": dataclasses.asdict(config),
        "inference": read_inference_timings(run),
    }
    write_results(run, results)
    return results
