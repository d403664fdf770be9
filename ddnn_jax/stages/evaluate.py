"""The evaluate stage: every mechanism on the test split of one trained DDNN -> ``results.json``.

Every registered decision rule and the oracle are swept over ``RULE_TARGETS`` at matched budgets.
Each trained router family contributes, at its own targets, its decisions at the thresholds
calibrated on validation (curve ``router_<family>_calibrated``) and, for per-target routers, the
thesis decision logit >= 0 (curve ``router_<family>``, with the entropy rule at the local rates it
achieved). Every router curve is compared with entropy and random at the same targets, sample by
sample: a paired bootstrap interval of the accuracy difference and an exact McNemar test
(``comparisons``). Label analysis (Fig. 5.1) is on the training split's meta-dataset; the test
analysis (Fig. 6.12) is at the reference target. Rates and accuracies are fractions in [0, 1].
The stage checks its settings, reads its inputs once, computes (``stages.analyses``) and writes
results.json once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.core.comparisons import paired_comparisons
from ddnn_jax.core.curves import latency_model
from ddnn_jax.core.decisions import unconstrained_oracle_offload
from ddnn_jax.core.families import calibrated, curve_name
from ddnn_jax.core.guarantees import Guarantee
from ddnn_jax.core.labels import DEFAULT_BORDER_TAU, Correctness, correctness
from ddnn_jax.core.mechanisms import (
    ENTROPY,
    RANDOM,
    REFERENCE_TARGET,
    RULE_TARGETS,
    STREAM_RANDOM_RULE,
    rule_offload,
)
from ddnn_jax.rundir import (
    Comparison,
    FamilyRecord,
    Point,
    Results,
    RouterResult,
    RunDir,
    RunRecord,
    SplitOutputs,
    TestAnalysis,
    UnconstrainedPoint,
    as_run,
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
from ddnn_jax.rundir.bottlenecks import (
    BottleneckRecord,
    current_bottleneck,
    read_bottleneck_logits,
    read_coded_bytes,
)
from ddnn_jax.stages.analyses import (
    Decisions,
    correctness_of,
    mechanism_curves,
    points,
    router_error_analysis,
    router_family_result,
    summary,
    training_label_analysis,
    weight_sweep_run,
)
from ddnn_jax.stages.reliability import (
    exit_calibration,
    guarantee_check,
    guaranteed_curves,
    offload_scores,
    scaled_rule_curves,
    selective_metrics,
)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Settings of the evaluate stage."""

    reference_target: float = REFERENCE_TARGET  # L0 of the single-budget analyses (Fig. 6.3, 6.4, 6.12)
    border_tau: float = DEFAULT_BORDER_TAU  # |B| < tau counts as borderline
    edge_ms: float = 10.0  # latency model: edge inference time (thesis UAV example)
    cloud_ms: float = 80.0  # latency model: uplink + cloud time, 8x the edge's
    bootstrap_resamples: int = 2000  # paired bootstrap of each router-vs-baseline difference
    bootstrap_seed: int = 0  # numpy Generator seed of the bootstrap resamples
    comparison_baselines: tuple[str, ...] = (ENTROPY, RANDOM)
    guarantee: Guarantee = Guarantee()  # of the *_guaranteed curves (core.guarantees)
    guarantee_draws: int = 1000  # validation sets drawn to check the guarantee's promise
    guarantee_seed: int = 0


def evaluate(
    run_dir: RunDir | Path,
    config: EvaluationConfig = EvaluationConfig(),
    thresholds: dict[str, list[float]] | None = None,
) -> Results:
    """Computes every mechanism's test curve and the analyses; writes and returns results.json.

    Args:
      run_dir: a run with ``outputs/`` and any number of router families.
      config: the reference budget, the border width, the latency model and the bootstrap.
      thresholds: per router family, thresholds (one per target) to use in place of the ones
        calibrated on validation, e.g. a deployed router's.
    Returns:
      The results, as written to ``results.json`` (schema: ``rundir.Results``).
    """
    if not np.isfinite(config.border_tau) or config.border_tau < 0:
        raise UsageError(f"--tau must be a non-negative number, got {config.border_tau}")
    try:
        config.guarantee.check()
    except ValueError as err:
        raise UsageError(f"--guarantee: {err}") from None
    if config.bootstrap_resamples < 2000:
        raise UsageError(f"the bootstrap needs at least 2000 resamples, got {config.bootstrap_resamples}")
    run = as_run(run_dir)
    read_run_record(run)
    with locked(run, "evaluate"):
        results = _results(_read_inputs(run, thresholds or {}), config, thresholds or {})
        write_results(run, results)
        return results


