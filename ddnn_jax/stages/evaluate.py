"""The evaluate stage: every mechanism on the test split of one trained DDNN -> ``results.json``.

Heuristics and the oracle are swept over ``HEURISTIC_TARGETS`` at matched budgets. Each trained
router family contributes, at its own targets, its decisions at the thresholds calibrated on
validation (curve ``router_<family>_calibrated``) and, for per-target routers, the thesis decision
logit >= 0 (curve ``router_<family>``, with the entropy rule at the local rates it achieved).
Every router curve is compared with entropy and random at the same targets, sample by sample: a
paired bootstrap interval of the accuracy difference and an exact McNemar test (``comparisons``).
Label analysis (Fig. 5.1) is on the training split's meta-dataset; the test analysis (Fig. 6.12)
is at the reference target. Rates and accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from ddnn_jax.common.errors import UsageError
from ddnn_jax.core.decisions import (
    HEURISTICS,
    calibrated_thresholds,
    entropy_scores,
    heuristic_offload,
    oracle_offload,
    router_offload,
    threshold_offload,
    unconstrained_oracle_offload,
)
from ddnn_jax.core.families import calibrated, curve_name
from ddnn_jax.core.labels import (
    DEFAULT_BORDER_TAU,
    Correctness,
    benefit_thresholds,
    correctness,
    label_analysis,
    labels_of_kind,
    oracle_labels,
)
from ddnn_jax.rundir.records import (
    Comparison,
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
    family_fingerprint,
    locked,
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
    bootstrap_resamples: int = 2000  # paired bootstrap of each router-vs-baseline difference
    bootstrap_seed: int = 0  # numpy Generator seed of the bootstrap resamples
    comparison_baselines: tuple[str, ...] = ("entropy", "random")


def _correctness(o: SplitOutputs) -> Correctness:
    return correctness(o.local_logits, o.cloud_logits, o.labels)


def _points(c: Correctness, offload: jax.Array | np.ndarray, targets) -> list[Point]:
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


class Decisions(NamedTuple):
    """A router curve's offload masks [G, N] at its targets [G]."""

    targets: np.ndarray
    offload: np.ndarray


def _router_points(c_test: Correctness, decisions: Decisions, labels, record: FamilyRecord) -> list[Point]:
    points = _points(c_test, decisions.offload, decisions.targets)
    if labels is not None:  # per-target routers: agreement with their own meta-labels
        agree = np.asarray((decisions.offload == (np.asarray(labels) == 1)).mean(-1))
        for point, d in zip(points, agree, strict=True):
            point["decision_accuracy"] = float(d)
    if len(record.best_epoch) == len(points):
        for point, best, ran in zip(points, record.best_epoch, record.epochs_run, strict=True):
            point["best_epoch"], point["epochs_run"] = int(best), int(ran)
    return points


