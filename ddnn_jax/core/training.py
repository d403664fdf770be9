"""Joint training as array functions: the train state, the loss, the jitted step, the device mesh,
the compiled epoch, and batched prediction. No paths and no printing: the resumable loop that
checkpoints and reports lives in :mod:`ddnn_jax.stages.train`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ddnn_jax.common.errors import UsageError
from ddnn_jax.core import optim
from ddnn_jax.core.config import STREAM_INIT, STREAM_SHUFFLE, STREAM_STEP, TrainConfig
from ddnn_jax.core.models import DDNN
from ddnn_jax.core.retrace import trace_once
from ddnn_jax.core.variants import cotrain
from ddnn_jax.data import augment, normalize

DATA_AXIS = "data"
RUN_AXIS = "run"  # the leading axis of runs trained together
# Host calls of the compiled epoch when a progress bar shows it (the bar advances between them);
# without a bar the epoch is one call: on XLA:CPU each call costs tens of milliseconds.
TICKS_PER_EPOCH = 20


class TrainState(train_state.TrainState):
    """Parameters, Adam state and step, plus batch-norm statistics and the plateau schedule,
    whose factor scales every update."""

    batch_stats: Any
    plateau: optim.PlateauState

    def apply_gradients(self, *, grads, **kwargs):
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, optim.scale_updates(updates, self.plateau))
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **kwargs)


def build_model(config: TrainConfig, num_classes: int) -> DDNN:
    """The run's network (with its co-trained router, if it has one). Equal architectures get
    the same module object, so that the states of two runs have equal static parts
    (``apply_fn``) and share compiled programs."""
    architecture = dict(
        num_classes=num_classes,
        edge_channels=config.edge_channels,
        local_hidden=config.local_hidden,
        cloud_conv_channels=tuple(config.cloud_conv_channels),
        cloud_dense_features=tuple(config.cloud_dense_features),
        dropout_rate=config.dropout_rate,
        conv=config.conv,
        precision=config.precision,
    )
    if config.cotrain_router is not None:
        return _shared_cotrained(**architecture, detach=config.cotrain_router == "detached")
    return _shared_ddnn(**architecture)


_shared_ddnn = functools.lru_cache(maxsize=16)(DDNN)
_shared_cotrained = functools.lru_cache(maxsize=4)(cotrain.CotrainedDDNN)


def plateau_schedule(config: TrainConfig) -> optax.GradientTransformationExtraArgs:
    """The learning-rate factor, driven by the validation error once per epoch."""
    return optim.plateau(config.plateau_factor, config.plateau_patience)


@functools.lru_cache(maxsize=8)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    """One optimizer object per learning rate: states of equal runs then have equal static
    parts, so a compiled program made for one run takes the next without tracing again."""
    return optax.adam(learning_rate)


def create_train_state(config: TrainConfig, image_shape: tuple[int, ...], num_classes: int) -> TrainState:
    """A freshly initialised state; the initialisation depends only on the seed.

    Args:
      config: the run's configuration (architecture, optimiser, seed).
      image_shape: (H, W, C) of one image.
      num_classes: classes of both exits.
    Returns:
      The TrainState: parameters, batch statistics, Adam and plateau state, step 0.
    """
    model = build_model(config, num_classes)
    key = jax.random.fold_in(jax.random.key(config.seed), STREAM_INIT)
    variables = jax.jit(model.init, static_argnames="train")(
        {"params": key}, jnp.zeros((1, *image_shape), jnp.float32), train=False
    )
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=_adam(config.learning_rate),
        plateau=plateau_schedule(config).init(variables["params"]),
    )


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sample softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def joint_loss(
    local_logits: jax.Array, cloud_logits: jax.Array, labels: jax.Array, local_weight: jax.Array
) -> jax.Array:
    """mean over the batch of w * CE(local) + (1 - w) * CE(cloud)."""
    per_sample = local_weight * cross_entropy(local_logits, labels) + (1.0 - local_weight) * cross_entropy(
        cloud_logits, labels
    )
    return per_sample.mean()


class RunConstants(NamedTuple):
    """What a run's steps read besides their batch, as data: runs that differ only in these
    (other weights, other seeds' splits) are trained by one compiled program."""

    w: Any  # float32 scalar: the joint loss's local weight; NaN draws w ~ U(0, 1) per step
    mean: Any  # [C] float32: per-channel normalisation of x / 255
    std: Any  # [C] float32
    # float32 scalars of a co-trained router: the optimizer step its loss counts from, and its
    # weight on the edge ('joint')
    router_from: Any = np.float32(np.inf)
    router_weight: Any = np.float32(0.0)


def run_constants(
    local_weight: float | None, mean, std, config: TrainConfig | None = None, steps_per_epoch: int = 0
) -> RunConstants:
    """A run's constants: its fixed weight (None: drawn at every step), its normalisation and,
    for a run with a co-trained router (``config``), the step its loss starts from (after the
    warm-up epochs of ``steps_per_epoch``) and its weight on the edge."""
    router_from, weight = np.inf, 0.0
    if config is not None and config.cotrain_router is not None:
        router_from, weight = config.cotrain_warmup * steps_per_epoch, config.cotrain_weight
    return RunConstants(
        w=np.float32(np.nan if local_weight is None else local_weight),
        mean=np.asarray(mean, np.float32),
        std=np.asarray(std, np.float32),
        router_from=np.float32(router_from),
        router_weight=np.float32(weight),
    )


def train_step_fn(
    *, horizontal_flip: bool, crop_padding: int, cotrained: bool = False
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array, RunConstants], tuple[TrainState, dict]]:
    """The pure ``step(state, images, labels, rng, constants) -> (state, metrics)`` of one run.

    Args:
      horizontal_flip: whether augmentation flips images.
      crop_padding: the random crop's shift in pixels.
      cotrained: the model has a co-trained router (``core.variants.cotrain``): from step
        ``constants.router_from`` on, the loss adds the router's (weighted 1 for the router,
        ``constants.router_weight`` where it reaches the edge) and the metrics its value.
    """

    def step(
        state: TrainState, images: jax.Array, labels: jax.Array, rng: jax.Array, constants: RunConstants
    ):
        augment_rng, dropout_rng, weight_rng = jax.random.split(rng, 3)
        images = augment(images, augment_rng, horizontal_flip=horizontal_flip, pad=crop_padding)
        images = normalize(images, constants.mean, constants.std)
        w = jnp.where(jnp.isnan(constants.w), jax.random.uniform(weight_rng), constants.w)

        def loss_fn(params):
            (local_logits, cloud_logits, third), updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats},
                images,
                train=True,
                rngs={"dropout": dropout_rng},
                mutable=["batch_stats"],
                **({"method": "with_router", "edge_weight": constants.router_weight} if cotrained else {}),
            )
            loss = joint_loss(local_logits, cloud_logits, labels, w)
            extra = {}
            if cotrained:
                on = (state.step >= constants.router_from).astype(jnp.float32)
                extra["router_loss"] = cotrain.router_loss(third, local_logits, cloud_logits, labels)
                loss_with_router = loss + on * extra["router_loss"]
                return loss_with_router, (loss, local_logits, cloud_logits, updates["batch_stats"], extra)
            return loss, (loss, local_logits, cloud_logits, updates["batch_stats"], extra)

        (_, (loss, local_logits, cloud_logits, batch_stats, extra)), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(state.params)
        state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        metrics = {
            "loss": loss,
            "correct_local": (local_logits.argmax(-1) == labels).sum(),
            "correct_cloud": (cloud_logits.argmax(-1) == labels).sum(),
            **extra,
        }
        return state, metrics

    return step


