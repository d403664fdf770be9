"""The edge's decision rules: each fixed before the first sample and deciding every sample on its
own from edge-only information, so the same decisions come whatever the batch.

* ``router``: the family's router on the sample's edge inputs, offloading when its score reaches
  the threshold calibrated on validation (results.json curve ``router_<family>_calibrated``);
* ``entropy``: normalised entropy of the local softmax against its threshold calibrated on
  validation the same way (curve ``entropy_calibrated``);
* ``random``: the evaluate stage's random ranking of the evaluated samples, a function of the run
  seed and the sample's index (curve ``random``);
* ``oracle``: the budgeted oracle's choice, read from the run's collected outputs: a reference
  that knows what no edge can, the cloud's correctness (curve ``oracle``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.core.decisions import calibrated_thresholds, oracle_offload
from ddnn_jax.core.families import calibrated, curve_name
from ddnn_jax.core.labels import correctness
from ddnn_jax.core.mechanisms import (
    RANDOM,
    ROUTER,
    STREAM_RANDOM_RULE,
    decision_rule,
    deployable_rules,
    rule_offload,
)
from ddnn_jax.core.router_net import RouterConfig, edge_inputs
from ddnn_jax.deploy.edge_half import EdgeInputs
from ddnn_jax.rundir import (
    FamilyDir,
    FamilyRecord,
    RunDir,
    deployed_router,
    outputs_fingerprint,
    read_family,
    read_family_scores,
    read_run_record,
)


class Rule(NamedTuple):
    """A decision rule fixed before the stream, and the in-process evaluation it reproduces."""

    decide: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    reference: np.ndarray  # [N] the in-process offload mask of the evaluated samples
    curve: str  # the results.json curve of this rule
    threshold: float | None  # on the rule's score (router logit, normalised entropy)


def build_rule(inputs: EdgeInputs, mechanism: str, target: float, family: str) -> Rule:
    """The rule of ``mechanism`` at local rate ``target`` for the evaluated images.

    Args:
      inputs: the evaluated images and the run's outputs (validation calibrates the thresholds).
      mechanism: one of ``core.mechanisms.edge_mechanisms()``.
      target: L0, the local rate the rule was calibrated for.
      family: the router family (mechanism 'router' only).
    """
    if mechanism == ROUTER:
        return _router_rule(inputs, target, family)
    if mechanism in deployable_rules():
        return _score_rule(inputs, mechanism, target)
    if mechanism == RANDOM:
        return _planned(_random_plan(inputs, target), mechanism)
    return _planned(_oracle_plan(inputs, target), mechanism)


def _score_rule(inputs: EdgeInputs, mechanism: str, target: float) -> Rule:
    """A score of the local logits against its threshold calibrated on validation."""
    rule = decision_rule(mechanism)
    val_scores = rule.offload_scores(inputs.outputs["val"].local_logits)
    threshold = float(calibrated_thresholds(val_scores, [target])[0])
    decide = lambda index, logits, z, x: rule.offload_scores(logits) >= threshold
    reference = decide(None, inputs.reference.local_logits, None, None)
    return Rule(decide, reference, calibrated(mechanism), threshold)


def _planned(plan: np.ndarray, mechanism: str) -> Rule:
    """A rule that reads each sample's decision from a plan made before the stream."""
    return Rule(lambda index, logits, z, x: plan[index], plan, mechanism, None)


def _random_plan(inputs: EdgeInputs, target: float) -> np.ndarray:
    n = len(inputs.images)
    key = jax.random.fold_in(jax.random.key(read_run_record(inputs.run).seed), STREAM_RANDOM_RULE)
    targets = jnp.asarray([target], jnp.float32)
    return np.asarray(rule_offload(RANDOM, jnp.zeros((n, 1)), targets, key))[0]


def _oracle_plan(inputs: EdgeInputs, target: float) -> np.ndarray:
    if inputs.labels is None:
        raise UsageError("the oracle needs labels: put the images in class folders 0 .. C-1")
    reference = inputs.reference
    c = correctness(reference.local_logits, reference.cloud_logits, inputs.labels)
    return np.asarray(oracle_offload(c, jnp.asarray([target], jnp.float32)))[0]


def router_family(run: RunDir, name: str) -> tuple[FamilyDir, FamilyRecord]:
    """The run's complete router family ``name`` and its record; UsageError naming those it has."""
    family = run.family(name)
    if not family.is_complete():
        have = ", ".join(run.families()) or "none"
        raise UsageError(f"{run} has no router family '{name}' (it has: {have}): give --family")
    return family, read_family(family)


def _router_rule(inputs: EdgeInputs, target: float, family_name: str) -> Rule:
    run, n = inputs.run, len(inputs.images)
    family, record = router_family(run, family_name)
    if record.made_from != outputs_fingerprint(inputs.outputs):
        raise UsageError(
            f"router family {family_name} was trained on other outputs than {run}'s current ones: "
            f"retrain it ('ddnn check --run {run}' gives the command)"
        )
    router = RouterConfig.from_json(record.config)
    targets = list(router.targets)
    matches = [g for g, t in enumerate(targets) if abs(t - target) < 1e-9]
    if not matches:
        raise UsageError(
            f"router family {family_name} was calibrated for L0 in {', '.join(f'{t:g}' for t in targets)}, "
            f"not {target:g}: choose one of them"
        )
    g = matches[0]
    threshold = float(record.decision_thresholds[g])
    deployed = deployed_router(family, 0 if router.objective == "score" else g)
    score = jax.jit(deployed.logits)

    def decide(index, local_logits, z, images):
        return np.asarray(score(edge_inputs(router.kind, local_logits, z, images)), np.float64) >= threshold

    if inputs.test_split:  # the scores results.json was computed from
        scores = read_family_scores(family)["test"]
        reference = np.asarray(scores[min(g, len(scores) - 1), :n], np.float64) >= threshold
    else:
        ref = inputs.reference
        reference = decide(None, ref.local_logits, ref.features, inputs.images)
    return Rule(decide, reference, calibrated(curve_name(family_name)), threshold)
