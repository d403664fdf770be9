"""The edge's decision rules: each fixed before the first sample and deciding every sample on its
own from edge-only information, so the same decisions come whatever the batch.

* ``router``: the family's router on the sample's edge inputs, offloading when its score reaches
  the threshold calibrated on validation (results.json curve ``router_<family>_calibrated``);
* ``entropy``: normalised entropy of the local softmax against its threshold calibrated on
  validation the same way (curve ``entropy_calibrated``);
* either of those two with a guarantee (``core.guarantees``): the threshold chosen on validation
  by Learn-then-Test instead (curves ``router_<family>_guaranteed``, ``entropy_guaranteed``);
  the accuracy-drop guarantee decides with the family's one score or its router at the
  reference budget, as results.json's curve does, whatever the target;
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
from ddnn_jax.core.families import calibrated, curve_name, guaranteed, reference_row
from ddnn_jax.core.guarantees import ACCURACY_DROP, Guarantee, guaranteed_threshold
from ddnn_jax.core.labels import correctness
from ddnn_jax.core.mechanisms import (
    RANDOM,
    REFERENCE_TARGET,
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
    level: float  # the curve's point it is: the target, or a guarantee's allowed accuracy drop
    certified_bound: float | None = None  # what a guaranteed threshold certifies


def _threshold(val_scores, target: float, inputs: EdgeInputs, guarantee: Guarantee | None):
    """The calibrated threshold, or the guaranteed one and its certified bound."""
    if guarantee is None:
        return float(calibrated_thresholds(val_scores, [target])[0]), None
    val = inputs.outputs["val"]
    c = correctness(val.local_logits, val.cloud_logits, val.labels)
    certified = guaranteed_threshold(
        val_scores, target, (np.asarray(c.local_correct), np.asarray(c.cloud_correct)), guarantee
    )
    return certified.threshold, certified.bound


def _curve(name: str, guarantee: Guarantee | None) -> str:
    return calibrated(name) if guarantee is None else guaranteed(name)


def build_rule(
    inputs: EdgeInputs, mechanism: str, target: float, family: str, guarantee: Guarantee | None = None
) -> Rule:
    """The rule of ``mechanism`` at local rate ``target`` for the evaluated images.

    Args:
      inputs: the evaluated images and the run's outputs (validation calibrates the thresholds).
      mechanism: one of ``core.mechanisms.edge_mechanisms()``.
      target: L0, the local rate the rule was calibrated for.
      family: the router family (mechanism 'router' only).
      guarantee: deploy a guaranteed threshold (router and deployable rules only).
    """
    if mechanism == ROUTER:
        return _router_rule(inputs, target, family, guarantee)
    if mechanism in deployable_rules():
        return _score_rule(inputs, mechanism, target, guarantee)
    if mechanism == RANDOM:
        return _planned(_random_plan(inputs, target), mechanism, target)
    return _planned(_oracle_plan(inputs, target), mechanism, target)


def _level(target: float, guarantee: Guarantee | None) -> float:
    return guarantee.epsilon if guarantee is not None and guarantee.kind == ACCURACY_DROP else target


def _score_rule(inputs: EdgeInputs, mechanism: str, target: float, guarantee: Guarantee | None) -> Rule:
    """A score of the local logits against its threshold chosen on validation."""
    rule = decision_rule(mechanism)
    val_scores = rule.offload_scores(inputs.outputs["val"].local_logits)
    threshold, bound = _threshold(val_scores, target, inputs, guarantee)
    decide = lambda index, logits, z, x: rule.offload_scores(logits) >= threshold
    reference = decide(None, inputs.reference.local_logits, None, None)
    return Rule(decide, reference, _curve(mechanism, guarantee), threshold, _level(target, guarantee), bound)


def _planned(plan: np.ndarray, mechanism: str, target: float) -> Rule:
    """A rule that reads each sample's decision from a plan made before the stream."""
    return Rule(lambda index, logits, z, x: plan[index], plan, mechanism, None, target)


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


def _router_rule(inputs: EdgeInputs, target: float, family_name: str, guarantee: Guarantee | None) -> Rule:
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
    if guarantee is not None and guarantee.kind == ACCURACY_DROP:
        g = reference_row(router.objective, targets, REFERENCE_TARGET)
    if guarantee is None:
        threshold, bound = float(record.decision_thresholds[g]), None
    else:
        val_scores = read_family_scores(family)["val"]
        threshold, bound = _threshold(val_scores[min(g, len(val_scores) - 1)], target, inputs, guarantee)
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
    curve = _curve(curve_name(family_name), guarantee)
    return Rule(decide, reference, curve, threshold, _level(target, guarantee), bound)