def make_train_step(*, local_weight: float | None, mean, std, horizontal_flip: bool, crop_padding: int):
    """One jitted optimizer step, ``(state, {"image", "label"}, rng) -> (state, metrics)``,
    driven from Python: for tests and for benchmarking against the compiled epoch. The weight
    and the normalisation are data: steps that differ only in them share one program."""
    step = _jitted_step(horizontal_flip, crop_padding)
    constants = jax.device_put(run_constants(local_weight, mean, std))
    return lambda state, batch, rng: step(state, batch["image"], batch["label"], rng, constants)


@functools.lru_cache(maxsize=8)
def _jitted_step(horizontal_flip: bool, crop_padding: int):
    step = train_step_fn(horizontal_flip=horizontal_flip, crop_padding=crop_padding)
    return jax.jit(step, donate_argnums=0)


def data_mesh(batch_size: int) -> Mesh:
    """A 1-D mesh over every device of every process; batches are split along it."""
    devices = jax.devices()
    if batch_size % len(devices):
        raise UsageError(
            f"--batch-size {batch_size} does not split evenly over {len(devices)} devices: "
            f"use a multiple of {len(devices)}"
        )
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def train_mesh(batch_size: int, runs: int | None) -> Mesh:
    """The mesh of one run (``data_mesh``) or of ``runs`` runs trained together: a 2-D mesh
    (run, data) over every device of every process. The runs are split over as many devices as
    divide both their count and the device count; the batch of each run is split over the rest."""
    if runs is None:
        return data_mesh(batch_size)
    devices = jax.device_count()
    across_runs = math.gcd(runs, devices)
    across_batch = devices // across_runs
    if batch_size % across_batch:
        raise UsageError(
            f"--batch-size {batch_size} does not split evenly over the {across_batch} devices each "
            f"of {runs} runs gets: use a multiple of {across_batch}"
        )
    return jax.make_mesh((across_runs, across_batch), (RUN_AXIS, DATA_AXIS), axis_types=(AxisType.Auto,) * 2)


