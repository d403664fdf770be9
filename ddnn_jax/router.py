"""The learned offloading router ("Optimized Rule"): one binary classifier per local-rate target,
all targets trained together as one compiled program.

``train_one`` trains the router of a single target: an epoch ``lax.while_loop`` (stopping early
once validation decision accuracy has not improved for ``early_stopping_patience`` epochs) around a
``lax.scan`` over minibatches. ``jax.vmap`` over the target axis turns it into the grid trainer;
under ``vmap`` the while loop runs until every target has stopped and masks the updates of the ones
that already have, which is exactly per-target early stopping. Each target's randomness comes from
(seed, target) alone, so a target trains to the same weights alone or inside any grid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddnn_jax.models import BN_EPSILON, BN_MOMENTUM, conv3x3, torch_bias_init, torch_kernel_init
from ddnn_jax.policies import normalized_entropy, top2_margin

# What the router sees: the local logits (optionally with the top-2 margin and the normalised
# entropy), the edge feature map z through an MLP or a CNN, or the raw image through a CNN.
INPUT_MODES = ("logits", "logits+", "features", "features-cnn", "images")
CNN_MODES = ("features-cnn", "images")
LABEL_KINDS = ("cost", "oracle")
DEFAULT_TARGETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.54, 0.6, 0.7, 0.8, 0.9)
# Hidden widths of the thesis's depth ablation, by number of Dense layers (the output included).
DEPTH_PRESETS = {3: (128, 64), 5: (256, 128, 64, 32), 8: (512, 256, 256, 128, 128, 64, 32)}
STREAM_ROUTER = 100  # fold_in stream of the run seed reserved for routers


@dataclasses.dataclass(frozen=True)
class RouterConfig:
    """One router family: input mode, labels, architecture and training, for a grid of targets."""

    inputs: str = "logits"  # one of INPUT_MODES
    labels: str = "cost"  # 'cost' (B >= B*) or 'oracle' (correctness first) labels
    targets: tuple[float, ...] = DEFAULT_TARGETS  # local-rate targets L0, one router each
    hidden: tuple[int, ...] = DEPTH_PRESETS[5]  # Dense widths before the output unit
    conv_channels: tuple[int, ...] = (32, 64)  # conv blocks in front of the MLP (CNN modes only)
    dropout_rate: float = 0.1  # after each hidden ReLU; the thesis used 0 to 0.2
    batch_size: int = 256
    max_epochs: int = 40
    learning_rate: float = 1e-3  # Adam
    weight_decay: float = 1e-4  # L2 added to the gradient, as PyTorch's Adam(weight_decay=) does
    plateau_factor: float = 0.5  # learning-rate factor when validation decision accuracy stalls
    plateau_patience: int = 3  # epochs
    early_stopping_patience: int = 8  # epochs without a new best before a target stops
    eval_batch_size: int = 2048
    seed: int = 0

    def uses_cnn(self) -> bool:
        return self.inputs in CNN_MODES

    def check(self) -> None:
        """Raises ValueError naming the first bad field."""
        if self.inputs not in INPUT_MODES:
            raise ValueError(
                f"unknown router input '{self.inputs}': choose from {', '.join(INPUT_MODES)}"
            )
        if self.labels not in LABEL_KINDS:
            raise ValueError(f"unknown labels '{self.labels}': choose cost or oracle")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"router dropout {self.dropout_rate} is outside [0, 1)")
        for name in ("batch_size", "max_epochs", "early_stopping_patience", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"router {name} must be positive, got {getattr(self, name)}")


class RouterNet(nn.Module):
    """Optional conv blocks (Conv3x3 -> BN -> ReLU -> MaxPool2), then Dense -> BN -> ReLU ->
    Dropout per hidden width, then one output logit (offload when it is >= 0)."""

    hidden: Sequence[int]
    conv_channels: Sequence[int] = ()
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = lambda: nn.BatchNorm(
            use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON
        )
        for channels in self.conv_channels:
            x = conv3x3(channels, x.shape[-1])(x)
            x = nn.relu(norm()(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.Dense(width, kernel_init=torch_kernel_init,
                         bias_init=torch_bias_init(x.shape[-1]))(x)
            x = nn.relu(norm()(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        out = nn.Dense(1, kernel_init=torch_kernel_init, bias_init=torch_bias_init(x.shape[-1]))(x)
        return out[:, 0]


def build_router(config: RouterConfig) -> RouterNet:
    return RouterNet(
        hidden=tuple(config.hidden),
        conv_channels=tuple(config.conv_channels) if config.uses_cnn() else (),
        dropout_rate=config.dropout_rate,
    )


def raw_inputs(mode: str, outputs: dict[str, np.ndarray], images: np.ndarray | None) -> np.ndarray:
    """The router's input array for one split, before standardisation.

    Args:
      mode: one of INPUT_MODES.
      outputs: the split's collected arrays (``local_logits``, and ``features`` for feature modes).
      images: the split's uint8 images (``images`` mode only).
    """
    if mode == "logits":
        return np.asarray(outputs["local_logits"], np.float32)
    if mode == "logits+":
        logits = jnp.asarray(outputs["local_logits"])
        extra = jnp.stack([top2_margin(logits), normalized_entropy(logits)], axis=-1)
        return np.asarray(jnp.concatenate([logits, extra], axis=-1), np.float32)
    if mode in ("features", "features-cnn"):
        return np.asarray(outputs["features"], np.float32)
    if mode == "images":
        return np.asarray(images, np.float32) / 255.0
    raise ValueError(f"unknown router input '{mode}': choose from {', '.join(INPUT_MODES)}")


def standardization(train_inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over the training split per last-axis entry (feature or channel)."""
    axes = tuple(range(train_inputs.ndim - 1))
    mean = train_inputs.mean(axis=axes, dtype=np.float64)
    std = train_inputs.std(axis=axes, dtype=np.float64)
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


