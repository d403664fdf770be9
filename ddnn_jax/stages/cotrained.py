"""The co-trained router of a run (``core.variants.cotrain``) written out as a router family, so
that evaluate, report, the edge and study treat it like any other: ``routers/cotrain/`` or
``routers/cotrain-joint/``, made by collect from the best epoch's weights and the outputs it
has just written."""

from __future__ import annotations

import functools

import jax
import numpy as np

from ddnn_jax.core.decisions import calibrated_thresholds
from ddnn_jax.core.labels import benefit_thresholds, correctness
from ddnn_jax.core.router_net import build_router, edge_inputs
from ddnn_jax.core.training import TrainState
from ddnn_jax.core.variants import cotrain
from ddnn_jax.rundir import (
    SPLITS,
    FamilyDir,
    FamilyRecord,
    RunDir,
    RunRecord,
    SplitOutputs,
    checkpoints,
    outputs_fingerprint,
    write_family,
)
from ddnn_jax.stages.route import config_record


def write_cotrained_family(
    run: RunDir, record: RunRecord, state: TrainState, outputs: dict[str, SplitOutputs]
) -> FamilyDir:
    """The router inside ``state`` (the run's best epoch) as the family of its mode: its scores
    on every split's local logits, thresholds calibrated on validation, its weights."""
    mode = record.train.cotrain_router
    assert mode is not None, "a run with a co-trained router"
    config = cotrain.ROUTER
    variables = {"params": state.params["router"], "batch_stats": state.batch_stats["router"]}
    score = jax.jit(functools.partial(build_router(config).apply, train=False))
    raw = {s: edge_inputs(config.kind, outputs[s].local_logits, None, None) for s in SPLITS}
    scores = {s: np.asarray(score(variables, raw[s]), np.float32)[None] for s in SPLITS}
    train = outputs["train"]
    c_train = correctness(train.local_logits, train.cloud_logits, train.labels)
    targets = np.asarray(config.targets, np.float32)
    width = raw["train"].shape[-1]
    family = FamilyRecord(
        config=config_record(config),
        made_from=outputs_fingerprint(outputs),
        outputs_epoch=train.epoch,
        benefit_thresholds=np.asarray(benefit_thresholds(c_train.benefit, targets)).tolist(),
        decision_thresholds=calibrated_thresholds(scores["val"], targets).tolist(),
        best_epoch=[train.epoch],  # the DDNN's: the router is selected with it
        epochs_run=[record.train.epochs],
        quality="none: selected with the DDNN's best epoch",
        train_quality=[[]],
        val_quality=[[]],
        input_shape=[width],
        input_mean=[0.0] * width,  # unstandardised: the router's first batch norm scales them
        input_std=[1.0] * width,
        seconds={"compile": 0.0, "train": 0.0},  # inside the DDNN's training
        backend=jax.default_backend(),
    )
    stacked = jax.tree.map(lambda leaf: np.asarray(leaf)[None], variables)
    save = functools.partial(checkpoints.save_tree, tree=stacked)
    return write_family(run, cotrain.FAMILY[mode], family, scores, save)
