"""Training a grid of routers as one compiled program: one router's epoch (``make_loop``),
vmapped over the target axis with per-target early stopping (``GridTrainer``), and its predictor.
Each target's randomness comes from (seed, target) alone, so it trains to the same weights alone
or inside any grid."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddnn_jax.core import optim
from ddnn_jax.core.meta import labellings_for
from ddnn_jax.core.router_losses import weighted_mean
from ddnn_jax.core.router_net import RouterConfig, RouterNet, build_router, router_scores
from ddnn_jax.core.variants import budget

STREAM_ROUTER = 100  # fold_in stream of the run seed reserved for routers
STREAM_BATCH = 1_000_003  # fold_in stream of an epoch's key for what a batch draws (a budget router's L0)


class Carry(NamedTuple):
    """The state of one target's training loop between epochs."""

    params: Any
    batch_stats: Any
    opt_state: Any
    plateau: Any
    best_params: Any
    best_batch_stats: Any
    best_val_quality: jax.Array
    best_epoch: jax.Array  # 1-based; 0 until the first epoch ends
    epoch: jax.Array  # epochs completed
    train_quality: jax.Array  # [max_epochs], NaN after the last epoch run
    val_quality: jax.Array  # [max_epochs]


class GridResult(NamedTuple):
    """What the grid trainer returns; every array has the target axis first."""

    variables: Any  # best-on-validation params and batch_stats, stacked over targets
    # Objective.quality per epoch (NaN: not run): decision accuracy for the grid objective,
    # mean accuracy over budgets for the score; over the epoch's batches, then on validation.
    train_quality: jax.Array  # [G, max_epochs]
    val_quality: jax.Array  # [G, max_epochs]
    best_epoch: jax.Array  # [G]
    epochs_run: jax.Array  # [G]


def target_keys(seed: int, targets: Sequence[float]) -> jax.Array:
    """One key per target, a function of (seed, target) only."""
    root = jax.random.fold_in(jax.random.key(seed), STREAM_ROUTER)
    return jnp.stack([jax.random.fold_in(root, round(float(t) * 10_000)) for t in targets])


def model_keys(config: RouterConfig, target_of: np.ndarray | None = None) -> jax.Array:
    """The keys of the routers a family trains: one per target (candidates of one target share
    its key, ``target_of`` their target indices), or the score's one (a stream no target in
    [0, 1] uses)."""
    if config.objective != "grid":  # streams no target in [0, 1] uses
        return target_keys(config.seed, (2.0,) if config.objective == "score" else (3.0,))
    targets = list(config.targets)
    return target_keys(config.seed, targets if target_of is None else [targets[m] for m in target_of])


def mean_accuracy_over_budgets(scores: jax.Array, local_correct: jax.Array, cloud_correct: jax.Array):
    """Mixed-system accuracy averaged over every local count k = 0..N, keeping the k lowest
    scores local: the area under the accuracy-vs-local-rate curve of the score's order."""
    order = jnp.argsort(scores)
    gain = (cloud_correct - local_correct)[order]
    forgone = jnp.concatenate([jnp.zeros((1,), gain.dtype), jnp.cumsum(gain)])
    return ((cloud_correct.sum() - forgone) / scores.shape[0]).mean()


class Objective(NamedTuple):
    """What a router minimises on a batch, and the quality (higher is better) that selects its
    best epoch, steps its plateau schedule and is recorded per epoch."""

    # (outputs, y [B, ...], weights [B]) -> scalar, the weighted mean of the per-sample losses
    loss: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    quality: Callable[[jax.Array, jax.Array], jax.Array]  # (scores [B], y [B, ...]) -> scalar
    # (x, y, key) -> the batch the router trains on (a budget router's draws its L0)
    batch: Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]] | None = None
    # (scores of inputs -> [N], x_val, y_val) -> the validation quality; None: quality on x_val
    validate: Callable[[Callable[[jax.Array], jax.Array], jax.Array, jax.Array], jax.Array] | None = None
    widen: Callable[[jax.Array], jax.Array] = lambda x: x  # inputs -> what the network reads


def _decision_accuracy(scores: jax.Array, labels: jax.Array) -> jax.Array:
    return ((scores >= 0) == (labels == 1)).mean()


