"""Progress: the live bars see every step and epoch, change no number, and stay quiet off a
terminal or when asked."""

import dataclasses

import jax
import numpy as np
import pytest
from test_train import SHAPE, TINY, _batch, _tiny_data

from ddnn_jax.common.progress import Progress
from ddnn_jax.core.router_net import RouterConfig
from ddnn_jax.core.router_training import make_grid_trainer, target_keys
from ddnn_jax.core.training import TrainEpoch, create_train_state, replicate, run_constants, train_step_fn
from ddnn_jax.stages.train import train


def _epoch_losses(on_step, steps=5):
    import ddnn_jax.stages.train as train_module
    from ddnn_jax.core.training import data_mesh

    batch = _batch(0, 16 * steps)
    mesh = data_mesh(16)
    step = train_step_fn(horizontal_flip=True, crop_padding=2)
    calls = 1 if on_step is None else train_module.TICKS_PER_EPOCH  # as training chooses
    epoch = TrainEpoch(step, mesh, batch_size=16, steps_per_epoch=steps, calls=calls)
    state = replicate(mesh, create_train_state(TINY, SHAPE, 3))
    images, labels = replicate(mesh, batch["image"]), replicate(mesh, batch["label"])
    constants = run_constants(0.5, [0.5], [0.3])
    _, metrics = epoch(state, images, labels, jax.random.key(0), 1, constants, on_step)
    return np.asarray(metrics["loss"])


def test_the_epoch_reports_its_steps_and_computes_the_same(monkeypatch):
    import ddnn_jax.stages.train as train_module

    # 5 steps (_tiny_data's), 2 ticks asked: a report every 2 steps, and one after the short
    # last chunk
    monkeypatch.setattr(train_module, "TICKS_PER_EPOCH", 2)
    expected = [2, 4, 5]
    seen = []
    with_bar = _epoch_losses(lambda done, loss: seen.append((int(done), float(loss))))
    jax.effects_barrier()
    assert [done for done, _ in seen] == expected
    np.testing.assert_array_equal(with_bar, _epoch_losses(None))
    assert [loss for _, loss in seen] == [float(with_bar[done - 1]) for done in expected]


def test_the_router_grid_reports_each_epoch_and_trains_the_same():
    config = RouterConfig(
        hidden=(8,), batch_size=32, targets=(0.3, 0.7), max_epochs=6, early_stopping_patience=2
    )
    rng = np.random.default_rng(0)
    x, xv = rng.normal(size=(128, 4)).astype(np.float32), rng.normal(size=(64, 4)).astype(np.float32)
    y = (rng.random((2, 128)) < 0.5).astype(np.int32)
    yv = (rng.random((2, 64)) < 0.5).astype(np.int32)
    calls = []
    args = (target_keys(0, config.targets), x, y, np.ones(y.shape, np.float32), xv, yv)
    result = make_grid_trainer(config, 128, on_epoch=lambda *a: calls.append([np.asarray(v) for v in a]))(
        *args
    )
    jax.effects_barrier()
    plain = make_grid_trainer(config, 128)(*args)
    epochs, training, best = calls[-1]
    np.testing.assert_array_equal(epochs, np.asarray(result.epochs_run))
    assert not training.any() and all(c[1].any() for c in calls[:-1])
    assert len(calls) == int(np.max(result.epochs_run))
    np.testing.assert_allclose(best, np.nanmax(np.asarray(result.val_quality), axis=1))
    np.testing.assert_array_equal(np.asarray(plain.val_quality), np.asarray(result.val_quality))


@pytest.mark.slow
def test_training_shows_a_bar_with_rate_when_asked_and_nothing_when_quiet(tmp_path, capsys, monkeypatch):
    import ddnn_jax.stages.train as train_module

    monkeypatch.setattr(train_module, "TICKS_PER_EPOCH", 2)  # the chunks of the test above
    config = dataclasses.replace(TINY, epochs=1)
    train(config, _tiny_data(), tmp_path / "loud", local_weight=0.5, progress=Progress(bars=True))
    loud = capsys.readouterr()
    assert "epoch 1/1" in loud.err and "img/s" in loud.err  # the live bar
    assert "epoch 1/1  loss" in loud.out  # the epoch line
    train(config, _tiny_data(), tmp_path / "quiet", local_weight=0.5, progress=Progress(quiet=True))
    quiet = capsys.readouterr()
    assert quiet.out == "" and quiet.err == ""


@pytest.mark.parametrize(
    "progress, shown", [(Progress(quiet=True, bars=True), False), (Progress(bars=False), False)]
)
def test_bars_are_off_when_quiet_or_switched_off(progress, shown):
    assert progress.shows_bars is shown
    assert progress.bar(10, "x").disable is not shown


def test_bars_follow_the_terminal(monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert not Progress().shows_bars
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert Progress().shows_bars
