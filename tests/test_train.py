import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddnn_jax.core.config import TrainConfig, resolve_local_weight
from ddnn_jax.core.training import create_train_state, joint_loss, make_train_step
from ddnn_jax.data import DataSplits, Split
from ddnn_jax.rundir import RunDir, checkpoints, read_metrics
from ddnn_jax.stages.train import TrainingDiverged, TrainJob, train, train_jobs

SHAPE = (16, 16, 1)
TINY = TrainConfig(
    dataset="mnist",
    epochs=2,
    batch_size=16,
    local_weight="0.5",
    edge_channels=4,
    local_hidden=8,
    cloud_conv_channels=(8, 8, 8, 8),
    cloud_dense_features=(16, 8),
    eval_batch_size=32,
)


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _batch(seed=0, n=16):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n).astype(np.int32)
    # class-dependent brightness, so the problem is learnable
    images = (rng.integers(0, 60, (n, *SHAPE)) + 90 * labels[:, None, None, None]).astype(np.uint8)
    return {"image": images, "label": labels}


def _tiny_data(n=80) -> DataSplits:
    """5 batches of 16: the compiled epoch of TINY, shared by the tests that train it."""
    batch = _batch(1, n)
    split = Split(batch["image"], batch["label"])
    mean, std = np.array([0.5], np.float32), np.array([0.3], np.float32)
    return DataSplits("tiny", split, split, split, 3, mean, std, True, 2)


@pytest.mark.parametrize("w", [0.0, 0.3, 1.0])
def test_joint_loss_is_the_weighted_sum_of_the_two_cross_entropies(w):
    local = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], np.float32)
    cloud = np.array([[-1.0, 3.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
    labels = np.array([0, 2])
    ce_local = -_log_softmax(local)[np.arange(2), labels]
    ce_cloud = -_log_softmax(cloud)[np.arange(2), labels]
    expected = np.mean(w * ce_local + (1 - w) * ce_cloud)
    np.testing.assert_allclose(joint_loss(local, cloud, labels, w), expected, rtol=1e-6)


def test_per_run_weight_is_drawn_from_the_seed_and_fixed_weights_pass_through():
    mode, w = resolve_local_weight(TrainConfig(seed=3))
    assert mode == "per-run" and 0.0 <= w <= 1.0
    assert resolve_local_weight(TrainConfig(seed=3)) == (mode, w)
    assert resolve_local_weight(TrainConfig(seed=4))[1] != w
    assert resolve_local_weight(TrainConfig(local_weight="0.7")) == ("fixed", 0.7)
    assert resolve_local_weight(TrainConfig(local_weight="per-batch")) == ("per-batch", None)


@pytest.mark.parametrize("local_weight", [0.5, None])
def test_a_few_steps_lower_the_loss(local_weight):
    state = create_train_state(TINY, SHAPE, 3)
    step = make_train_step(
        local_weight=local_weight,
        mean=np.array([0.5]),
        std=np.array([0.3]),
        horizontal_flip=True,
        crop_padding=2,
    )
    batch = _batch()
    losses = []
    for i in range(25):
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 25
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])


def test_train_step_golden_value():
    """Loss after 3 steps at a fixed seed. Update only for an intended change of the model,
    initialisation, augmentation or loss, and say so in the commit."""
    state = create_train_state(TINY, SHAPE, 3)
    step = make_train_step(
        local_weight=0.5, mean=np.array([0.5]), std=np.array([0.3]), horizontal_flip=True, crop_padding=2
    )
    for i in range(3):
        state, metrics = step(state, _batch(), jax.random.key(i))
    np.testing.assert_allclose(float(metrics["loss"]), GOLDEN_LOSS_AFTER_3_STEPS, rtol=2e-4)


GOLDEN_LOSS_AFTER_3_STEPS = 1.122724


def test_checkpoint_round_trip(tmp_path: Path):
    state = create_train_state(TINY, SHAPE, 3)
    step = make_train_step(
        local_weight=0.5, mean=np.array([0.5]), std=np.array([0.3]), horizontal_flip=True, crop_padding=2
    )
    state, _ = step(state, _batch(), jax.random.key(0))
    manager = checkpoints.manager(tmp_path, keep=2)
    checkpoints.save(manager, 1, state, 0.5)
    restored = checkpoints.restore(manager, 1, create_train_state(TINY, SHAPE, 3))
    manager.close()
    for name in ("params", "batch_stats", "opt_state", "plateau", "step"):
        jax.tree.map(np.testing.assert_array_equal, getattr(restored, name), getattr(state, name))


def test_training_keeps_the_latest_and_the_best_checkpoints(tmp_path: Path):
    config = dataclasses.replace(TINY, epochs=5, keep_checkpoints=2)
    state = create_train_state(config, SHAPE, 3)
    manager = checkpoints.manager(tmp_path, keep=2)
    for epoch, accuracy in zip(range(1, 6), [0.3, 0.9, 0.4, 0.5, 0.6], strict=False):
        checkpoints.save(manager, epoch, state, accuracy)
    assert manager.best_step() == 2
    manager.close()
    assert sorted(checkpoints.manager(tmp_path).all_steps()) == [2, 4, 5]


def test_train_writes_metrics_and_resumes_where_it_stopped(tmp_path: Path):
    data = _tiny_data()
    full = train(TINY, data, tmp_path / "full", local_weight=0.5)
    assert [row["epoch"] for row in full] == [1, 2]
    part = train(dataclasses.replace(TINY, epochs=1), data, tmp_path / "part", local_weight=0.5)
    resumed = train(TINY, data, tmp_path / "part", local_weight=0.5)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(resumed) == strip(full)
    assert len(part) == 1


def test_nan_loss_stops_training_with_the_step_number(tmp_path: Path, monkeypatch):
    import ddnn_jax.stages.train as train_module

    real = train_module.train_step_fn

    def poisoned(**kwargs):
        step = real(**kwargs)

        def wrapped(state, images, labels, rng, constants):
            state, metrics = step(state, images, labels, rng, constants)
            bad = jnp.where(state.step == 3, jnp.nan, metrics["loss"])
            return state, {**metrics, "loss": bad}

        return wrapped

    monkeypatch.setattr(train_module, "train_step_fn", poisoned)
    with pytest.raises(TrainingDiverged, match="at step 3 "):
        train(TINY, _tiny_data(), tmp_path, local_weight=0.5)
    assert not (tmp_path / "checkpoints" / "1").exists()


def _jobs(root: Path, data: DataSplits) -> list[TrainJob]:
    """Three runs of equal shapes: other seeds, other weights (one drawn at every step)."""
    settings = [(0, 0.5), (1, 0.2), (2, None)]
    return [
        TrainJob(dataclasses.replace(TINY, seed=seed), data, RunDir(root / f"run{seed}"), w)
        for seed, w in settings
    ]


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_runs_trained_together_compute_what_each_computes_alone(tmp_path: Path):
    data = _tiny_data()
    alone = [train_jobs([job])[0] for job in _jobs(tmp_path / "alone", data)]
    together = train_jobs(_jobs(tmp_path / "together", data), together=True)
    # to float tolerance: an accuracy may then differ by the one sample whose logits are tied
    one_sample = 1.0 / len(data.val)
    for a, b in zip(alone, together, strict=True):
        assert [r["epoch"] for r in b] == [1, 2]
        for ra, rb in zip(_strip(a), _strip(b), strict=True):
            assert ra.keys() == rb.keys()
            for key in ra:
                if "accuracy" in key:
                    assert abs(ra[key] - rb[key]) <= one_sample + 1e-9, key
                else:
                    assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-5), key
    assert _strip(alone[0]) != _strip(alone[1])  # the runs differ: seeds and weights reach the program


