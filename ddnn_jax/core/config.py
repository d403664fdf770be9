"""Configuration of the training stage and its validation."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
from typing import Any

import jax

from ddnn_jax.common.errors import UsageError
from ddnn_jax.core.models import CONV_CHOICES, PRECISIONS
from ddnn_jax.core.seeds import seed_problem
from ddnn_jax.data import check_dataset_name

LOCAL_WEIGHT_MODES = ("per-run", "per-batch")
# Frameworks that train the DDNN (``--backend``); ``jobs.training`` maps each to its trainer.
FRAMEWORKS = ("jax", "torch")
COTRAIN_MODES = ("detached", "joint")  # core.variants.cotrain

# Streams of the run's root key (jax.random.fold_in), one per use, so no key is ever reused.
STREAM_INIT, STREAM_LOCAL_WEIGHT, STREAM_SHUFFLE, STREAM_STEP = range(4)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a joint-training run. Defaults are the thesis's."""

    dataset: str = "fashion_mnist"  # a name in ddnn_jax.data.DATASETS
    epochs: int = 20
    batch_size: int = 128
    local_weight: str = "per-run"  # 'per-run' (w ~ U(0,1) once), 'per-batch', or a fixed w in [0, 1]
    seed: int = 0  # seeds the split, the initialisation, w, shuffling, dropout and augmentation
    data_dir: str | None = None  # tfds data directory; tfds's default when None
    download: bool = False  # let tfds download a dataset that is not prepared
    limit_train: int | None = None  # train on the first N training examples only (quick runs)
    limit_eval: int | None = None  # validate and test on the first N examples of each (quick runs)
    learning_rate: float = 1e-3  # Adam
    plateau_factor: float = 0.5  # learning-rate factor when validation accuracy plateaus
    plateau_patience: int = 2  # epochs without improvement before the factor applies
    dropout_rate: float = 0.2
    edge_channels: int = 32
    local_hidden: int = 64
    cloud_conv_channels: tuple[int, ...] = (64, 128, 256, 256)
    cloud_dense_features: tuple[int, ...] = (256, 64)
    eval_batch_size: int = 1000  # evaluation and collection batch size
    keep_checkpoints: int = 3  # latest epochs kept for resuming (the best one is kept as well)
    conv: str = "auto"  # convolution: 'im2col' (a matmul; fast on CPU), 'xla', or 'auto' (by backend)
    precision: str = "fp32"  # compute dtype: 'fp32', or 'bf16' (parameters, Adam state, loss: fp32)
    framework: str = "jax"  # what trains the DDNN: 'jax', or 'torch' (the reference PyTorch model)
    # An out-of-fold DDNN (core.variants.out_of_fold): trained without this fold of the training
    # split, cut into holdout_folds by the seed. None: the whole training split.
    holdout_fold: int | None = None
    holdout_folds: int = 3
    # A router trained inside the training (core.variants.cotrain): None, 'detached' (it alone
    # learns from its loss) or 'joint' (the edge learns from it too, at cotrain_weight), from
    # the epoch after cotrain_warmup epochs.
    cotrain_router: str | None = None
    cotrain_warmup: int = 5
    cotrain_weight: float = 0.1

    def validate(self) -> None:
        """Raises UsageError naming the first bad field and how to fix it."""
        check_dataset_name(self.dataset)
        if self.epochs <= 0:
            raise UsageError(f"--epochs must be a positive integer, got {self.epochs}")
        if self.batch_size <= 0:
            raise UsageError(f"--batch-size must be a positive integer, got {self.batch_size}")
        if self.limit_train is not None and self.limit_train < self.batch_size:
            raise UsageError(
                f"--limit-train {self.limit_train} is smaller than one batch "
                f"({self.batch_size}): raise it or lower --batch-size"
            )
        if self.limit_eval is not None and self.limit_eval <= 0:
            raise UsageError(f"--limit-eval must be a positive integer, got {self.limit_eval}")
        if (problem := seed_problem("--seed", self.seed)) is not None:
            raise UsageError(problem)
        for flag, value in (("--edge-channels", self.edge_channels), ("--local-hidden", self.local_hidden)):
            if value <= 0:
                raise UsageError(f"{flag} must be a positive integer, got {value}")
        if self.conv not in CONV_CHOICES:
            raise UsageError(f"--conv must be one of {', '.join(CONV_CHOICES)}, got '{self.conv}'")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        parse_local_weight(self.local_weight)
        if self.holdout_fold is not None and not (
            self.holdout_folds >= 2 and 0 <= self.holdout_fold < self.holdout_folds
        ):
            raise UsageError(
                f"holdout fold {self.holdout_fold} of {self.holdout_folds}: "
                "give 2 folds or more and a fold from 0 to their number - 1"
            )
        if self.cotrain_router is not None:
            if self.cotrain_router not in COTRAIN_MODES:
                raise UsageError(
                    f"--cotrain-router must be one of {', '.join(COTRAIN_MODES)}, got '{self.cotrain_router}'"
                )
            if not 0 <= self.cotrain_warmup < self.epochs:
                raise UsageError(
                    f"--warmup {self.cotrain_warmup} leaves the router no epoch of the {self.epochs}: "
                    "give fewer warm-up epochs than --epochs"
                )
            if self.cotrain_weight < 0:
                raise UsageError(f"--cotrain-weight must not be negative, got {self.cotrain_weight}")
            if self.framework != "jax":
                raise UsageError("--cotrain-router trains inside the JAX training: drop --backend torch")
        if self.framework not in FRAMEWORKS:
            raise UsageError(f"--backend must be one of {', '.join(FRAMEWORKS)}, got '{self.framework}'")
        if self.framework == "torch" and (self.precision != "fp32" or self.conv != "auto"):
            flag = "--precision" if self.precision != "fp32" else "--conv"
            raise UsageError(
                f"{flag} sets how JAX computes: --backend torch trains in float32 with PyTorch's own "
                f"convolutions; drop {flag}"
            )


def parse_local_weight(spec: str) -> tuple[str, float | None]:
    """'per-run' | 'per-batch' | number -> (mode, fixed value or None)."""
    if spec in LOCAL_WEIGHT_MODES:
        return spec, None
    try:
        value = float(spec)
    except ValueError:
        raise UsageError(
            f"--local-weight must be 'per-run', 'per-batch' or a number in [0, 1], got '{spec}'"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"--local-weight must lie in [0, 1], got {value}")
    return "fixed", value


def resolve_local_weight(config: TrainConfig) -> tuple[str, float | None]:
    """The run's mode and w: per-run draws w ~ U(0, 1) from the seed; per-batch has no single w."""
    mode, value = parse_local_weight(config.local_weight)
    if mode == "per-run":
        key = jax.random.fold_in(jax.random.key(config.seed), STREAM_LOCAL_WEIGHT)
        value = float(jax.random.uniform(key))
    return mode, value


def package_versions() -> dict[str, str]:
    """Versions of what produced the numbers."""
    names = [
        "ddnn-jax",
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "orbax-checkpoint",
        "tensorflow-datasets",
        "numpy",
        "chex",
    ]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def run_identity(config: TrainConfig) -> dict[str, Any]:
    """What makes two runs the same run: every field but where the data comes from, w resolved."""
    identity = dataclasses.asdict(config)
    for where_data_comes_from in ("data_dir", "download"):
        identity.pop(where_data_comes_from)
    identity["local_weight"] = resolve_local_weight(config)
    return identity
