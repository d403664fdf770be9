"""The learned offloading router ("Optimized Rule"): its config, the network and the inputs it
reads, from a split's collected outputs or from what the edge holds; ``router_training`` trains it.
'grid' routers are one binary classifier per local-rate target; a 'score' router is one regressor of
how much offloading a sample helps, thresholded per target at validation quantiles."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.core.decisions import top2_margin
from ddnn_jax.core.families import INPUT_KINDS, OBJECTIVES, InputKind, input_kind
from ddnn_jax.core.labels import normalized_entropy
from ddnn_jax.core.mechanisms import REFERENCE_TARGET
from ddnn_jax.core.meta import labelling
from ddnn_jax.core.models import batch_norm, conv3x3, dense
from ddnn_jax.core.outputs import SplitOutputs
from ddnn_jax.core.router_losses import RouterLoss, router_loss
from ddnn_jax.core.seeds import seed_problem

# 'train': the training split's outputs; 'val': the validation split's, cross-fitted on its
# folds (core.variants.valfit); 'oof': the training split's out-of-fold outputs
# (core.variants.out_of_fold)
FIT_SPLITS = ("train", "val", "oof")
# The grid keeps a float per target and epoch of history, allocated up front: a bound on the
# epochs bounds that memory (early stopping ends far sooner).
MAX_EPOCHS = 10_000
DEFAULT_TARGETS = (0.1, 0.2, 0.3, 0.4, 0.5, REFERENCE_TARGET, 0.6, 0.7, 0.8, 0.9)
# Hidden widths of the thesis's depth ablation, by number of Dense layers (the output included).
DEPTH_PRESETS = {3: (128, 64), 5: (256, 128, 64, 32), 8: (512, 256, 256, 128, 128, 64, 32)}


@dataclasses.dataclass(frozen=True)
class RouterConfig:
    """One router family: input kind, labels, architecture and training, for a grid of targets."""

    inputs: str = "logits"  # a key of families.INPUT_KINDS
    # a key of meta.LABELLINGS that fits the objective: grid 'cost' (B >= B*), 'oracle'
    # (correctness first), ...; score 'benefit' (regress B) or 'gain'
    labels: str = "cost"
    # grid: one router per target; score: one router, calibrated at each target
    targets: tuple[float, ...] = DEFAULT_TARGETS
    hidden: tuple[int, ...] = DEPTH_PRESETS[5]  # Dense widths before the output unit
    conv_channels: tuple[int, ...] = (32, 64)  # conv blocks in front of the MLP (CNN kinds only)
    dropout_rate: float = 0.1  # after each hidden ReLU; the thesis used 0 to 0.2
    batch_size: int = 256
    max_epochs: int = 40
    learning_rate: float = 1e-3  # Adam
    weight_decay: float = 1e-4  # L2 added to the gradient, as PyTorch's Adam(weight_decay=) does
    plateau_factor: float = 0.5  # learning-rate factor when validation quality stalls
    plateau_patience: int = 3  # epochs
    early_stopping_patience: int = 8  # epochs without a new best before a target stops
    eval_batch_size: int = 2048
    seed: int = 0
    conv: str = "auto"  # convolution implementation of the CNN kinds (models.CONV_CHOICES)
    objective: str = "grid"  # families.OBJECTIVES
    loss: str | None = None  # a key of router_losses.LOSSES that fits the objective; None: its default
    focal_gamma: float = 2.0  # the focal loss's exponent (loss 'focal' only)
    # whose meta-data the routers learn (FIT_SPLITS; grid objective only for the last two)
    fit_split: str = "train"
    # a learned bottleneck of the run the family offloads through: the cloud's correctness
    # behind it, and byte_cost (lambda, in benefit per kB) times each sample's entropy-coded
    # payload taken off its benefit (the transmission cost of offloading it)
    bottleneck: str | None = None
    byte_cost: float = 0.0

    @property
    def kind(self) -> InputKind:
        return INPUT_KINDS[self.inputs]

    @property
    def router_loss(self) -> RouterLoss:
        return router_loss(self.loss, self.objective)

    @property
    def models(self) -> int:
        """Routers trained: one per target, or one (a score, or a router with the target as input)."""
        return len(self.targets) if self.objective == "grid" else 1

    @property
    def score_rows(self) -> int:
        """Rows of the family's scores: one per target, or the score's one."""
        return 1 if self.objective == "score" else len(self.targets)

    def check(self) -> None:
        """Raises ValueError naming the first bad field."""
        input_kind(self.inputs)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective '{self.objective}': choose {' or '.join(OBJECTIVES)}")
        labelling(self.labels, self.objective)
        router_loss(self.loss, self.objective)
        if self.objective == "budget" and self.kind.cnn:
            raise ValueError(f"a budget router reads flat inputs: input '{self.inputs}' is a CNN's")
        if self.fit_split not in FIT_SPLITS:
            raise ValueError(f"fit_split '{self.fit_split}': choose {', '.join(FIT_SPLITS)}")
        if self.fit_split != "train" and self.objective != "grid":
            raise ValueError(f"a router fit on '{self.fit_split}' is a grid router: use the grid objective")
        if self.fit_split == "oof" and (self.kind.reads != "logits" or self.kind.from_features is not None):
            raise ValueError("out-of-fold outputs hold logits only: an 'oof' router reads a logits kind")
        if self.focal_gamma < 0:
            raise ValueError(f"focal_gamma {self.focal_gamma} is negative: use 0 (BCE) or more")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"router dropout {self.dropout_rate} is outside [0, 1)")
        for name in ("batch_size", "max_epochs", "early_stopping_patience", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"router {name} must be positive, got {getattr(self, name)}")
        if (problem := seed_problem("--router-seed", self.seed)) is not None:
            raise ValueError(problem)
        if not 0.0 <= self.byte_cost < float("inf"):
            raise ValueError(f"byte_cost must be finite and non-negative, got {self.byte_cost}")
        if self.byte_cost and self.bottleneck is None:
            raise ValueError("byte_cost prices a bottleneck's payload: name the bottleneck (--bottleneck)")
        if self.bottleneck is not None and self.fit_split == "oof":
            raise ValueError(
                "out-of-fold outputs have no bottleneck: fit a bottleneck family on train or val"
            )
        if self.max_epochs > MAX_EPOCHS:
            raise ValueError(f"router max_epochs must be at most {MAX_EPOCHS:,}, got {self.max_epochs:,}")

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RouterConfig:
        """The config a family record was written from (lists back to tuples)."""
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}
        return cls(**values)


class RouterNet(nn.Module):
    """Optional conv blocks (Conv3x3 -> BN -> ReLU -> MaxPool2), then Dense -> BN -> ReLU ->
    Dropout per hidden width, then one output logit (offload when it is >= 0).

    The dropout rate is an argument of the call, not of the module, so that routers that differ
    only in it are one compiled program."""

    hidden: Sequence[int]
    conv_channels: Sequence[int] = ()
    conv: str = "auto"  # models.CONV_CHOICES
    outputs: int = 1  # per sample: [B] for one, [B, outputs] for more (the loss's score folds them)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, dropout_rate: jax.Array | float = 0.0) -> jax.Array:
        for channels in self.conv_channels:
            x = conv3x3(channels, x.shape[-1], conv=self.conv)(x)
            x = nn.relu(batch_norm(train)(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(batch_norm(train)(dense(width, x.shape[-1])(x)))
            if train:
                keep = 1.0 - jnp.asarray(dropout_rate, x.dtype)
                mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
                x = jnp.where(mask, x / keep, 0.0)
        out = dense(self.outputs, x.shape[-1])(x)
        return out[:, 0] if self.outputs == 1 else out


def build_router(config: RouterConfig) -> RouterNet:
    return RouterNet(
        hidden=tuple(config.hidden),
        conv_channels=tuple(config.conv_channels) if config.kind.cnn else (),
        conv=config.conv,
        outputs=config.router_loss.outputs,
    )


def router_scores(config: RouterConfig, outputs: jax.Array) -> jax.Array:
    """The score [N] a router's outputs are thresholded on: its logit, or its loss's fold of
    several outputs."""
    score = config.router_loss.score
    return outputs if score is None else score(outputs)


def router_flops(config: RouterConfig, input_shape: Sequence[int]) -> int:
    """FLOPs (two per multiply-add) of one sample through the router's Dense layers, from an
    input of ``input_shape``; batch norm, ReLU and a CNN kind's convolutions are not counted."""
    widths = [int(np.prod(input_shape)), *config.hidden, config.router_loss.outputs]
    return sum(2 * a * b for a, b in zip(widths[:-1], widths[1:], strict=True))