def place(mesh: Mesh, tree, runs: int | None):
    """``tree`` on the mesh: replicated for one run; for runs together, each array's leading
    run axis split along RUN_AXIS (and replicated along the data axis)."""
    return _put(tree, NamedSharding(mesh, P() if runs is None else P(RUN_AXIS)))


def replicate(mesh: Mesh, tree):
    """A full copy of every array of ``tree`` on every device of the mesh."""
    return _put(tree, NamedSharding(mesh, P()))


def _put(tree, sharding: NamedSharding):
    """Every array of ``tree`` laid out by ``sharding``. Each process passes the same values
    (the same dataset, the same seeded state) and keeps its own shards, so this works
    multi-host."""

    def put(leaf):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def chunk_steps(steps_per_epoch: int, calls: int) -> int:
    """Optimizer steps per call of the compiled chunk, for about ``calls`` calls an epoch."""
    return max(1, steps_per_epoch // calls)


class TrainEpoch:
    """One epoch of training as compiled programs:
    ``epoch(state, images, labels, root, epoch, constants, on_step=None) -> (state, per-step
    metrics)``.

    ``images`` [N, H, W, C] uint8 and ``labels`` live on the devices for the whole run. A small
    program draws the epoch's permutation; then one compiled chunk program, a loop over
    ``chunk_steps`` steps that gathers, augments and trains on each batch, is called ``calls``
    times (about: the last call runs the steps that are left). One call runs the whole epoch;
    a progress bar asks for ``TICKS_PER_EPOCH``. Keys are derived
    exactly as in a step-by-step loop: the shuffle from (root, STREAM_SHUFFLE, epoch), step i from
    (root, STREAM_STEP, global step i). The batch axis is sharded over the mesh's data axis;
    parameters and optimizer state are replicated along it, and XLA inserts the reductions of
    gradients and batch statistics, so any device count computes the same function.

    The per-step metrics come back to the host as numpy arrays. ``on_step(steps_done, loss)``,
    if given, is called on the host with the steps done and the last step's loss (the mean over
    runs) after each chunk (a progress bar). The programs contain no host callback, so JAX's
    persistent compilation cache can keep them, and every chunking runs the same step program:
    the same numbers with a bar or without (tested). The host reads a chunk's loss only once the next chunk is
    queued, so the device does not wait for the bar. Each program is traced once: a second trace
    (a silent recompilation) raises.

    With ``runs=R`` every argument but ``epoch`` has a leading run axis of R (independent
    trainings: other seeds, other weights, the same shapes) and one program trains them all
    (``jax.vmap``); each run computes what it computes alone, to float tolerance. On a mesh
    with a RUN_AXIS (``train_mesh``) the runs are split over it (``place``).
    """

    def __init__(
        self,
        step,
        mesh: Mesh,
        *,
        batch_size: int,
        steps_per_epoch: int,
        runs: int | None = None,
        calls: int = 1,
    ):
        self.steps, self.chunk = steps_per_epoch, chunk_steps(steps_per_epoch, calls)
        self.calls = -(-steps_per_epoch // self.chunk)
        self.runs = runs
        run_axis = () if runs is None else (RUN_AXIS if RUN_AXIS in mesh.axis_names else None,)
        state_sharding = NamedSharding(mesh, P(*run_axis))  # whole on each data-axis device
        by_example = NamedSharding(mesh, P(*run_axis, None, None, DATA_AXIS))
        per_epoch, calls, chunk = batch_size * steps_per_epoch, self.calls, self.chunk

        def batches(root, n_examples: int, epoch):
            """[calls, chunk, batch] example indices; the rows past the last step repeat it."""
            shuffle_key = jax.random.fold_in(jax.random.fold_in(root, STREAM_SHUFFLE), epoch)
            order = jax.random.permutation(shuffle_key, n_examples)[:per_epoch]
            rows = order.reshape(steps_per_epoch, batch_size)
            rows = rows[jnp.minimum(jnp.arange(calls * chunk), steps_per_epoch - 1)]
            return rows.reshape(calls, chunk, batch_size)

        def run_chunk(state, images, labels, rows, root, constants, epoch, call):
            step_root = jax.random.fold_in(root, STREAM_STEP)
            first = (epoch - 1) * steps_per_epoch + call * chunk
            count = jnp.minimum(chunk, steps_per_epoch - call * chunk)
            mine = jax.lax.dynamic_index_in_dim(rows, call, keepdims=False)

            def one(state, i):
                idx, rng = mine[i], jax.random.fold_in(step_root, first + i)
                return step(state, images[idx], labels[idx], rng, constants)

            def body(i, carry):
                state, metrics = carry
                state, out = one(state, i)
                return state, jax.tree.map(lambda m, v: m.at[i].set(v), metrics, out)

            shapes = jax.eval_shape(one, state, 0)[1]
            metrics = jax.tree.map(lambda s: jnp.zeros((chunk, *s.shape), s.dtype), shapes)
            return jax.lax.fori_loop(0, count, body, (state, metrics))

        if runs is not None:
            batches = jax.vmap(batches, in_axes=(0, None, None))
            run_chunk = jax.vmap(run_chunk, in_axes=(0, 0, 0, 0, 0, 0, None, None))
        self._batches = jax.jit(trace_once(batches), static_argnums=1, out_shardings=by_example)
        outputs = (state_sharding, state_sharding)
        self._chunk = jax.jit(trace_once(run_chunk), donate_argnums=0, out_shardings=outputs)

    def __call__(self, state, images, labels, root, epoch: int, constants: RunConstants, on_step=None):
        rows = self._batches(root, labels.shape[-1], epoch)
        chunks, pending = [], None
        for call in range(self.calls):
            state, metrics = self._chunk(state, images, labels, rows, root, constants, epoch, call)
            chunks.append(metrics)
            if on_step is not None:
                if pending is not None:
                    self._tick(on_step, *pending)
                pending = (call, metrics["loss"])
        if pending is not None:
            self._tick(on_step, *pending)
        axis = 0 if self.runs is None else 1
        chunks = jax.device_get(chunks)
        metrics = jax.tree.map(lambda *parts: np.concatenate(parts, axis=axis), *chunks)
        return state, jax.tree.map(lambda m: m[:, : self.steps] if axis else m[: self.steps], metrics)

    def _tick(self, on_step, call: int, losses) -> None:
        done = min(self.steps, (call + 1) * self.chunk)
        last = np.asarray(losses)[..., done - call * self.chunk - 1]
        on_step(done, float(np.mean(last)))


@functools.lru_cache(maxsize=16)
def _forward(model: DDNN, with_features: bool):
    """The jitted evaluation-mode forward pass, normalisation as data: one program for every run
    of the same architecture."""

    def forward(variables, images, mean, std):
        local_logits, cloud_logits, z = model.apply(variables, normalize(images, mean, std), train=False)
        return (local_logits, cloud_logits, z) if with_features else (local_logits, cloud_logits)

    return jax.jit(forward)


def make_predict_fn(model: DDNN, mean, std, with_features: bool = False):
    """Evaluation-mode forward pass on uint8 images, normalisation inside.

    Args:
      model: the network (``build_model``).
      mean, std: the run's per-channel normalisation of x/255 (its RunRecord's).
      with_features: also return the edge features z.
    Returns:
      A jitted ``predict(variables, images) -> (local_logits, cloud_logits[, z])``.
    """
    forward = _forward(model, with_features)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return lambda variables, images: forward(variables, images, mean, std)


def pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
    """``x`` with zero rows appended up to a multiple of ``multiple`` rows."""
    pad = -len(x) % multiple
    return np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x


def predict_in_batches(predict, variables, inputs: np.ndarray, batch_size: int, bar=None):
    """Runs ``predict(variables, batch) -> tuple of arrays`` over all inputs in fixed-size
    batches (the last one padded, so one compiled program serves every split); a tuple of numpy
    arrays out. ``bar`` (a tqdm) advances by the rows done."""
    n = len(inputs)
    outputs = []
    for start in range(0, n, batch_size):
        chunk = inputs[start : start + batch_size]
        outputs.append(jax.device_get(predict(variables, pad_rows(chunk, batch_size))))
        if bar is not None:
            bar.update(len(chunk))
    return tuple(np.concatenate(part)[:n] for part in zip(*outputs, strict=True))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())