class Carry(NamedTuple):
    """The state of one target's training loop between epochs."""

    params: Any
    batch_stats: Any
    opt_state: Any
    plateau: Any
    best_params: Any
    best_batch_stats: Any
    best_val_accuracy: jax.Array
    best_epoch: jax.Array  # 1-based; 0 until the first epoch ends
    epoch: jax.Array  # epochs completed
    train_accuracy: jax.Array  # [max_epochs], NaN after the last epoch run
    val_accuracy: jax.Array  # [max_epochs]


class GridResult(NamedTuple):
    """What the grid trainer returns; every array has the target axis first."""

    variables: Any  # best-on-validation params and batch_stats, stacked over targets
    train_accuracy: jax.Array  # [G, max_epochs] decision accuracy during each epoch (NaN: not run)
    val_accuracy: jax.Array  # [G, max_epochs] validation decision accuracy after each epoch
    best_epoch: jax.Array  # [G]
    epochs_run: jax.Array  # [G]


def target_keys(seed: int, targets: Sequence[float]) -> jax.Array:
    """One key per target, a function of (seed, target) only."""
    root = jax.random.fold_in(jax.random.key(seed), STREAM_ROUTER)
    return jnp.stack([jax.random.fold_in(root, round(float(t) * 10_000)) for t in targets])


def predict_chunked(model: RouterNet, variables, inputs: jax.Array, chunk: int) -> jax.Array:
    """Evaluation-mode router logits [N] in fixed-size chunks (lax.map), the last one padded."""
    n = inputs.shape[0]
    chunk = min(chunk, n)
    pad = -n % chunk
    padded = jnp.concatenate([inputs, jnp.zeros((pad, *inputs.shape[1:]), inputs.dtype)])
    chunks = padded.reshape((-1, chunk, *inputs.shape[1:]))
    logits = jax.lax.map(lambda x: model.apply(variables, x, train=False), chunks)
    return logits.reshape(-1)[:n]