def objective(config: RouterConfig) -> Objective:
    """'grid': y [N] 0/1 labels, selected on decision accuracy. 'score': y [N, 3] columns
    (regression target, local_correct, cloud_correct), selected on mean accuracy over budgets.
    'budget': y [N] benefit ranks in training (each batch labelled at a drawn L0), labels
    [G, N_val] in validation, selected on the mean decision accuracy over the targets. The loss
    is the config's (``router_losses``), its options read from the config."""
    entry = config.router_loss
    options = {name: getattr(config, name) for name in entry.options}
    loss = lambda z, y, w: weighted_mean(entry.fn(z, y, **options), w)
    if config.objective == "grid":
        return Objective(loss=loss, quality=_decision_accuracy)
    if config.objective == "budget":
        levels = tuple(float(t) for t in config.targets)

        def validate(scores_of, x_val, y_val):
            per_target = [
                _decision_accuracy(scores_of(budget.with_budget(x_val, t)), y_val[g])
                for g, t in enumerate(levels)
            ]
            return jnp.mean(jnp.stack(per_target))

        return Objective(
            loss=loss,
            quality=_decision_accuracy,
            batch=budget.draw_batch,
            validate=validate,
            widen=lambda x: budget.with_budget(x, 0.5),
        )
    return Objective(loss=loss, quality=lambda s, y: mean_accuracy_over_budgets(s, y[:, 1], y[:, 2]))


def predict_chunked(config: RouterConfig, model: RouterNet, variables, inputs: jax.Array, chunk: int):
    """Evaluation-mode router scores [N] in fixed-size chunks (lax.map), the last one padded."""
    n = inputs.shape[0]
    chunk = min(chunk, n)
    pad = -n % chunk
    padded = jnp.concatenate([inputs, jnp.zeros((pad, *inputs.shape[1:]), inputs.dtype)])
    chunks = padded.reshape((-1, chunk, *inputs.shape[1:]))
    apply = lambda x: router_scores(config, cast(jax.Array, model.apply(variables, x, train=False)))
    scores = jax.lax.map(apply, chunks)
    return scores.reshape(-1)[:n]


class _Loop(NamedTuple):
    """One target's training, as functions of its Carry (vmapped by the grid trainer)."""

    init: Callable[[jax.Array, jax.Array], Carry]  # (key, x_train) -> Carry
    # (carry, key, x_train, y_train, w_train, x_val, y_val, dropout) -> Carry
    epoch: Callable[..., Carry]
    keep_going: Callable[[Carry], jax.Array]  # bool: neither out of epochs nor stopped early
    result: Callable[[Carry], GridResult]


def _optimizer(config: RouterConfig) -> optax.GradientTransformation:
    """Adam with L2 weight decay added to the gradient (PyTorch's Adam(weight_decay=))."""
    return optax.chain(optax.add_decayed_weights(config.weight_decay), optax.adam(config.learning_rate))


