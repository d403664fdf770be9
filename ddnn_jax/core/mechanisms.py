"""The offloading mechanisms by name, and the budgets every analysis shares.

One registry of budget-matched decision rules: evaluate draws a curve for each, the report plots
and tabulates each, and the edge deploys each rule marked ``calibrated``. A new rule is one
:class:`DecisionRule` and one :func:`register_rule` call; nothing else names it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.core.budgets import REFERENCE_TARGET
from ddnn_jax.core.decisions import (
    keep_top,
    local_counts,
    max_probability,
    order_by_priority,
    top2_margin,
)
from ddnn_jax.core.labels import normalized_entropy

HEADLINE_TARGETS = (0.3, REFERENCE_TARGET, 0.7)  # the budgets tables and the study report quote
# L0 grid of the rule curves: every 5 points, and the reference budget
RULE_TARGETS = tuple(sorted({round(i * 0.05, 2) for i in range(21)} | {REFERENCE_TARGET}))
STREAM_RANDOM_RULE = 200  # fold_in stream of the run seed for the random baseline

RANDOM, ENTROPY = "random", "entropy"
ORACLE, ROUTER = "oracle", "router"
CLOUD_ONLY, EDGE_ONLY = "cloud_only", "edge_only"

# (local_logits [N, C], key) -> [N] keep-local priority: higher is kept local first
Priority = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class DecisionRule:
    """A budget-matched rule: it ranks samples by a priority computed from edge-only information
    (the local exit's logits) and keeps the top ``round(L0 * N)`` local.

    Attributes:
      name: the curve's name in results.json and the report.
      priority: (local_logits [N, C], key) -> [N]; higher is kept local first.
      colour: matplotlib colour of its curve.
      calibrated: whether the priority is deterministic, so that a threshold on it calibrated on
        the validation split can be deployed (``ddnn edge --mechanism NAME``) and gets its own
        calibrated curve.
    """

    name: str
    priority: Priority
    colour: str = "tab:purple"
    calibrated: bool = False

    def offload_scores(self, local_logits) -> np.ndarray:
        """[N] score a deployed threshold compares against (offload when >= it), in float64."""
        return -np.asarray(
            self.priority(jnp.asarray(local_logits, jnp.float32), jax.random.key(0)), np.float64
        )


RULES: dict[str, DecisionRule] = {}
RESERVED = (ORACLE, ROUTER, CLOUD_ONLY, EDGE_ONLY)


def register_rule(rule: DecisionRule) -> DecisionRule:
    """Adds a rule to the registry; evaluate, the report and the edge find it from then on.

    Args:
      rule: the rule; its name must be new and not one of the mechanisms that are not rules.
    Returns:
      The rule, so that a module can register at import time with one statement.
    """
    if rule.name in RULES or rule.name in RESERVED:
        raise ValueError(f"a mechanism named '{rule.name}' exists already: choose another name")
    RULES[rule.name] = rule
    return rule


def decision_rule(name: str) -> DecisionRule:
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown decision rule '{name}': choose from {', '.join(RULES)}") from None


def deployable_rules() -> tuple[str, ...]:
    """Rules whose threshold can be calibrated and deployed, in registry order."""
    return tuple(name for name, rule in RULES.items() if rule.calibrated)


def edge_mechanisms() -> tuple[str, ...]:
    """What ``ddnn edge --mechanism`` accepts: the router, the deployable rules, random, oracle."""
    return (ROUTER, *deployable_rules(), RANDOM, ORACLE)


def rule_offload(name: str, local_logits: jax.Array, targets: jax.Array, key: jax.Array) -> jax.Array:
    """[G, N] offload mask of a registered rule at matched budgets."""
    order = order_by_priority(decision_rule(name).priority(local_logits, key))
    return keep_top(order, local_counts(targets, local_logits.shape[0]))


# A uniformly random ranking: every sample is local with probability L0, the count exact.
register_rule(DecisionRule(RANDOM, lambda logits, key: jax.random.uniform(key, logits.shape[:1]), "tab:gray"))
register_rule(
    DecisionRule(ENTROPY, lambda logits, key: -normalized_entropy(logits), "tab:orange", calibrated=True)
)
register_rule(DecisionRule("max_prob", lambda logits, key: max_probability(logits), "tab:olive"))
register_rule(DecisionRule("margin", lambda logits, key: top2_margin(logits), "tab:brown"))