def make_train_one(config: RouterConfig, n_train: int):
    """``train_one(key, x_train, y_train, x_val, y_val) -> GridResult`` (unbatched) for one target."""
    model = build_router(config)
    batch_size = min(config.batch_size, n_train)
    steps = n_train // batch_size
    tx = optax.chain(
        optax.add_decayed_weights(config.weight_decay), optax.adam(config.learning_rate)
    )
    plateau = optax.contrib.reduce_on_plateau(
        factor=config.plateau_factor, patience=config.plateau_patience
    )

    def run_epoch(carry: Carry, key, x_train, y_train, x_val, y_val) -> Carry:
        epoch_key = jax.random.fold_in(key, carry.epoch)
        order = jax.random.permutation(jax.random.fold_in(epoch_key, 0), n_train)

        def step(state, i):
            params, batch_stats, opt_state, correct = state
            idx = jax.lax.dynamic_slice_in_dim(order, i * batch_size, batch_size)
            x, y = x_train[idx], y_train[idx]

            def loss_fn(p):
                logits, updates = model.apply(
                    {"params": p, "batch_stats": batch_stats}, x, train=True,
                    rngs={"dropout": jax.random.fold_in(epoch_key, i + 1)},
                    mutable=["batch_stats"],
                )
                loss = optax.sigmoid_binary_cross_entropy(logits, y.astype(logits.dtype)).mean()
                return loss, (logits, updates["batch_stats"])

            (_, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            updates = jax.tree.map(lambda u: u * carry.plateau.scale, updates)
            params = optax.apply_updates(params, updates)
            correct = correct + ((logits >= 0) == (y == 1)).sum()
            return (params, batch_stats, opt_state, correct), None

        init = (carry.params, carry.batch_stats, carry.opt_state, jnp.zeros((), jnp.int32))
        (params, batch_stats, opt_state, correct), _ = jax.lax.scan(step, init, jnp.arange(steps))
        train_accuracy = correct / (steps * batch_size)
        val_logits = predict_chunked(
            model, {"params": params, "batch_stats": batch_stats}, x_val, config.eval_batch_size
        )
        val_accuracy = ((val_logits >= 0) == (y_val == 1)).mean()
        improved = val_accuracy > carry.best_val_accuracy
        keep_best = lambda new, old: jax.tree.map(lambda a, b: jnp.where(improved, a, b), new, old)
        _, plateau_state = plateau.update(updates={}, state=carry.plateau, value=1.0 - val_accuracy)
        return Carry(
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            plateau=plateau_state,
            best_params=keep_best(params, carry.best_params),
            best_batch_stats=keep_best(batch_stats, carry.best_batch_stats),
            best_val_accuracy=jnp.maximum(val_accuracy, carry.best_val_accuracy),
            best_epoch=jnp.where(improved, carry.epoch + 1, carry.best_epoch),
            epoch=carry.epoch + 1,
            train_accuracy=carry.train_accuracy.at[carry.epoch].set(train_accuracy),
            val_accuracy=carry.val_accuracy.at[carry.epoch].set(val_accuracy),
        )

    def train_one(key, x_train, y_train, x_val, y_val) -> GridResult:
        init_key, loop_key = jax.random.split(key)
        variables = model.init({"params": init_key}, x_train[:2], train=False)
        params, batch_stats = variables["params"], variables["batch_stats"]
        nan_history = jnp.full((config.max_epochs,), jnp.nan, jnp.float32)
        carry = Carry(
            params=params, batch_stats=batch_stats, opt_state=tx.init(params),
            plateau=plateau.init(params), best_params=params, best_batch_stats=batch_stats,
            best_val_accuracy=jnp.asarray(-1.0, jnp.float32), best_epoch=jnp.asarray(0),
            epoch=jnp.asarray(0), train_accuracy=nan_history, val_accuracy=nan_history,
        )

        def keep_going(c: Carry):
            return (c.epoch < config.max_epochs) & (
                c.epoch - c.best_epoch < config.early_stopping_patience
            )

        carry = jax.lax.while_loop(
            keep_going, lambda c: run_epoch(c, loop_key, x_train, y_train, x_val, y_val), carry
        )
        return GridResult(
            variables={"params": carry.best_params, "batch_stats": carry.best_batch_stats},
            train_accuracy=carry.train_accuracy,
            val_accuracy=carry.val_accuracy,
            best_epoch=carry.best_epoch,
            epochs_run=carry.epoch,
        )

    return train_one


def make_grid_trainer(config: RouterConfig, n_train: int):
    """The whole grid as one jitted program: keys [G], shared inputs, labels [G, N] per split."""
    return jax.jit(jax.vmap(make_train_one(config, n_train), in_axes=(0, None, 0, None, 0)))


def make_grid_predictor(config: RouterConfig):
    """Jitted evaluation of every target's router on one split: logits [G, N]."""
    model = build_router(config)
    return jax.jit(
        jax.vmap(lambda v, x: predict_chunked(model, v, x, config.eval_batch_size), in_axes=(0, None))
    )
