"""The meta-dataset a router family trains on: one registry of labellings, each turning the exits'
per-sample correctness into training targets, per-sample loss weights and, optionally, several
candidate routers per target of which validation keeps one.

A labelling is written for one objective. A 'grid' labelling gives 0/1 labels [G, N] (1:
offload) for every split from the thresholds B*(L0), which are L0-quantiles of its benefit over
the training split; a 'score' labelling gives the columns [1, N, 3] (regression target,
local_correct, cloud_correct). ``RouterConfig.labels`` names one. A new labelling is one
:class:`Labelling` and one :func:`register_labelling` call (the code it needs in a module of its
own under ``core.variants``); ``ddnn route --labels NAME`` then takes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ddnn_jax.core.labels import Correctness, benefit_thresholds, cost_labels, oracle_labels
from ddnn_jax.core.variants import balanced, border, budget, cost_weighted, separable


class Candidates(NamedTuple):
    """The routers a grid family trains for its G targets: M >= G models, each serving one target
    with its own per-sample weights; validation keeps one per target."""

    weights: np.ndarray  # [M, N_train] float32, per-sample loss weights
    target_of: np.ndarray  # [M] int, the target index each model serves (sorted, every target)
    values: tuple[float | None, ...]  # [M] the labelling's parameter of each model (border's tau)


# (training split's correctness, its 0/1 labels [G, N], thresholds [G]) -> the fields of
# Candidates, as a plain tuple so that the variant modules need nothing from this one
CandidatesFn = Callable[[Correctness, np.ndarray, np.ndarray], tuple]


def one_per_target(c: Correctness, labels: np.ndarray, thresholds: np.ndarray) -> tuple:
    """One model per target, every sample weighted 1."""
    g, n = labels.shape
    return np.ones((g, n), np.float32), np.arange(g), (None,) * g


def cost_benefit(c: Correctness) -> np.ndarray:
    return np.asarray(c.benefit, np.float32)


@dataclasses.dataclass(frozen=True)
class Labelling:
    """How a family's training targets are made.

    Attributes:
      name: as ``RouterConfig.labels`` and ``--labels`` spell it.
      objective: 'grid' or 'score'.
      labels: grid: (correctness, thresholds [G]) -> 0/1 labels [G, N] of any split (None:
        offload iff ``benefit(c) >= B*(L0)``); score: (correctness, unused) -> the columns
        [1, N, 3].
      benefit: correctness -> [N], what the thresholds B*(L0) are training quantiles of.
      candidates: the models trained per target and their loss weights (grid only).
    """

    name: str
    objective: str
    labels: Callable[[Correctness, np.ndarray], np.ndarray] | None = None
    benefit: Callable[[Correctness], np.ndarray] = cost_benefit
    candidates: CandidatesFn = one_per_target


class MetaSet(NamedTuple):
    """A family's training data besides its inputs."""

    thresholds: np.ndarray  # [G] B*(L0) of the labelling's benefit on the training split
    targets: dict[str, np.ndarray]  # per split: grid [M, N] 0/1 (per model), score [1, N, 3]
    candidates: Candidates  # weights [M, N_train]; grid models per target (score: M = 1)


LABELLINGS: dict[str, Labelling] = {}


def register_labelling(labelling: Labelling) -> Labelling:
    """Adds a labelling to the registry; returns it."""
    if labelling.name in LABELLINGS:
        raise ValueError(f"a labelling named '{labelling.name}' exists already: choose another name")
    if labelling.objective not in ("grid", "score"):
        raise ValueError(f"labelling '{labelling.name}': objective must be grid or score")
    LABELLINGS[labelling.name] = labelling
    return labelling


def labelling(name: str, objective: str) -> Labelling:
    """The labelling ``name``, or a ValueError saying which ones fit the objective (a 'budget'
    router takes the grid labellings that train one router per target)."""
    objective = "grid" if objective == "budget" else objective
    fitting = labellings_for(objective)
    if name not in LABELLINGS or LABELLINGS[name].objective != objective:
        raise ValueError(
            f"labels '{name}' do not fit the {objective} objective: choose {' or '.join(fitting)}"
        )
    return LABELLINGS[name]