def _router_family(
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
    grid = record.config["objective"] == "grid"
    if given is None:
        thresholds = calibrated_thresholds(scores["val"], targets)
    elif len(given) != len(targets):
        raise UsageError(
            f"--thresholds gives {len(given)} values for router family '{name}', which has "
            f"{len(targets)} targets: give one per target"
        )
    else:
        thresholds = np.asarray(given, np.float64)
    labels = (
        labels_of_kind(record.config["labels"], c_test, jnp.asarray(record.benefit_thresholds, jnp.float32))
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
        result["entropy_at_achieved_rate"] = _heuristic_curve("entropy", c_test, local_logits, rates, key)
    return result, decisions


def _comparisons(
    c_test: Correctness, decisions: dict[str, Decisions], local_logits, key, config: EvaluationConfig
) -> list[Comparison]:
    """Each router curve against each baseline rule at the same targets, sample by sample.

    The interval is a percentile bootstrap of the mean per-sample difference in correctness
    (router - baseline) over test samples: ``scipy.stats.bootstrap`` on the [M, N] differences
    with ``np.random.default_rng(bootstrap_seed)``, every comparison resampled with the same
    indices (running it on any single row gives that row's interval). The p-value is the exact
    McNemar test: a two-sided binomial test of the discordant pairs at 1/2.
    """
    lc, cc = np.asarray(c_test.local_correct), np.asarray(c_test.cloud_correct)
    rows, differences = [], []
    for curve, (targets, offload) in decisions.items():
        right = np.where(offload, cc, lc)
        for baseline in config.comparison_baselines:
            base_offload = np.asarray(heuristic_offload(baseline, local_logits, jnp.asarray(targets), key))
            base_right = np.where(base_offload, cc, lc)
            for g, target in enumerate(targets):
                rows.append((target, curve, baseline, right[g], base_right[g], offload[g], base_offload[g]))
                differences.append(right[g].astype(np.int8) - base_right[g].astype(np.int8))
    if not rows:
        return []
    interval = scipy.stats.bootstrap(
        (np.stack(differences),),
        np.mean,
        axis=-1,
        vectorized=True,
        n_resamples=config.bootstrap_resamples,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(config.bootstrap_seed),
        batch=max(1, 2_000_000 // (len(rows) * len(lc))),
    ).confidence_interval
    comparisons: list[Comparison] = []
    for i, (target, curve, baseline, right, base_right, offload, base_offload) in enumerate(rows):
        wins, losses = int(np.sum(right & ~base_right)), int(np.sum(~right & base_right))
        p_value = scipy.stats.binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
        comparisons.append(
            {
                "target": float(target),
                "mechanism": curve,
                "baseline": baseline,
                "difference": float(right.mean() - base_right.mean()),
                "ci95": [float(interval.low[i]), float(interval.high[i])],
                "p_value": float(p_value),
                "local_rate": float(1.0 - offload.mean()),
                "baseline_local_rate": float(1.0 - base_offload.mean()),
                "n": int(right.size),
                "discordant": [wins, losses],
            }
        )
    return comparisons


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
    the mixed system's error rate within each (disjoint) group, for the thesis decision
    (logit >= 0) of the per-target router, as in the thesis's analysis."""
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


def _routers(
    run: RunDir,
    c_test: Correctness,
    local_logits,
    key,
    config: EvaluationConfig,
    thresholds: dict[str, list[float]],
    made_from: str,
):
    """Every trained family's result by curve name, every router curve's decisions, and
    Fig. 6.12's analysis of 'logits'. A family that is incomplete or was trained on other
    outputs than these is refused, not left out or scored on outputs it never saw."""
    present = [p for p in run.routers.iterdir() if not p.name.startswith(".")] if run.routers.is_dir() else []
    for path in present:
        if path.name not in run.families():
            raise UsageError(
                f"{path} is incomplete: rerun 'ddnn route --run {run} --name {path.name}' with its flags "
                "(or 'ddnn run'), or delete it"
            )
    unknown = sorted(set(thresholds) - set(run.families()))
    if unknown:
        raise UsageError(f"--thresholds names router family '{unknown[0]}', which {run} does not have")
    routers: dict[str, RouterResult] = {}
    decisions: dict[str, Decisions] = {}
    test_analysis = None
    for family, family_dir in run.families().items():
        record = read_family(family_dir)
        if record.made_from != made_from:
            raise UsageError(
                f"router family {family} was trained on other outputs than {run}'s current ones: "
                f"retrain it ('ddnn check --run {run}' gives the command) or rerun 'ddnn run'"
            )
        scores = read_family_scores(family_dir)
        name = curve_name(family)
        routers[name], decided = _router_family(
            family, record, scores, c_test, local_logits, key, thresholds.get(family)
        )
        decisions.update(decided)
        if family == "logits" and routers[name]["points"]:
            test_analysis = _test_analysis(c_test, routers[name], record, scores["test"], config)
    return routers, decisions, test_analysis


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


def _training_seconds(run: RunDir, record) -> float | None:
    rows = read_metrics(run)
    if not rows or len(rows) < record.train.epochs:
        return None
    return float(sum(row["seconds"] for row in rows))


def _mechanism_curves(c_test: Correctness, local_logits, val_local_logits, key) -> dict[str, list[Point]]:
    """The budget-matched heuristics, the budgeted oracle and the entropy rule calibrated on
    validation (what a deployed edge runs, ``ddnn edge``) at HEURISTIC_TARGETS."""
    curves = {
        name: _heuristic_curve(name, c_test, local_logits, HEURISTIC_TARGETS, key) for name in HEURISTICS
    }
    targets = jnp.asarray(HEURISTIC_TARGETS, jnp.float32)
    curves["oracle"] = _points(c_test, oracle_offload(c_test, targets), HEURISTIC_TARGETS)
    thresholds = calibrated_thresholds(entropy_scores(val_local_logits), HEURISTIC_TARGETS)
    entropy_offload = threshold_offload(entropy_scores(local_logits), thresholds)
    curves[calibrated("entropy")] = _points(c_test, entropy_offload, HEURISTIC_TARGETS)
    for point, threshold in zip(curves[calibrated("entropy")], thresholds, strict=True):
        point["threshold"] = float(threshold)
    return curves


def evaluate(
    run_dir: RunDir | Path,
    config: EvaluationConfig = EvaluationConfig(),
    thresholds: dict[str, list[float]] | None = None,
) -> Results:
    """Computes every mechanism's test curve and the analyses; writes and returns results.json.

    Args:
      thresholds: per router family, thresholds (one per target) to use in place of the ones
        calibrated on validation, e.g. a deployed router's.
    """
    if not np.isfinite(config.border_tau) or config.border_tau < 0:
        raise UsageError(f"--tau must be a non-negative number, got {config.border_tau}")
    if config.bootstrap_resamples < 2000:
        raise UsageError(f"the bootstrap needs at least 2000 resamples, got {config.bootstrap_resamples}")
    run = as_run(run_dir)
    read_run_record(run)
    with locked(run, "evaluate"):
        return _evaluate(run, config, thresholds or {})


def _evaluate(run: RunDir, config: EvaluationConfig, thresholds: dict[str, list[float]]) -> Results:
    record = read_run_record(run)
    outputs = read_outputs(run)
    c_train, c_test = _correctness(outputs["train"]), _correctness(outputs["test"])
    key = jax.random.fold_in(jax.random.key(record.seed), STREAM_RANDOM_RULE)
    local_logits = outputs["test"].local_logits
    edge_only = float(np.asarray(c_test.local_correct).mean())
    cloud_only = float(np.asarray(c_test.cloud_correct).mean())

    curves = _mechanism_curves(c_test, local_logits, outputs["val"].local_logits, key)
    best = _points(c_test, unconstrained_oracle_offload(c_test)[None], [np.nan])[0]
    # the oracle chooses its own local rate here
    unconstrained: UnconstrainedPoint = {
        "target": None,
        "local_rate": best["local_rate"],
        "accuracy": best["accuracy"],
    }
    made_from = outputs_fingerprint(outputs)
    routers, decisions, test_analysis = _routers(
        run, c_test, local_logits, key, config, thresholds, made_from
    )
    for name, router in routers.items():
        curves[calibrated(name)] = router["calibrated"]
        if router["points"]:
            curves[name] = router["points"]
            curves[f"entropy_at_{name}"] = router["entropy_at_achieved_rate"]

    results: Results = {
        "dataset": record.dataset,
        "seed": record.seed,
        "local_weight": record.local_weight,
        "local_weight_mode": record.local_weight_mode,
        "best_epoch": outputs["test"].epoch,
        "test_size": len(outputs["test"]),
        "made_from": made_from,
        "edge_only_accuracy": edge_only,
        "cloud_only_accuracy": cloud_only,
        "oracle_unconstrained": unconstrained,
        "curves": curves,
        "summary": _summary(curves, edge_only, cloud_only),
        "comparisons": _comparisons(c_test, decisions, local_logits, key, config),
        "routers": routers,
        "label_analysis": _label_analysis(c_train, list(HEURISTIC_TARGETS), config),
        "test_analysis": test_analysis,
        "latency_model": _latency_model(edge_only, cloud_only, config),
        "local_weight_sweep": _weight_sweep(run, key),
        "timing": {
            # None when the epochs' rows are gone (an imported run, a deleted metrics.jsonl)
            "ddnn_training_seconds": _training_seconds(run, record),
            "ddnn_training_backend": record.backend,
            "router_training_seconds": {name: r["seconds"]["train"] for name, r in routers.items()},
        },
        # Thresholds given instead of calibrated ones are part of how the run was evaluated.
        "evaluation_config": {**dataclasses.asdict(config), "given_thresholds": thresholds or {}},
        "inference": read_inference_timings(run),
    }
    write_results(run, results)
    return results