def test_runs_trained_together_resume_after_a_kill(tmp_path: Path):
    data = _tiny_data()

    def killed(epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_jobs(_jobs(tmp_path / "killed", data), together=True, on_epoch_trained=killed)
    assert all(len(read_metrics(job.run)) == 1 for job in _jobs(tmp_path / "killed", data))
    resumed = train_jobs(_jobs(tmp_path / "killed", data), together=True)
    uninterrupted = train_jobs(_jobs(tmp_path / "whole", data), together=True)
    assert [_strip(h) for h in resumed] == [_strip(h) for h in uninterrupted]


@pytest.mark.slow
def test_run_trainings_together_on_disk_equals_one_run_alone(tmp_path: Path, fashion_mnist_ready):
    from ddnn_jax.jobs.training import run_training, run_trainings

    # SMALL_RUN's shapes: the run alone reads its compiled epoch from the session's cache
    config = TrainConfig(dataset="fashion_mnist", epochs=1, limit_train=512, limit_eval=1000)
    seeds = (0, 1)
    together = run_trainings(
        [(dataclasses.replace(config, seed=s), tmp_path / f"seed{s}") for s in seeds], together=True
    )
    alone = run_training(dataclasses.replace(config, seed=1), tmp_path / "alone")
    assert _strip(together[1])[0] == pytest.approx(_strip(alone)[0], rel=1e-4, abs=1e-4)
    assert _strip(together[0]) != _strip(together[1])
    assert (tmp_path / "seed0" / "config.json").is_file() and (
        tmp_path / "seed1" / "checkpoints" / "1"
    ).is_dir()