def labellings_for(objective: str) -> tuple[str, ...]:
    return tuple(n for n, entry in LABELLINGS.items() if entry.objective == objective)


def grid_labels(entry: Labelling, c: Correctness, thresholds) -> np.ndarray:
    """[G, N] 0/1 labels of one split under a grid labelling."""
    thresholds = np.asarray(thresholds, np.float32)
    if entry.labels is None:
        return np.asarray(cost_labels(entry.benefit(c), thresholds), np.int32)
    return np.asarray(entry.labels(c, thresholds), np.int32)


def meta_set(
    entry: Labelling, per_split: dict[str, Correctness], targets: np.ndarray, budget_input: bool = False
) -> MetaSet:
    """Every split's training targets under ``entry``, its thresholds from the training split.
    With ``budget_input`` (a 'budget' router) the training targets are each sample's benefit
    rank [1, N] and the other splits' their labels at every target [1, G, N]."""
    thresholds = np.asarray(benefit_thresholds(entry.benefit(per_split["train"]), targets))
    if budget_input:
        if entry.candidates is not one_per_target:
            raise ValueError(
                f"labels '{entry.name}' train several routers per target: a budget router is one"
            )
        train_benefit = entry.benefit(per_split["train"])
        columns = {s: grid_labels(entry, c, thresholds)[None] for s, c in per_split.items()}
        columns["train"] = budget.benefit_ranks(train_benefit, train_benefit)[None]
        one = Candidates(np.ones((1, len(train_benefit)), np.float32), np.zeros(1, int), (None,))
        return MetaSet(thresholds, columns, one)
    if entry.objective == "score":
        assert entry.labels is not None, "a score labelling gives its columns"
        columns = {s: np.asarray(entry.labels(c, thresholds), np.float32) for s, c in per_split.items()}
        n = columns["train"].shape[1]
        return MetaSet(
            thresholds, columns, Candidates(np.ones((1, n), np.float32), np.zeros(1, int), (None,))
        )
    labels = {s: grid_labels(entry, c, thresholds) for s, c in per_split.items()}
    weights, target_of, values = entry.candidates(per_split["train"], labels["train"], thresholds)
    candidates = Candidates(np.asarray(weights, np.float32), np.asarray(target_of), tuple(values))
    return MetaSet(thresholds, {s: y[candidates.target_of] for s, y in labels.items()}, candidates)


def _score_columns(target: Callable[[Correctness], np.ndarray]):
    def columns(c: Correctness, thresholds) -> np.ndarray:
        local, cloud = np.asarray(c.local_correct, np.float32), np.asarray(c.cloud_correct, np.float32)
        return np.stack([np.asarray(target(c), np.float32), local, cloud], axis=-1)[None]

    return columns


def _gain(c: Correctness) -> np.ndarray:
    return np.asarray(c.cloud_correct, np.float32) - np.asarray(c.local_correct, np.float32)


for _entry in (
    Labelling("cost", "grid"),  # the thesis: offload iff B >= B*(L0)
    Labelling("oracle", "grid", oracle_labels),  # correctness first, the cost label on ties
    Labelling("balanced", "grid", candidates=balanced.class_balance_weights),
    Labelling("cost-weighted", "grid", candidates=cost_weighted.regret_weights),
    Labelling("border", "grid", candidates=border.without_border),
    Labelling("separable", "grid", benefit=separable.separable_benefit),
    # score: regress the benefit B, or the gain cloud_correct - local_correct (its conditional
    # mean is the ideal order)
    Labelling("benefit", "score", _score_columns(cost_benefit)),
    Labelling("gain", "score", _score_columns(_gain)),
):
    register_labelling(_entry)
