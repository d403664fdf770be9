"""A learned bottleneck's artefact, ``RUN_DIR/bottlenecks/NAME/``: its record, its variables
and the cloud exit's logits through it on every split, written whole or not at all."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.core.bottleneck import BottleneckConfig, BottleneckedCloud, cloud_like, from_codes, to_codes
from ddnn_jax.core.training import build_model
from ddnn_jax.rundir import checkpoints
from ddnn_jax.rundir.files import atomic_dir, load_npz, read_json, save_npz, write_json
from ddnn_jax.rundir.layout import SPLITS, BottleneckDir, RunDir
from ddnn_jax.rundir.records import read_run_record
from ddnn_jax.rundir.schema import build

BOTTLENECK_VERSION = 1  # of bottleneck.json's layout


@dataclasses.dataclass(frozen=True)
class BottleneckRecord:
    """bottleneck.json: what was trained, from which run, and how well."""

    config: dict[str, Any]  # core.bottleneck.BottleneckConfig as a dict
    z_shape: list[int]  # (H, W, C) of the edge features it encodes
    code_shape: list[int]  # (h, w, k) of one sample's codes
    payload_bytes: int  # one sample's codes, packed
    made_from: str  # checkpoint digest of the run's best epoch: the edge it encodes
    best_epoch: int  # of the fine-tuning, on validation cloud accuracy
    history: list[dict[str, float]]  # per epoch: train_loss, val_accuracy_cloud, seconds
    val_accuracy_cloud: float  # at best_epoch
    version: int = BOTTLENECK_VERSION


def write_bottleneck(
    run: RunDir,
    name: str,
    record: BottleneckRecord,
    cloud_logits: dict[str, np.ndarray],
    coded_bytes: dict[str, np.ndarray],
    variables,
) -> BottleneckDir:
    """Builds the bottleneck's folder beside its final place and renames it in."""
    target = run.bottleneck(name)
    with atomic_dir(target.root) as staging:
        built = BottleneckDir(staging)
        write_json(built.record, dataclasses.asdict(record))
        save_npz(built.cloud_logits, cloud_logits)
        save_npz(built.coded_bytes, coded_bytes)
        checkpoints.save_tree(built.variables, variables)
    return target


def read_bottleneck(bottleneck: BottleneckDir) -> BottleneckRecord:
    """bottleneck.json, or a UsageError saying how to rebuild it."""
    remedy = f"delete {bottleneck.root} and run 'ddnn bottleneck' again"
    value = read_json(bottleneck.record, remedy)
    record = build(BottleneckRecord, value, "bottleneck record", bottleneck.record, remedy)
    if record.version != BOTTLENECK_VERSION:
        found = f"version {record.version}, not {BOTTLENECK_VERSION}"
        raise UsageError(f"{bottleneck.record} is of {found}: {remedy}")
    return record


def read_bottleneck_logits(bottleneck: BottleneckDir) -> dict[str, np.ndarray]:
    """The cloud exit's logits through the bottleneck, by split."""
    return _per_split(bottleneck, bottleneck.cloud_logits)


def read_coded_bytes(bottleneck: BottleneckDir) -> dict[str, np.ndarray]:
    """Each sample's payload on the entropy-coded wire (its length and its coded codes), by split."""
    return _per_split(bottleneck, bottleneck.coded_bytes)


def _per_split(bottleneck: BottleneckDir, path) -> dict[str, np.ndarray]:
    remedy = f"delete {bottleneck.root} and run 'ddnn bottleneck' again"
    if not path.is_file():
        raise UsageError(f"{bottleneck.root} has no {path.name} (made by an older ddnn-jax): {remedy}")
    with load_npz(path) as stored:
        missing = [split for split in SPLITS if split not in stored]
        if missing:
            raise UsageError(f"{path} lacks the {missing[0]} split: {remedy}")
        return {split: stored[split] for split in SPLITS}


class DeployedBottleneck(NamedTuple):
    """A trained bottleneck, live: ``codes`` on the edge, ``logits_of_codes`` in the cloud."""

    name: str
    record: BottleneckRecord
    net: BottleneckedCloud
    variables: Any  # encoder, decoder and the fine-tuned cloud head

    @property
    def bits(self) -> int:
        return self.net.config.bits

    @property
    def code_shape(self) -> tuple[int, int, int]:
        return cast(tuple[int, int, int], tuple(self.record.code_shape))

    def describe(self) -> dict[str, Any]:
        """What the server tells the edge, and the edge checks: the same bottleneck, exactly."""
        return {
            "code_shape": list(self.code_shape),
            "bits": self.bits,
            "digest": checkpoints.tree_digest(self.variables),
        }

    def codes(self, variables, z) -> jax.Array:
        """[N, h, w, k] uint8 codes of edge features z: what the wire carries (pure, to jit)."""
        values = self.net.apply(variables, jnp.asarray(z, jnp.float32), method=self.net.encode)
        return to_codes(cast(jax.Array, values), self.bits)

    def logits_of_codes(self, variables, codes) -> jax.Array:
        """The cloud exit's logits of received codes (pure, to jit)."""
        values = from_codes(jnp.asarray(codes), self.bits)
        return cast(jax.Array, self.net.apply(variables, values, method=self.net.decode_head))


def _complete(run: RunDir, name: str) -> BottleneckDir:
    bottleneck = run.bottleneck(name)
    if not bottleneck.is_complete():
        have = ", ".join(run.bottlenecks()) or "none"
        raise UsageError(f"{run} has no bottleneck '{name}' (it has: {have}): run 'ddnn bottleneck' first")
    return bottleneck


def current_bottleneck(run: RunDir, name: str, checkpoint: str) -> tuple[BottleneckRecord, BottleneckDir]:
    """The run's bottleneck ``name`` and its record, refused when it is missing or was
    fine-tuned on another checkpoint than ``checkpoint`` (the one the outputs come from)."""
    bottleneck = _complete(run, name)
    record = read_bottleneck(bottleneck)
    if record.made_from != checkpoint:
        raise UsageError(
            f"bottleneck {name} was fine-tuned on another checkpoint than {run}'s outputs come "
            f"from: delete {bottleneck.root} and run 'ddnn bottleneck' again"
        )
    return record, bottleneck


def deployed_bottleneck(run: RunDir, name: str) -> DeployedBottleneck:
    """The run's bottleneck ``name``, with the cloud head of the run's architecture."""
    bottleneck = _complete(run, name)
    record = read_bottleneck(bottleneck)
    run_record = read_run_record(run)
    model = build_model(run_record.train, run_record.num_classes)
    net = BottleneckedCloud(BottleneckConfig(**record.config), tuple(record.z_shape), cloud_like(model))
    return DeployedBottleneck(name, record, net, checkpoints.restore_tree(bottleneck.variables))
