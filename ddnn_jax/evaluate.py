"""The evaluate stage: every mechanism on the test split of one trained DDNN -> ``results.json``.

Heuristics and the oracle are swept over ``HEURISTIC_TARGETS`` at matched budgets; each trained
router family contributes its curve at its own targets, the entropy rule evaluated at the local
rates the routers actually achieved, and its decision accuracy against its own kind of labels.
Label analysis (Fig. 5.1) is on the training split's meta-dataset; the test analysis (Fig. 6.12)
is at the reference target. Rates and accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax import runfiles
from ddnn_jax.collect import load_outputs
from ddnn_jax.errors import UsageError
from ddnn_jax.labels import (
    DEFAULT_BORDER_TAU, Correctness, benefit_thresholds, correctness, label_analysis,
    labels_of_kind, oracle_labels,
)
from ddnn_jax.policies import (
    HEURISTICS, heuristic_offload, oracle_offload, router_offload, unconstrained_oracle_offload,
)
from ddnn_jax.route import load_family, trained_families

RESULTS = "results.json"
WEIGHT_SWEEP = "weight_sweep"
HEURISTIC_TARGETS = tuple(sorted({round(i * 0.05, 2) for i in range(21)} | {0.54}))
STREAM_RANDOM_RULE = 200  # fold_in stream of the run seed for the random baseline


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Settings of the evaluate stage."""

    reference_target: float = 0.54  # L0 of the thesis's single-budget analyses (Fig. 6.3, 6.4, 6.12)
    border_tau: float = DEFAULT_BORDER_TAU  # |B| < tau counts as borderline
    edge_ms: float = 10.0  # latency model: edge inference time (thesis UAV example)
    cloud_ms: float = 80.0  # latency model: uplink + cloud time, 8x the edge's


def curve_name(family: str) -> str:
    """Router family directory name -> curve name: 'logits+' -> 'router_logits_plus'."""
    return "router_" + family.replace("+", "_plus").replace("-", "_")


def _points(c: Correctness, offload: jax.Array, targets) -> list[dict]:
    offload = np.asarray(offload, bool)
    local_rate = 1.0 - offload.mean(-1)
    # float64 on the host: accuracies are exact fractions of the test split.
    acc = np.where(offload, np.asarray(c.cloud_correct), np.asarray(c.local_correct)).mean(-1)
    return [
        {"target": float(t), "local_rate": float(r), "accuracy": float(a)}
        for t, r, a in zip(targets, local_rate, acc)
    ]


def area_under_curve(points: list[dict], edge_only: float, cloud_only: float) -> float:
    """Trapezoid area of accuracy over local rate on [0, 1], closed by the cloud-only (0) and
    edge-only (1) points."""
    xs = [0.0] + [p["local_rate"] for p in points] + [1.0]
    ys = [cloud_only] + [p["accuracy"] for p in points] + [edge_only]
    order = np.argsort(xs, kind="stable")
    return float(np.trapezoid(np.asarray(ys)[order], np.asarray(xs)[order]))


def _heuristic_curve(name: str, c: Correctness, local_logits, targets, key) -> list[dict]:
    """A budget-matched heuristic's points at the given targets."""
    offload = heuristic_offload(name, local_logits, jnp.asarray(targets, jnp.float32), key)
    return _points(c, offload, targets)


def _router_family(
    name: str, record: dict, test_scores: np.ndarray, local_logits, c_test: Correctness, key
) -> dict:
    """One router family's test curve, decision accuracy, histories and timings."""
    targets = record["config"]["targets"]
    # B*(L0) as route computed them from the training split.
    thresholds = jnp.asarray(record["benefit_thresholds"], jnp.float32)
    labels = labels_of_kind(record["config"]["labels"], c_test, thresholds)
    offload = router_offload(jnp.asarray(test_scores))
    points = _points(c_test, offload, targets)
    decisions = np.asarray((offload == (labels == 1)).mean(-1))
    for point, d, best, ran in zip(points, decisions, record["best_epoch"], record["epochs_run"]):
        point.update(decision_accuracy=float(d), best_epoch=int(best), epochs_run=int(ran))
    rates = [p["local_rate"] for p in points]
    return {
        "family": name,
        "config": record["config"],
        "points": points,
        # The entropy rule at the local rates the routers achieved (each point's target).
        "entropy_at_achieved_rate": _heuristic_curve("entropy", c_test, local_logits, rates, key),
        "train_decision_accuracy": record["train_decision_accuracy"],
        "val_decision_accuracy": record["val_decision_accuracy"],
        "seconds": record["seconds"],
        "backend": record.get("backend"),
    }


def _nearest(targets: list[float], wanted: float) -> int:
    return int(np.argmin(np.abs(np.asarray(targets) - wanted)))


def _test_analysis(c_test, router: dict, record: dict, scores_test: np.ndarray, config) -> dict:
    """Fig. 6.12: router-vs-oracle disagreement ("noise"), borderline |B| < tau, the rest, and
    the mixed system's error rate within each (disjoint) group."""
    i = _nearest([p["target"] for p in router["points"]], config.reference_target)
    target = router["points"][i]["target"]
    threshold = jnp.asarray(record["benefit_thresholds"][i : i + 1], jnp.float32)
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
        "misclassification": {
            g: (float(wrong[m].mean()) if m.any() else None) for g, m in groups.items()
        },
    }


