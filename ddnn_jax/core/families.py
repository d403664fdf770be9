"""Router families as values: what a router can read (input kinds) and the families ``ddnn run``
trains (variants), each one entry in a registry that the route, evaluate and report stages read.

Adding an input kind is one ``InputKind`` in ``INPUT_KINDS`` (a logits kind may append values
computed from z, ``from_features``); adding a family is one ``Family`` and one
``register_family`` call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from ddnn_jax.core.variants import hybrid


@dataclasses.dataclass(frozen=True)
class InputKind:
    """What a router reads from the edge."""

    name: str  # as spelled on the command line and in RouterConfig.inputs
    reads: str  # the edge array it is built from: 'logits', 'features' (z) or 'images' (x)
    confidence_extras: bool = False  # logits followed by the top-2 margin and normalised entropy
    cnn: bool = False  # a small CNN in front of the MLP (feature maps and images)
    # logits kinds: features z [N, h, w, c] -> [N, k] values appended to the logits
    from_features: Callable[[np.ndarray], np.ndarray] | None = None
    extra_flops: Callable[[tuple[int, ...]], int] | None = None  # of from_features, per sample

    @property
    def needs_features(self) -> bool:
        return self.reads == "features" or self.from_features is not None

    @property
    def needs_images(self) -> bool:
        return self.reads == "images"

    @property
    def high_dimensional(self) -> bool:
        """Costs far more per epoch than the logits: ``ddnn run`` gives it a shorter grid."""
        return self.reads != "logits"


INPUT_KINDS: dict[str, InputKind] = {
    kind.name: kind
    for kind in (
        InputKind("logits", "logits"),  # the thesis's final choice
        InputKind("logits+", "logits", confidence_extras=True),
        InputKind(
            "logits-hybrid", "logits", from_features=hybrid.pooled_features, extra_flops=hybrid.pooling_flops
        ),
        InputKind("features", "features"),  # z through the MLP
        InputKind("features-cnn", "features", cnn=True),
        InputKind("images", "images", cnn=True),
    )
}
# one router per target; one score thresholded for every target; one router with the target as
# an input, thresholded per target
OBJECTIVES = ("grid", "score", "budget")


def input_kind(name: str) -> InputKind:
    """The registered input kind, or a ValueError listing them."""
    if name not in INPUT_KINDS:
        raise ValueError(f"unknown router input '{name}': choose from {', '.join(INPUT_KINDS)}")
    return INPUT_KINDS[name]


def curve_name(family: str) -> str:
    """A family's curve in results.json: 'logits+' -> 'router_logits_plus'."""
    return "router_" + family.replace("+", "_plus").replace("-", "_")


def calibrated(curve: str) -> str:
    """The curve of a router's decisions at thresholds calibrated on validation."""
    return f"{curve}_calibrated"


def guaranteed(curve: str) -> str:
    """The curve of a mechanism's decisions at guaranteed thresholds (core.guarantees)."""
    return f"{curve}_guaranteed"


def reference_row(objective: str, targets, reference_target: float) -> int:
    """The score row that stands for a family where one score is needed: its one score, or the
    router of the target nearest the reference budget."""
    if objective == "score":
        return 0
    return int(min(range(len(targets)), key=lambda g: abs(targets[g] - reference_target)))


@dataclasses.dataclass(frozen=True)
class Family:
    """A router family of ``ddnn run``: how it differs from the default router, and the studies
    (figure, legend label) it takes part in."""

    name: str  # its directory under routers/
    inputs: str  # a key of INPUT_KINDS
    labels: str = "cost"  # a key of meta.LABELLINGS that fits the objective
    objective: str = "grid"  # a key of OBJECTIVES
    loss: str | None = None  # a key of router_losses.LOSSES; None: the objective's default
    depth: int = 5  # Dense layers, a key of router_net.DEPTH_PRESETS
    dropout_rate: float | None = None  # None: RouterConfig's default
    grid: str = "full"  # 'full': the run's grid; 'reference': L0 = 0.54 only
    ablation: bool = False  # part of the oracle-label, depth and dropout studies (--no-ablations)
    # in every 'ddnn run'; False: a variant trained when named (--families NAME, or 'variants')
    default: bool = True
    options: tuple[tuple[str, Any], ...] = ()  # other RouterConfig fields, (name, value)
    studies: tuple[tuple[str, str], ...] = ()  # (study, label in its figure)

    @property
    def curve(self) -> str:
        return curve_name(self.name)

    @property
    def kind(self) -> InputKind:
        return INPUT_KINDS[self.inputs]


