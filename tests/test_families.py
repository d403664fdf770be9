"""Router families as values: the registry decides what ``ddnn run`` trains and what the
report's studies compare."""

import pytest

from ddnn_jax.core.families import (
    FAMILIES,
    INPUT_KINDS,
    Family,
    curve_name,
    input_kind,
    register_family,
    select_families,
    study,
)
from ddnn_jax.jobs.run import RunPlan, default_inputs, planned_families


def test_registry_names_are_unique_and_their_inputs_are_registered():
    assert all(name == f.name and f.inputs in INPUT_KINDS for name, f in FAMILIES.items())
    assert len({f.curve for f in FAMILIES.values()}) == len(FAMILIES)
    with pytest.raises(ValueError, match="exists already"):
        register_family(Family("logits", "logits"))
    with pytest.raises(ValueError, match="clashes"):
        register_family(Family("logits_score", "logits"))  # the curve of logits-score
    with pytest.raises(ValueError, match="unknown router input"):
        register_family(Family("mine", "pixels"))
    assert "mine" not in FAMILIES


def test_input_kinds_say_what_they_read():
    assert not input_kind("logits").needs_features and not input_kind("logits").high_dimensional
    assert input_kind("logits+").confidence_extras
    assert input_kind("features").needs_features and not input_kind("features").cnn
    assert input_kind("features-cnn").needs_features and input_kind("features-cnn").cnn
    assert input_kind("images").needs_images and input_kind("images").high_dimensional
    with pytest.raises(ValueError, match="unknown router input 'pixels'"):
        input_kind("pixels")


def test_curve_names():
    assert curve_name("logits+") == "router_logits_plus"
    assert curve_name("features-cnn") == "router_features_cnn"
    assert curve_name("logits-dropout0.1") == "router_logits_dropout0.1"


def test_studies_list_their_variants_in_order():
    assert list(study("depth")) == ["5 layers", "3 layers", "8 layers"]
    assert study("labels") == {"cost labels": "router_logits", "oracle labels": "router_logits_oracle"}
    assert list(study("dropout").values()) == [f"router_logits_dropout{p}" for p in (0.0, 0.1, 0.2, 0.6)]
    assert list(study("score").values()) == [
        "router_logits",
        "router_logits_score",
        "router_logits_score_gain",
    ]


def test_the_plan_picks_families_by_input_and_ablation():
    plan = RunPlan(inputs=("logits", "features"), targets=(0.2, 0.5), heavy_targets=(0.5,))
    families = planned_families(plan)
    assert set(families) == {
        "logits",
        "logits-score",
        "features",
        "logits-oracle",
        "logits-score-gain",
        "logits-depth3",
        "logits-depth8",
        *(f"logits-dropout{p}" for p in (0.0, 0.1, 0.2, 0.6)),
    }
    assert families["logits"].targets == (0.2, 0.5) and families["logits-oracle"].labels == "oracle"
    assert families["features"].targets == (0.5,) and families["features"].max_epochs == plan.heavy_max_epochs
    assert families["logits-depth3"].targets == (0.54,) and families["logits-depth3"].hidden == (128, 64)
    assert families["logits-dropout0.6"].dropout_rate == 0.6
    score = families["logits-score"]
    assert (score.objective, score.labels, score.targets, score.models) == ("score", "benefit", (0.2, 0.5), 1)
    assert families["logits-score-gain"].labels == "gain"
    without = planned_families(RunPlan(inputs=("logits+",), ablations=True))
    assert set(without) == {"logits+"}  # the ablations are studies of the logits router
    assert set(planned_families(RunPlan(inputs=("logits",), ablations=False))) == {"logits", "logits-score"}


def test_variants_train_only_when_named():
    variants = {f.name for f in select_families(("variants",))}
    assert variants == {f.name for f in FAMILIES.values() if not f.default} and "logits-wbce" in variants
    assert not variants & set(planned_families(RunPlan()))  # a plain run trains none of them
    assert {f.name for f in select_families(("all",))} == set(FAMILIES)
    logits_only = RunPlan(inputs=("logits",), ablations=False, families=("variants", "logits-hybrid"))
    planned = planned_families(logits_only)
    assert "logits-hybrid" in planned and "logits-wbce" in planned  # named, so its input is taken
    assert "logits" not in planned  # the default set was not asked for
    assert planned["logits-focal"].loss == "focal" and planned["logits-wbce"].labels == "balanced"
    assert (planned["logits-defer"].objective, planned["logits-defer"].loss) == ("score", "defer")
    with pytest.raises(ValueError, match="unknown router family 'nope'"):
        planned_families(RunPlan(families=("nope",)))


def test_cpu_default_leaves_the_cnn_routers_out():
    assert default_inputs() == ("logits", "logits+", "logits-hybrid", "features")
