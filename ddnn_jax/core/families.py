"""Router families as values: what a router can read (input kinds) and the families ``ddnn run``
trains (variants), each one entry in a registry that the route, evaluate and report stages read.

Adding an input kind is one ``InputKind`` in ``INPUT_KINDS`` (and its array in
``router_net.raw_inputs``); adding a study variant is one ``Family`` in ``FAMILIES``.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class InputKind:
    """What a router reads from the edge."""

    name: str  # as spelled on the command line and in RouterConfig.inputs
    reads: str  # the edge array it is built from: 'logits', 'features' (z) or 'images' (x)
    confidence_extras: bool = False  # logits followed by the top-2 margin and normalised entropy
    cnn: bool = False  # a small CNN in front of the MLP (feature maps and images)

    @property
    def needs_features(self) -> bool:
        return self.reads == "features"

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
        InputKind("features", "features"),  # z through the MLP
        InputKind("features-cnn", "features", cnn=True),
        InputKind("images", "images", cnn=True),
    )
}
LABEL_KINDS = ("cost", "oracle")  # what a per-target ('grid') router classifies
# What a one-score router regresses: the benefit B = C_L - C_R (probabilities), or the gain
# cloud_correct - local_correct (correctness, -1/0/1), whose conditional mean is the ideal order.
SCORE_KINDS = ("benefit", "gain")
OBJECTIVES = ("grid", "score")  # one router per target, or one score thresholded for every target


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


@dataclasses.dataclass(frozen=True)
class Family:
    """A router family of ``ddnn run``: how it differs from the default router, and the studies
    (figure, legend label) it takes part in."""

    name: str  # its directory under routers/
    inputs: str  # a key of INPUT_KINDS
    labels: str = "cost"  # LABEL_KINDS for the grid objective, SCORE_KINDS for the score
    objective: str = "grid"  # a key of OBJECTIVES
    depth: int = 5  # Dense layers, a key of router_net.DEPTH_PRESETS
    dropout_rate: float | None = None  # None: RouterConfig's default
    grid: str = "full"  # 'full': the run's grid; 'reference': L0 = 0.54 only
    ablation: bool = False  # part of the oracle-label, depth and dropout studies (--no-ablations)
    studies: tuple[tuple[str, str], ...] = ()  # (study, label in its figure)

    @property
    def curve(self) -> str:
        return curve_name(self.name)

    @property
    def kind(self) -> InputKind:
        return INPUT_KINDS[self.inputs]


FAMILIES: tuple[Family, ...] = (
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
)


def study(name: str) -> dict[str, str]:
    """The variants of one study in registry order: legend label -> curve name."""
    return {label: f.curve for f in FAMILIES for s, label in f.studies if s == name}