_BUILT_IN: tuple[Family, ...] = (
    Family(
        "logits",
        "logits",
        studies=(("labels", "cost labels"), ("depth", "5 layers"), ("logits+", "logits"), ("score", "grid")),
    ),
    Family("logits-score", "logits", labels="benefit", objective="score", studies=(("score", "score: B"),)),
    Family("logits+", "logits+", studies=(("logits+", "logits+"),)),
    Family("features", "features"),
    Family("features-cnn", "features-cnn", studies=(("images", "features (CNN)"),)),
    Family("images", "images", studies=(("images", "images (CNN)"),)),
    Family("logits-oracle", "logits", labels="oracle", ablation=True, studies=(("labels", "oracle labels"),)),
    Family(
        "logits-score-gain",
        "logits",
        labels="gain",
        objective="score",
        ablation=True,
        studies=(("score", "score: gain"),),
    ),
    Family(
        "logits-depth3", "logits", depth=3, grid="reference", ablation=True, studies=(("depth", "3 layers"),)
    ),
    Family(
        "logits-depth8", "logits", depth=8, grid="reference", ablation=True, studies=(("depth", "8 layers"),)
    ),
    *(
        Family(
            f"logits-dropout{rate}",
            "logits",
            dropout_rate=rate,
            grid="reference",
            ablation=True,
            studies=(("dropout", f"p={rate}"),),
        )
        for rate in (0.0, 0.1, 0.2, 0.6)
    ),
    # Variants that try to close the gap to the oracle (core.variants), trained when named.
    Family("logits-wbce", "logits", labels="balanced", default=False),
    Family("logits-focal", "logits", loss="focal", default=False),
    Family("logits-border", "logits", labels="border", default=False),
    Family("logits-sep", "logits", labels="separable", default=False),
    Family("logits-costweighted", "logits", labels="cost-weighted", default=False),
    Family("logits-defer", "logits", labels="benefit", objective="score", loss="defer", default=False),
    Family("logits-hybrid", "logits-hybrid", default=False),
    Family("logits-budget", "logits", objective="budget", default=False),
    Family("logits-valfit", "logits", options=(("fit_split", "val"),), default=False),
    Family("logits-oof", "logits", options=(("fit_split", "oof"),), default=False),
)
FAMILIES: dict[str, Family] = {}
FAMILY_SETS = ("default", "variants", "all")  # what --families accepts besides family names


def register_family(family: Family) -> Family:
    """Adds a family to the registry (``ddnn run --families NAME`` trains it); returns it."""
    if family.name in FAMILIES:
        raise ValueError(f"a router family named '{family.name}' exists already: choose another name")
    if family.name in FAMILY_SETS or family.curve in {f.curve for f in FAMILIES.values()}:
        raise ValueError(f"router family name '{family.name}' clashes with another: choose another name")
    input_kind(family.inputs)
    FAMILIES[family.name] = family
    return family


def select_families(names: tuple[str, ...] | None) -> list[Family]:
    """The registered families named (registry order), where 'default' is every family of a
    plain ``ddnn run``, 'variants' every other one and 'all' both; None: 'default'."""
    wanted = set(names or ("default",))
    unknown = wanted - set(FAMILIES) - set(FAMILY_SETS)
    if unknown:
        raise ValueError(
            f"unknown router family '{sorted(unknown)[0]}': choose from {', '.join(FAMILY_SETS)}, "
            + ", ".join(FAMILIES)
        )
    picked = lambda f: (
        f.name in wanted or "all" in wanted or ("default" if f.default else "variants") in wanted
    )
    return [f for f in FAMILIES.values() if picked(f)]


for _family in _BUILT_IN:
    register_family(_family)


def study(name: str) -> dict[str, str]:
    """The variants of one study in registry order: legend label -> curve name."""
    return {label: f.curve for f in FAMILIES.values() for s, label in f.studies if s == name}