# a trained router family's record and its router logits [G, N] by split
TrainedFamily = tuple[FamilyRecord, dict[str, np.ndarray]]


class _Inputs(NamedTuple):
    """Everything the stage reads from a run directory, read once."""

    record: RunRecord
    outputs: dict[str, SplitOutputs]
    made_from: str  # outputs_fingerprint of ``outputs``
    families: dict[str, TrainedFamily]
    sweep_runs: list[tuple[RunRecord, SplitOutputs]]  # each finished sweep run's test outputs
    training_seconds: float | None
    inference: list[dict[str, Any]] | None  # bench_inference.json
    # each learned bottleneck's record, the cloud exit's logits through it and each sample's
    # entropy-coded payload, by split
    bottlenecks: dict[str, tuple[BottleneckRecord, dict[str, np.ndarray], dict[str, np.ndarray]]]


def _read_inputs(run: RunDir, thresholds: dict[str, list[float]]) -> _Inputs:
    record = read_run_record(run)
    outputs = read_outputs(run)
    made_from = outputs_fingerprint(outputs)
    return _Inputs(
        record=record,
        outputs=outputs,
        made_from=made_from,
        families=_read_families(run, thresholds, made_from),
        sweep_runs=_read_sweep_runs(run),
        training_seconds=_training_seconds(run, record),
        inference=read_inference_timings(run),
        bottlenecks=_read_bottlenecks(run, outputs),
    )


def _read_bottlenecks(run: RunDir, outputs: dict[str, SplitOutputs]):
    """Every bottleneck of the run, refused when it was fine-tuned on another checkpoint than
    the one these outputs come from."""
    found = {}
    for name in run.bottlenecks():
        record, directory = current_bottleneck(run, name, outputs["test"].checkpoint)
        found[name] = (record, read_bottleneck_logits(directory), read_coded_bytes(directory))
    return found


def _read_families(
    run: RunDir, thresholds: dict[str, list[float]], made_from: str
) -> dict[str, TrainedFamily]:
    """Every trained family's record and scores. A family that is incomplete or was trained on
    other outputs than these is refused, not left out or scored on outputs it never saw."""
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
    families: dict[str, TrainedFamily] = {}
    for family, family_dir in run.families().items():
        record = read_family(family_dir)
        if record.made_from != made_from:
            raise UsageError(
                f"router family {family} was trained on other outputs than {run}'s current ones: "
                f"retrain it ('ddnn check --run {run}' gives the command) or rerun 'ddnn run'"
            )
        families[family] = (record, read_family_scores(family_dir))
    return families


def _read_sweep_runs(run: RunDir) -> list[tuple[RunRecord, SplitOutputs]]:
    """The record and test outputs of each local-weight sweep run."""
    rows = []
    for sub in run.sweep_runs():
        try:
            test = read_outputs(sub)["test"]
        except UsageError:  # an unfinished sweep run is left out, not fatal
            continue
        rows.append((read_run_record(sub), test))
    return rows


def _training_seconds(run: RunDir, record: RunRecord) -> float | None:
    rows = read_metrics(run)
    if not rows or len(rows) < record.train.epochs:
        return None
    return float(sum(row["seconds"] for row in rows))