def _train_minibatches(
    model, tx, config, n_train, carry: Carry, epoch_key, x_train, y_train, w_train, dropout
):
    """One pass over the shuffled training set: (params, batch_stats, opt_state, mean quality)."""
    batch_size = min(config.batch_size, n_train)
    steps = n_train // batch_size
    order = jax.random.permutation(jax.random.fold_in(epoch_key, 0), n_train)
    goal = objective(config)

    def step(state, i):
        params, batch_stats, opt_state, quality = state
        idx = jax.lax.dynamic_slice_in_dim(order, i * batch_size, batch_size)
        x, y, w = x_train[idx], y_train[idx], w_train[idx]
        if goal.batch is not None:
            x, y = goal.batch(x, y, jax.random.fold_in(jax.random.fold_in(epoch_key, STREAM_BATCH), i))

        def loss_fn(p):
            outputs, updates = model.apply(
                {"params": p, "batch_stats": batch_stats},
                x,
                train=True,
                dropout_rate=dropout,
                rngs={"dropout": jax.random.fold_in(epoch_key, i + 1)},
                mutable=["batch_stats"],
            )
            return goal.loss(outputs, y, w), (outputs, updates["batch_stats"])

        (_, (outputs, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, optim.scale_updates(updates, carry.plateau))
        quality = quality + goal.quality(router_scores(config, outputs), y)
        return (params, batch_stats, opt_state, quality), None

    init = (carry.params, carry.batch_stats, carry.opt_state, jnp.zeros((), jnp.float32))
    (params, batch_stats, opt_state, quality), _ = jax.lax.scan(step, init, jnp.arange(steps))
    return params, batch_stats, opt_state, quality / steps


def _initial_carry(model: RouterNet, tx, plateau, max_epochs: int, widen, key, x_train) -> Carry:
    """A freshly initialised router, its optimizer and schedule states, and empty histories."""
    variables = model.init({"params": key}, widen(x_train[:2]), train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    nan_history = jnp.full((max_epochs,), jnp.nan, jnp.float32)
    return Carry(
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        plateau=plateau.init(params),
        best_params=params,
        best_batch_stats=batch_stats,
        best_val_quality=jnp.asarray(-1.0, jnp.float32),
        best_epoch=jnp.asarray(0),
        epoch=jnp.asarray(0),
        train_quality=nan_history,
        val_quality=nan_history,
    )


def _result(c: Carry) -> GridResult:
    """The best-on-validation variables and the histories of a finished loop."""
    return GridResult(
        variables={"params": c.best_params, "batch_stats": c.best_batch_stats},
        train_quality=c.train_quality,
        val_quality=c.val_quality,
        best_epoch=c.best_epoch,
        epochs_run=c.epoch,
    )


def make_loop(config: RouterConfig, n_train: int) -> _Loop:
    """The training of one router: init, one epoch (train, validate, keep the best, step the
    plateau schedule), the stopping rule, and the result."""
    model = build_router(config)
    goal = objective(config)
    tx = _optimizer(config)
    plateau = optim.plateau(config.plateau_factor, config.plateau_patience)

    def epoch(carry: Carry, key, x_train, y_train, w_train, x_val, y_val, dropout) -> Carry:
        epoch_key = jax.random.fold_in(key, carry.epoch)
        params, batch_stats, opt_state, train_quality = _train_minibatches(
            model, tx, config, n_train, carry, epoch_key, x_train, y_train, w_train, dropout
        )
        variables = {"params": params, "batch_stats": batch_stats}
        scores_of = lambda x: predict_chunked(config, model, variables, x, config.eval_batch_size)
        if goal.validate is None:
            val_quality = goal.quality(scores_of(x_val), y_val)
        else:
            val_quality = goal.validate(scores_of, x_val, y_val)
        improved = val_quality > carry.best_val_quality
        keep_best = lambda new, old: jax.tree.map(lambda a, b: jnp.where(improved, a, b), new, old)
        return Carry(
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            plateau=optim.end_of_epoch(plateau, carry.plateau, 1.0 - val_quality),
            best_params=keep_best(params, carry.best_params),
            best_batch_stats=keep_best(batch_stats, carry.best_batch_stats),
            best_val_quality=jnp.maximum(val_quality, carry.best_val_quality),
            best_epoch=jnp.where(improved, carry.epoch + 1, carry.best_epoch),
            epoch=carry.epoch + 1,
            train_quality=carry.train_quality.at[carry.epoch].set(train_quality),
            val_quality=carry.val_quality.at[carry.epoch].set(val_quality),
        )

    def keep_going(c: Carry) -> jax.Array:
        return (c.epoch < config.max_epochs) & (c.epoch - c.best_epoch < config.early_stopping_patience)

    init = functools.partial(_initial_carry, model, tx, plateau, config.max_epochs, goal.widen)
    return _Loop(init, epoch, keep_going, _result)


def program_key(config: RouterConfig) -> RouterConfig:
    """What the compiled grid depends on: the config with the values it takes as data (labels,
    target values but a budget router's, seed, dropout rate) set to one canonical value.
    Families with equal keys (and equal input shapes) train through one compiled program."""
    return dataclasses.replace(
        config,
        labels=labellings_for("grid" if config.objective == "budget" else config.objective)[0],
        targets=config.targets if config.objective == "budget" else (0.5,) * config.models,
        seed=0,
        dropout_rate=0.0,
    )


class _GridProgram:
    """The init and epoch programs of one program key, compiled once per argument shapes."""

    def __init__(self, config: RouterConfig, n_train: int):
        loop = make_loop(config, n_train)
        epoch = jax.vmap(loop.epoch, in_axes=(0, 0, None, 0, 0, None, 0, None))
        keep_going = jax.vmap(loop.keep_going)

        def init(keys, x_train):
            split = jax.vmap(jax.random.split)(keys)
            carry = jax.vmap(loop.init, in_axes=(0, None))(split[:, 0], x_train)
            return carry, split[:, 1], keep_going(carry)

        def step(carry: Carry, loop_keys, x_train, y_train, w_train, x_val, y_val, dropout):
            """One epoch of every target still training; the others keep their state."""
            active = keep_going(carry)
            new = epoch(carry, loop_keys, x_train, y_train, w_train, x_val, y_val, dropout)
            mask = lambda n, o: jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
            carry = jax.tree.map(mask, new, carry)
            return carry, keep_going(carry)

        self.jitted = {"init": jax.jit(init), "step": jax.jit(step, donate_argnums=0)}
        self.result = jax.vmap(loop.result)
        self.compiled: dict[tuple, Any] = {}

    def programs(self, keys, x_train, y_train, w_train, x_val, y_val) -> tuple[dict[str, Any], float]:
        """The compiled init and step for these arguments, and the seconds spent compiling them
        now (0 when an earlier family compiled them; the persistent cache shortens it)."""
        arrays = (keys, x_train, y_train, w_train, x_val, y_val)
        signature = tuple((a.shape, str(a.dtype)) for a in arrays)
        if signature in self.compiled:
            return self.compiled[signature], 0.0
        started = time.perf_counter()
        init = self.jitted["init"].lower(keys, x_train).compile()
        carry, loop_keys, _ = jax.eval_shape(self.jitted["init"], keys, x_train)
        dropout = jax.ShapeDtypeStruct((), jnp.float32)
        step = (
            self.jitted["step"]
            .lower(carry, loop_keys, x_train, y_train, w_train, x_val, y_val, dropout)
            .compile()
        )
        self.compiled[signature] = {"init": init, "step": step}
        return self.compiled[signature], time.perf_counter() - started


@functools.lru_cache(maxsize=64)
def _grid_program(key: RouterConfig, n_train: int) -> _GridProgram:
    return _GridProgram(key, n_train)


class GridTrainer:
    """The whole grid of one family:
    ``grid(keys [M], x_train, y_train [M, N], w_train [M, N], x_val, y_val [M, N_val])
    -> GridResult``, M the routers trained (one per target, or several candidates per target),
    ``w_train`` their per-sample loss weights (``core.meta``).

    Each call runs epochs of every target at once (``vmap``) while any target is still
    training; a target that has stopped keeps its state (its update is masked), so each target
    trains exactly as it would alone. The epoch is one compiled program called from the host,
    which queues the next epoch before it reads whether any target still trains (an epoch
    after the last is a no-op: every update is masked). ``on_epoch(epochs, still_training,
    best_val)``, if given, is called on the host after every epoch with the per-target arrays
    (a progress bar); the programs are the same without it.

    Families whose configs differ only in labels, target values, seed or dropout rate share the
    compiled programs (``program_key``); ``compile(*args)`` compiles them ahead of the call and
    returns the seconds it took.
    """

    def __init__(self, config: RouterConfig, n_train: int, on_epoch=None):
        self.program = _grid_program(program_key(config), n_train)
        self.dropout = np.float32(config.dropout_rate)
        self.max_epochs, self.on_epoch = config.max_epochs, on_epoch

    def compile(self, *args) -> float:
        return self.program.programs(*args)[1]

    def __call__(self, keys, x_train, y_train, w_train, x_val, y_val) -> GridResult:
        programs, _ = self.program.programs(keys, x_train, y_train, w_train, x_val, y_val)
        carry, loop_keys, going = programs["init"](keys, x_train)
        data = (loop_keys, x_train, y_train, w_train, x_val, y_val, self.dropout)
        for _ in range(self.max_epochs):
            carry, now_going = programs["step"](carry, *data)
            if not np.any(going):  # waits for the epoch before; the one just queued is a no-op
                break
            if self.on_epoch is not None:
                self.on_epoch(
                    np.asarray(carry.epoch), np.asarray(now_going), np.asarray(carry.best_val_quality)
                )
            going = now_going
        return self.program.result(carry)


def make_grid_trainer(
    config: RouterConfig,
    n_train: int,
    on_epoch: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> GridTrainer:
    """The grid trainer of ``config`` (see GridTrainer)."""
    return GridTrainer(config, n_train, on_epoch)


def make_grid_predictor(config: RouterConfig):
    """Jitted evaluation of every target's router on one split: scores [G, N] (a budget
    router's one network once per target, L0 set to it)."""
    model = build_router(config)
    one = lambda v, x: predict_chunked(config, model, v, x, config.eval_batch_size)
    if config.objective != "budget":
        return jax.jit(jax.vmap(one, in_axes=(0, None)))
    every_target = lambda v, x: jnp.stack([one(v, budget.with_budget(x, t)) for t in config.targets])
    return jax.jit(lambda v, x: jax.vmap(every_target, in_axes=(0, None))(v, x)[0])


def select_candidates(result: GridResult, target_of: np.ndarray) -> tuple[GridResult, np.ndarray]:
    """Per target, the candidate router with the best validation quality (the first on a tie):
    the result restricted to them, target-major, and the index of each kept model."""
    target_of = np.asarray(target_of)
    best = np.nanmax(np.asarray(result.val_quality), axis=-1)
    kept = np.asarray(
        [np.flatnonzero(target_of == g)[np.argmax(best[target_of == g])] for g in np.unique(target_of)]
    )
    return jax.tree.map(lambda leaf: leaf[kept], result), kept