def raw_inputs(kind: InputKind, outputs: SplitOutputs, images: np.ndarray | None) -> np.ndarray:
    """The router's input array for one split, before standardisation.

    Args:
      kind: what the router reads.
      outputs: the split's collected outputs (with ``features`` for the feature kinds).
      images: the split's uint8 images (image kinds only).
    """
    if kind.needs_features:
        assert outputs.features is not None, "collect --features"
    return edge_inputs(kind, outputs.local_logits, outputs.features, images)


def edge_inputs(
    kind: InputKind, local_logits: np.ndarray, features: np.ndarray | None, images: np.ndarray | None
) -> np.ndarray:
    """What a router of ``kind`` reads, from what the edge has: local logits [N, C], features z
    and uint8 images (each only where the kind reads it); float32, before standardisation."""
    return np.asarray(traced_edge_inputs(kind, local_logits, features, images), np.float32)


def traced_edge_inputs(kind: InputKind, local_logits: Any, features: Any, images: Any) -> jax.Array:
    """``edge_inputs`` as a traceable function, so that an exported edge computes them in its graph
    (images in pixel units 0..255, uint8 or float)."""
    if kind.reads == "logits":
        logits = jnp.asarray(local_logits, jnp.float32)
        if kind.confidence_extras:
            extra = jnp.stack([top2_margin(logits), normalized_entropy(logits)], axis=-1)
            logits = jnp.concatenate([logits, extra], axis=-1)
        if kind.from_features is not None:
            assert features is not None
            logits = jnp.concatenate([logits, jnp.asarray(kind.from_features(features))], axis=-1)
        return logits
    if kind.reads == "features":
        assert features is not None
        return jnp.asarray(features, jnp.float32)
    assert images is not None
    return jnp.asarray(images, jnp.float32) / 255.0
