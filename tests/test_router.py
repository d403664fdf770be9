"""The router grid: vmapped training equals per-target training, and it learns a separable rule."""

import dataclasses

import chex
import jax
import numpy as np
import pytest

from ddnn_jax.core.router_net import RouterConfig, RouterNet
from ddnn_jax.core.router_training import make_grid_predictor, make_grid_trainer, target_keys

TINY = RouterConfig(hidden=(16, 8), batch_size=64, max_epochs=3, early_stopping_patience=100)


def _separable(n, targets, seed):
    """Inputs whose first coordinate decides the label at each target's quantile."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    thresholds = np.quantile(x[:, 0], targets)
    return x, (x[None, :, 0] >= thresholds[:, None]).astype(np.int32)


def _train(config, x, y, xv, yv):
    keys = target_keys(config.seed, config.targets)
    result = make_grid_trainer(config, len(x))(keys, x, y, np.ones(y.shape, np.float32), xv, yv)
    return result, make_grid_predictor(config)(result.variables, xv)


def test_vmapped_grid_equals_each_target_alone():
    config = dataclasses.replace(TINY, targets=(0.3, 0.7), dropout_rate=0.1)
    x, y = _separable(640, config.targets, 0)
    xv, yv = _separable(200, config.targets, 1)
    grid, grid_logits = _train(config, x, y, xv, yv)
    chex.assert_shape(grid_logits, (2, 200))
    for g, target in enumerate(config.targets):
        alone, alone_logits = _train(
            dataclasses.replace(config, targets=(target,)), x, y[g : g + 1], xv, yv[g : g + 1]
        )
        np.testing.assert_allclose(alone.val_quality[0], grid.val_quality[g], atol=1e-5)
        np.testing.assert_allclose(alone.train_quality[0], grid.train_quality[g], atol=1e-5)
        # Adam divides by sqrt(v): float-level gradient differences move weights by ~1e-4 here.
        np.testing.assert_allclose(alone_logits[0], grid_logits[g], atol=1e-3)
        assert int(alone.best_epoch[0]) == int(grid.best_epoch[g])


def test_router_learns_a_separable_meta_dataset():
    config = dataclasses.replace(TINY, targets=(0.25, 0.6), max_epochs=12, dropout_rate=0.0)
    x, y = _separable(2000, config.targets, 2)
    xv, yv = _separable(500, config.targets, 3)
    result, logits = _train(config, x, y, xv, yv)
    decision_accuracy = ((np.asarray(logits) >= 0) == (yv == 1)).mean(-1)
    assert np.all(decision_accuracy > 0.97), decision_accuracy
    # The returned weights are the best validation epoch's, and histories stop where training did.
    best = np.nanmax(np.asarray(result.val_quality), axis=1)
    np.testing.assert_allclose(decision_accuracy, best, atol=1e-6)


def test_early_stopping_masks_each_target_separately():
    config = dataclasses.replace(
        TINY, targets=(0.2, 0.5), max_epochs=30, early_stopping_patience=2, learning_rate=3e-2
    )
    x, y = _separable(640, config.targets, 4)
    xv, yv = _separable(200, config.targets, 5)
    result, _ = _train(config, x, y, xv, yv)
    epochs_run, best = np.asarray(result.epochs_run), np.asarray(result.best_epoch)
    history = np.asarray(result.val_quality)
    for g in range(2):
        assert epochs_run[g] == min(best[g] + 2, 30)
        assert np.isfinite(history[g, : epochs_run[g]]).all() and np.isnan(history[g, epochs_run[g] :]).all()


@pytest.mark.parametrize(
    "conv, shape, params",
    [
        # Dense(7->8) + BN(8) + Dense(8->1)
        ((), (7,), 7 * 8 + 8 + 2 * 8 + 8 + 1),
        # Conv3x3(2->4) + BN(4), pool 6x6 -> 3x3, then Dense(36->8) + BN(8) + Dense(8->1)
        ((4,), (6, 6, 2), 9 * 2 * 4 + 4 + 2 * 4 + 36 * 8 + 8 + 2 * 8 + 8 + 1),
    ],
)
def test_router_net_is_the_configured_architecture(conv, shape, params):
    net = RouterNet(hidden=(8,), conv_channels=conv)
    x = jax.random.normal(jax.random.key(1), (3, *shape))
    variables = net.init(jax.random.key(0), x, train=False)
    assert sum(leaf.size for leaf in jax.tree.leaves(variables["params"])) == params
    logits = net.apply(variables, x, train=False)
    chex.assert_shape(logits, (3,))
    assert not np.allclose(logits, net.apply(variables, x + 1.0, train=False))  # reads its input
    train = lambda key, rate: net.apply(
        variables, x, train=True, dropout_rate=rate, rngs={"dropout": key}, mutable=["batch_stats"]
    )[0]
    assert not np.allclose(train(jax.random.key(2), 0.5), train(jax.random.key(3), 0.5))  # dropout
    np.testing.assert_array_equal(train(jax.random.key(2), 0.0), train(jax.random.key(3), 0.0))


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("inputs", "pixels", "unknown router input 'pixels'"),
        ("labels", "soft", "labels 'soft' do not fit the grid objective"),
        ("objective", "rank", "unknown objective 'rank'"),
        ("dropout_rate", 1.0, "outside [0, 1)"),
    ],
)
def test_bad_router_config(field, value, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace(")", r"\)")):
        dataclasses.replace(RouterConfig(), **{field: value}).check()


def test_families_that_differ_in_data_only_share_one_compiled_program():
    x, y = _separable(256, (0.3, 0.7), 4)
    xv, yv = _separable(64, (0.3, 0.7), 5)
    base = dataclasses.replace(TINY, targets=(0.3, 0.7), dropout_rate=0.0)
    variants = [
        base,
        dataclasses.replace(base, dropout_rate=0.6),
        dataclasses.replace(base, labels="oracle", seed=3, targets=(0.1, 0.9)),
    ]
    trainers = [make_grid_trainer(config, len(x)) for config in variants]
    args = (target_keys(0, base.targets), x, y, np.ones(y.shape, np.float32), xv, yv)
    assert trainers[0].compile(*args) > 0
    assert all(t.program is trainers[0].program for t in trainers)
    assert all(t.compile(*args) == 0.0 for t in trainers[1:])  # compiled once, for all three
    plain, dropped = (np.asarray(t(*args).val_quality) for t in trainers[:2])
    assert not np.array_equal(plain, dropped)  # the rate is data the program reads
    deeper = make_grid_trainer(dataclasses.replace(base, hidden=(8,)), len(x))
    assert deeper.program is not trainers[0].program
