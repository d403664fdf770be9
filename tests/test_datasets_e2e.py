"""Every stage on the 32x32 colour datasets, through tfds's mock data: train one tiny epoch,
collect, route, evaluate, report. Fashion-MNIST (the real data) covers 28x28 grey images; these
cover three channels, 100 classes and (on CIFAR-10) the router families that read feature maps or
images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ddnn_jax.common.progress import Progress
from ddnn_jax.core.config import TrainConfig
from ddnn_jax.core.families import calibrated, curve_name
from ddnn_jax.core.mechanisms import ENTROPY, decision_rule
from ddnn_jax.core.router_net import RouterConfig
from ddnn_jax.data import DATASETS, prepare
from ddnn_jax.jobs.training import run_training
from ddnn_jax.rundir import RunDir, read_family, read_outputs, read_run_record
from ddnn_jax.stages.collect import collect
from ddnn_jax.stages.evaluate import evaluate
from ddnn_jax.stages.report import report
from ddnn_jax.stages.route import route

CLASSES = {"cifar10": 10, "cifar100": 100, "svhn_cropped": 10}
EXAMPLES = 320  # per official split of the mock data
QUIET = Progress(quiet=True)
TINY_ROUTER = RouterConfig(targets=(0.3, 0.54), hidden=(16,), conv_channels=(8,), max_epochs=2)


@pytest.fixture
def mock_tfds(monkeypatch):
    """tfds's generated examples in place of downloads; validation held out as 10 %."""
    monkeypatch.setattr(prepare, "_check_network", lambda *_: None)  # mock data needs no network
    for name, policy in list(DATASETS.items()):
        monkeypatch.setitem(DATASETS, name, dataclasses.replace(policy, validation_size=0.1))
    with tfds.testing.mock_data(num_examples=EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def _trained(tmp_path, dataset: str, with_features: bool = False) -> RunDir:
    config = TrainConfig(
        dataset=dataset,
        data_dir=str(tmp_path / "tfds"),
        download=True,
        epochs=1,
        batch_size=32,
        limit_train=128,
        eval_batch_size=160,
        local_weight="0.5",
    )
    run = RunDir(tmp_path / "run")
    run_training(config, run, progress=QUIET)
    collect(run, with_features=with_features, progress=QUIET)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(CLASSES))
def test_a_tiny_run_goes_through_every_stage(tmp_path, mock_tfds, dataset):
    classes = CLASSES[dataset]
    run = _trained(tmp_path, dataset, with_features=dataset == "cifar10")
    record = read_run_record(run)
    assert record.num_classes == classes and record.image_shape == (32, 32, 3) and len(record.mean) == 3
    test = read_outputs(run)["test"]
    assert test.local_logits.shape == test.cloud_logits.shape == (EXAMPLES, classes)

    family = route(run, TINY_ROUTER, progress=QUIET)
    assert len(read_family(family).input_mean) == classes  # the router reads C logits
    results = evaluate(run)
    # entropy normalised by log C: brute force on the test logits
    p = np.exp(test.local_logits - test.local_logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    entropy = -(p * np.log(p)).sum(-1) / np.log(classes)
    np.testing.assert_allclose(decision_rule(ENTROPY).offload_scores(test.local_logits), entropy, atol=1e-5)
    assert entropy.min() >= 0 and entropy.max() <= 1
    router = results["curves"][calibrated(curve_name("logits"))]
    assert [point["target"] for point in router] == [0.3, 0.54]
    assert abs(router[0]["local_rate"] - 0.3) < 0.1  # calibrated on validation, measured on test

    text = report(run).read_text()
    assert "router_logits_calibrated" in text
    assert run.figure("6.2").stat().st_size > 10_000
    if dataset == "cifar10":
        _routers_on_feature_maps_and_images(run)


def _routers_on_feature_maps_and_images(run: RunDir) -> None:
    """The families that read z or x, trained through the route stage and evaluated."""
    inputs = ("features", "features-cnn", "images")
    for kind in inputs:
        family = route(run, dataclasses.replace(TINY_ROUTER, inputs=kind), progress=QUIET)
        record = read_family(family)
        assert family.name == kind and len(record.best_epoch) == 2
        # standardised per channel: z has the edge's 32, an image its 3
        assert np.size(record.input_mean) == (32 if kind.startswith("features") else 3)
    results = evaluate(run)
    for kind in inputs:
        points = results["curves"][calibrated(curve_name(kind))]
        assert len(points) == 2 and all(0 <= point["accuracy"] <= 1 for point in points)