def _label_analysis(c_train, targets, config) -> dict:
    """Fig. 5.1 on the training meta-dataset: the reference target's values and every target's."""
    analysis = jax.device_get(
        label_analysis(
            c_train, benefit_thresholds(c_train.benefit, jnp.asarray(targets, jnp.float32)),
            config.border_tau,
        )
    )
    per_target = [
        {"target": t, **{k: float(v[i]) for k, v in analysis.items()}}
        for i, t in enumerate(targets)
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


def _weight_sweep(run_dir: Path, key) -> list[dict]:
    """Edge-only, cloud-only and entropy-curve accuracy of each local-weight sweep run."""
    rows = []
    root = run_dir / WEIGHT_SWEEP
    for sub in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            outputs = load_outputs(sub)
        except UsageError:  # an unfinished sweep run is left out, not fatal
            continue
        record = runfiles.read_config(sub)
        test = outputs["test"]
        c = correctness(test["local_logits"], test["cloud_logits"], test["labels"])
        rows.append({
            "local_weight": record["local_weight"],
            "seed": record["seed"],
            "epochs": record["epochs"],
            "limit_train": record["limit_train"],
            "edge_only_accuracy": float(np.asarray(c.local_correct).mean()),
            "cloud_only_accuracy": float(np.asarray(c.cloud_correct).mean()),
            "entropy": _heuristic_curve("entropy", c, test["local_logits"], HEURISTIC_TARGETS, key),
        })
    return rows


INFERENCE_BENCH = "bench_inference.json"


def _inference_timings(run_dir: Path) -> list[dict] | None:
    """The lines of ``ddnn bench inference --run RUN --out RUN/bench_inference.json``, if run."""
    path = run_dir / INFERENCE_BENCH
    return json.loads(path.read_text()) if path.is_file() else None


def evaluate(run_dir: Path, config: EvaluationConfig = EvaluationConfig()) -> dict:
    """Computes every mechanism's test curve and the analyses; writes and returns results.json."""
    record = runfiles.read_config(run_dir)
    outputs = load_outputs(run_dir)
    c_train, c_test = (
        correctness(outputs[s]["local_logits"], outputs[s]["cloud_logits"], outputs[s]["labels"])
        for s in ("train", "test")
    )
    key = jax.random.fold_in(jax.random.key(record["seed"]), STREAM_RANDOM_RULE)
    local_logits = outputs["test"]["local_logits"]
    edge_only = float(np.asarray(c_test.local_correct).mean())
    cloud_only = float(np.asarray(c_test.cloud_correct).mean())

    curves = {
        name: _heuristic_curve(name, c_test, local_logits, HEURISTIC_TARGETS, key)
        for name in HEURISTICS
    }
    curves["oracle"] = _points(
        c_test, oracle_offload(c_test, jnp.asarray(HEURISTIC_TARGETS, jnp.float32)), HEURISTIC_TARGETS
    )
    unconstrained = _points(c_test, unconstrained_oracle_offload(c_test)[None], [np.nan])[0]
    unconstrained["target"] = None  # the oracle chooses its own local rate here

    routers, test_analysis = {}, None
    for family, family_dir in trained_families(run_dir).items():
        name = curve_name(family)
        family_record, scores = load_family(family_dir)
        routers[name] = _router_family(family, family_record, scores["test"], local_logits, c_test, key)
        curves[name] = routers[name]["points"]
        curves[f"entropy_at_{name}"] = routers[name]["entropy_at_achieved_rate"]
        if family == "logits":
            test_analysis = _test_analysis(c_test, routers[name], family_record, scores["test"], config)

    # Single-budget studies (depth, dropout at L0 = 0.54) have no curve to integrate.
    summary = {
        name: {"auc": area_under_curve(points, edge_only, cloud_only)}
        for name, points in curves.items() if len(points) >= 3
    }
    for name in summary:
        summary[name]["gap_to_oracle"] = summary["oracle"]["auc"] - summary[name]["auc"]

    results = {
        "dataset": record["dataset"],
        "seed": record["seed"],
        "local_weight": record["local_weight"],
        "local_weight_mode": record["local_weight_mode"],
        "best_epoch": int(outputs["test"]["epoch"]),
        "test_size": int(len(outputs["test"]["labels"])),
        "edge_only_accuracy": edge_only,
        "cloud_only_accuracy": cloud_only,
        "oracle_unconstrained": unconstrained,
        "curves": curves,
        "summary": summary,
        "routers": routers,
        "label_analysis": _label_analysis(c_train, list(HEURISTIC_TARGETS), config),
        "test_analysis": test_analysis,
        "latency_model": _latency_model(edge_only, cloud_only, config),
        "local_weight_sweep": _weight_sweep(run_dir, key),
        "timing": {
            "ddnn_training_seconds": float(sum(row["seconds"] for row in runfiles.read_metrics(run_dir))),
            "ddnn_training_backend": record.get("backend"),
            "router_training_seconds": {
                name: r["seconds"]["train"] for name, r in routers.items()
            },
        },
        "evaluation_config": dataclasses.asdict(config),
        "inference": _inference_timings(run_dir),
    }
    runfiles.write_json_atomic(run_dir / RESULTS, results)
    return results
