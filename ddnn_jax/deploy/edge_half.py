"""The edge network of a trained run (its own variables only) and what a live run works on: the
images, their labels, and the whole DDNN's in-process outputs the live answers are checked against."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.core.models import feature_shape
from ddnn_jax.core.training import TrainState, build_model, make_predict_fn, predict_in_batches
from ddnn_jax.data import normalize, read_image_folder
from ddnn_jax.rundir import (
    RunDir,
    RunRecord,
    SplitOutputs,
    as_run,
    outputs_fingerprint,
    read_outputs,
    read_run_record,
    restore_best,
    split_images,
)
from ddnn_jax.rundir.checkpoints import state_digest


class EdgeHalf:
    """The edge network of a trained run, its own variables only: uint8 images -> (z, logits)."""

    def __init__(self, record: RunRecord, state: TrainState):
        self.checkpoint = state_digest(state)
        model = build_model(record.train, record.num_classes)
        self.feature_shape = feature_shape(model, record.image_shape)
        self.num_classes = record.num_classes
        edge = ("feature_extractor", "local_classifier")
        self.variables = {  # of the edge modules only
            "params": {k: state.params[k] for k in edge},
            "batch_stats": {k: state.batch_stats[k] for k in edge if k in state.batch_stats},
        }
        mean, std = jnp.asarray(record.mean, jnp.float32), jnp.asarray(record.std, jnp.float32)
        self._apply = jax.jit(lambda v, x: model.apply(v, normalize(x, mean, std), method=model.edge))

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z, local_logits = self._apply(self.variables, images)
        return np.asarray(z), np.asarray(local_logits)


class EdgeInputs(NamedTuple):
    """What the edge works on, and the in-process outputs its live answers are checked against."""

    run: RunDir
    edge: EdgeHalf
    images: np.ndarray  # [N, H, W, C] uint8
    labels: np.ndarray | None  # [N], None for an unlabelled folder
    outputs: dict[str, SplitOutputs]  # the run's collected outputs (validation calibrates)
    reference: SplitOutputs  # the whole DDNN in process on these images (features for a folder)
    test_split: bool  # the run's test split (else a folder of images)

    def first(self, n: int) -> EdgeInputs:
        """The first n images and what goes with them (a stream stopped after n)."""
        labels = None if self.labels is None else self.labels[:n]
        return self._replace(images=self.images[:n], labels=labels, reference=_first(self.reference, n))


def made_from(inputs: EdgeInputs) -> dict[str, str]:
    """What an edge report or sweep was measured on: the run, its outputs and weights, and when."""
    return {
        "run": str(inputs.run),
        "made_from": outputs_fingerprint(inputs.outputs),  # the outputs its rules were calibrated on
        "checkpoint": inputs.edge.checkpoint,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def load_inputs(
    run_dir: RunDir | Path, folder: str | None, limit: int | None, progress: Progress
) -> EdgeInputs:
    """The run's edge half and its test split (or the images of ``folder``), the first ``limit``."""
    run = as_run(run_dir)
    record = read_run_record(run)
    outputs = read_outputs(run)
    _, state, epoch = restore_best(run)
    edge = EdgeHalf(record, state)
    if outputs["test"].checkpoint and outputs["test"].checkpoint != edge.checkpoint:
        raise UsageError(
            f"{run}'s outputs come from other weights than its best checkpoint: run 'ddnn collect'"
        )
    if folder is None:
        images = split_images(run, outputs)["test"][:limit]
        reference = dataclasses.replace(_first(outputs["test"], len(images)), features=None)
        return EdgeInputs(run, edge, images, reference.labels, outputs, reference, True)
    found = read_image_folder(Path(folder), record.image_shape, record.num_classes)
    images, labels = (
        found.images[:limit],
        None if found.labels is None else found.labels[:limit],
    )
    predict = make_predict_fn(build_model(record.train, record.num_classes), record.mean, record.std, True)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    with progress.bar(len(images), "in process", unit="img") as bar:
        local, cloud, z = predict_in_batches(predict, variables, images, record.train.eval_batch_size, bar)
    unknown = np.full(len(images), -1, np.int32)
    reference = SplitOutputs(local, cloud, unknown if labels is None else labels, epoch, z, edge.checkpoint)
    return EdgeInputs(run, edge, images, labels, outputs, reference, False)


def _first(outputs: SplitOutputs, n: int) -> SplitOutputs:
    return dataclasses.replace(
        outputs,
        local_logits=outputs.local_logits[:n],
        cloud_logits=outputs.cloud_logits[:n],
        labels=outputs.labels[:n],
        features=None if outputs.features is None else outputs.features[:n],
    )