def _routers(
    families: dict[str, TrainedFamily],
    c_test: Correctness,
    local_logits,
    key,
    config: EvaluationConfig,
    thresholds: dict[str, list[float]],
) -> tuple[dict[str, RouterResult], dict[str, Decisions], TestAnalysis | None]:
    """Every trained family's result by curve name, every router curve's decisions, and
    Fig. 6.12's analysis of 'logits'."""
    routers: dict[str, RouterResult] = {}
    decisions: dict[str, Decisions] = {}
    test_analysis = None
    for family, (record, scores) in families.items():
        name = curve_name(family)
        routers[name], decided = router_family_result(
            family, record, scores, c_test, local_logits, key, thresholds.get(family)
        )
        decisions.update(decided)
        if family == "logits" and routers[name]["points"]:
            test_analysis = router_error_analysis(
                c_test, routers[name], record, scores["test"], config.reference_target, config.border_tau
            )
    return routers, decisions, test_analysis


def _comparisons(
    c_test: Correctness, decisions: dict[str, Decisions], local_logits, key, config: EvaluationConfig
) -> list[Comparison]:
    """Each router curve against each baseline rule at the same targets, sample by sample
    (``core.comparisons.paired_comparisons``, every comparison resampled with the same indices)."""
    lc, cc = np.asarray(c_test.local_correct), np.asarray(c_test.cloud_correct)
    rows, right, base_right = [], [], []
    for curve, (targets, offload) in decisions.items():
        curve_right = np.where(offload, cc, lc)
        for baseline in config.comparison_baselines:
            base_offload = np.asarray(rule_offload(baseline, local_logits, jnp.asarray(targets), key))
            baseline_right = np.where(base_offload, cc, lc)
            for g, target in enumerate(targets):
                rows.append((target, curve, baseline, offload[g], base_offload[g]))
                right.append(curve_right[g])
                base_right.append(baseline_right[g])
    if not rows:
        return []
    stats = paired_comparisons(
        np.stack(right),
        np.stack(base_right),
        resamples=config.bootstrap_resamples,
        seed=config.bootstrap_seed,
    )
    return [
        {
            "target": float(target),
            "mechanism": curve,
            "baseline": baseline,
            "difference": float(stats.difference[i]),
            "ci95": [float(stats.ci95_low[i]), float(stats.ci95_high[i])],
            "p_value": float(stats.p_value[i]),
            "local_rate": float(1.0 - offload.mean()),
            "baseline_local_rate": float(1.0 - base_offload.mean()),
            "n": int(lc.size),
            "discordant": [int(stats.wins[i]), int(stats.losses[i])],
        }
        for i, (target, curve, baseline, offload, base_offload) in enumerate(rows)
    ]


def _unconstrained_oracle(c_test: Correctness) -> UnconstrainedPoint:
    """The oracle at the local rate it chooses itself."""
    best = points(c_test, unconstrained_oracle_offload(c_test)[None], [np.nan])[0]
    return {"target": None, "local_rate": best["local_rate"], "accuracy": best["accuracy"]}


def _curves(
    c_test: Correctness, outputs: dict[str, SplitOutputs], routers: dict[str, RouterResult], key
) -> dict[str, list[Point]]:
    """The rule and oracle curves, then each router family's."""
    curves = mechanism_curves(c_test, outputs["test"].local_logits, outputs["val"].local_logits, key)
    for name, router in routers.items():
        curves[calibrated(name)] = router["calibrated"]
        if router["points"]:
            curves[name] = router["points"]
            curves[f"entropy_at_{name}"] = router["entropy_at_achieved_rate"]
    return curves


def _bottleneck_results(inputs: _Inputs, decisions: dict[str, Decisions], key) -> dict[str, dict[str, Any]]:
    """The DDNN with each bottleneck: the same edge decisions (rules, calibrated routers), the
    cloud's answers through the bottleneck; its cloud-only accuracy, curves and their summary."""
    out = {}
    for name, (record, cloud_logits, coded_bytes) in inputs.bottlenecks.items():
        test, val = inputs.outputs["test"], inputs.outputs["val"]  # the local exit is the run's
        c_test = correctness(test.local_logits, cloud_logits["test"], test.labels)
        curves = mechanism_curves(c_test, test.local_logits, val.local_logits, key)
        for curve, (targets, offload) in decisions.items():
            if curve.endswith("_calibrated"):
                curves[curve] = points(c_test, offload, targets)
                # the mean entropy-coded payload per sample of the offloads this curve makes
                for point, row in zip(curves[curve], np.asarray(offload), strict=True):
                    point["coded_bytes_per_sample"] = float(np.where(row, coded_bytes["test"], 0).mean())
        edge_only = float(np.asarray(c_test.local_correct).mean())
        cloud_only = float(np.asarray(c_test.cloud_correct).mean())
        out[name] = {
            "config": record.config,
            "payload_bytes": record.payload_bytes,
            "coded_bytes_mean": float(coded_bytes["test"].mean()),  # entropy-coded, all test samples
            "code_shape": record.code_shape,
            "cloud_only_accuracy": cloud_only,
            "curves": curves,
            "summary": summary(curves, edge_only, cloud_only),
        }
    return out


def _results(inputs: _Inputs, config: EvaluationConfig, thresholds: dict[str, list[float]]) -> Results:
    """results.json from what the stage read."""
    record, outputs = inputs.record, inputs.outputs
    c_train, c_test = correctness_of(outputs["train"]), correctness_of(outputs["test"])
    key = jax.random.fold_in(jax.random.key(record.seed), STREAM_RANDOM_RULE)
    local_logits = outputs["test"].local_logits
    edge_only = float(np.asarray(c_test.local_correct).mean())
    cloud_only = float(np.asarray(c_test.cloud_correct).mean())
    routers, decisions, test_analysis = _routers(
        inputs.families, c_test, local_logits, key, config, thresholds
    )
    curves = _curves(c_test, outputs, routers, key)
    calibration = exit_calibration(outputs)
    temperature = calibration["local"]["temperature"]
    curves |= scaled_rule_curves(c_test, local_logits, temperature, key)
    scores = offload_scores(outputs, inputs.families, temperature, config.reference_target, key)
    c_val = correctness_of(outputs["val"])
    curves |= guaranteed_curves(scores, inputs.families, c_val, c_test, config.guarantee)
    check = guarantee_check(
        scores[ENTROPY],
        outputs,
        config.reference_target,
        config.guarantee,
        draws=config.guarantee_draws,
        seed=config.guarantee_seed,
    )
    return {
        "dataset": record.dataset,
        "seed": record.seed,
        "local_weight": record.local_weight,
        "local_weight_mode": record.local_weight_mode,
        "best_epoch": outputs["test"].epoch,
        "test_size": len(outputs["test"]),
        "made_from": inputs.made_from,
        "edge_only_accuracy": edge_only,
        "cloud_only_accuracy": cloud_only,
        "oracle_unconstrained": _unconstrained_oracle(c_test),
        "curves": curves,
        "summary": summary(curves, edge_only, cloud_only),
        "comparisons": _comparisons(c_test, decisions, local_logits, key, config),
        "routers": routers,
        "label_analysis": training_label_analysis(
            c_train, list(RULE_TARGETS), config.reference_target, config.border_tau
        ),
        "test_analysis": test_analysis,
        "latency_model": latency_model(RULE_TARGETS, edge_only, cloud_only, config.edge_ms, config.cloud_ms),
        "local_weight_sweep": [weight_sweep_run(sub, test, key) for sub, test in inputs.sweep_runs],
        "timing": {
            # None when the epochs' rows are gone (an imported run, a deleted metrics.jsonl)
            "ddnn_training_seconds": inputs.training_seconds,
            "ddnn_training_backend": record.backend,
            "router_training_seconds": {name: r["seconds"]["train"] for name, r in routers.items()},
        },
        # Thresholds given instead of calibrated ones are part of how the run was evaluated.
        "bottlenecks": _bottleneck_results(inputs, decisions, key),
        "calibration": calibration,
        "selective": selective_metrics(scores, c_test),
        "guarantees": {**dataclasses.asdict(config.guarantee), "check": {"mechanism": ENTROPY, **check}},
        "evaluation_config": {**dataclasses.asdict(config), "given_thresholds": thresholds},
        "inference": inputs.inference,
    }
