"""The PyTorch training backend: the same protocol as the JAX loop, resumable, and writing a run
directory every later stage reads; step by step, the two frameworks compute the same losses."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_train import SHAPE, TINY, _batch, _tiny_data  # noqa: E402

from conftest import PRISTINE_EVAL, SMALL_RUN  # noqa: E402
from ddnn_jax import cli  # noqa: E402
from ddnn_jax.core import optim  # noqa: E402
from ddnn_jax.core.training import build_model, create_train_state, make_predict_fn, make_train_step  # noqa: E402
from ddnn_jax.interop import torch_backend  # noqa: E402
from ddnn_jax.interop.convert import PARTS, torch_to_flax  # noqa: E402
from ddnn_jax.interop.torch_train import TorchTrainer  # noqa: E402
from ddnn_jax.rundir import RunDir, checkpoints, read_metrics  # noqa: E402
from ddnn_jax.stages.train import TrainJob  # noqa: E402

TORCH_TINY = dataclasses.replace(TINY, framework="torch", local_weight="per-batch")


def _architecture(config):
    return {
        "edge_channels": config.edge_channels,
        "local_hidden": config.local_hidden,
        "cloud_conv_channels": config.cloud_conv_channels,
        "cloud_dense_features": config.cloud_dense_features,
        "dropout_rate": config.dropout_rate,
    }


def _state_dicts(model):
    return {
        part: {k: v.detach().numpy() for k, v in getattr(model, part).state_dict().items()} for part in PARTS
    }


def _without_time(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


class Killed(Exception):
    pass


def test_a_torch_run_resumes_after_a_kill_to_the_same_metrics_and_its_checkpoint_predicts_alike(tmp_path):
    data = _tiny_data()
    whole = torch_backend.train_jobs([TrainJob(TORCH_TINY, data, RunDir(tmp_path / "whole"), None)])[0]

    def kill_in_epoch_2(epoch):
        if epoch == 2:
            raise Killed

    killed = RunDir(tmp_path / "killed")
    with pytest.raises(Killed):
        torch_backend.train_jobs([TrainJob(TORCH_TINY, data, killed, None)], on_epoch_trained=kill_in_epoch_2)
    assert [row["epoch"] for row in read_metrics(killed)] == [1]
    resumed = torch_backend.train_jobs([TrainJob(TORCH_TINY, data, killed, None)])[0]
    assert [row["epoch"] for row in whole] == [1, 2]
    assert _without_time(resumed) == _without_time(whole)  # bit for bit
    assert sorted(p.name for p in killed.torch_checkpoints.iterdir()) == ["epoch-1.pt", "epoch-2.pt"]

    # The Flax checkpoint of epoch 2 is the torch model of epoch 2: same logits, same accuracy.
    model = TorchTrainer(
        SHAPE, 3, mean=data.mean, std=data.std, crop_padding=0, architecture=_architecture(TORCH_TINY)
    ).model.eval()
    model.load_state_dict(torch.load(killed.torch_checkpoints / "epoch-2.pt", weights_only=True)["model"])
    x = torch.from_numpy(data.val.images).permute(0, 3, 1, 2).float() / 255
    mean, std = (torch.from_numpy(v).view(1, -1, 1, 1) for v in (data.mean, data.std))
    with torch.no_grad():
        want = [logits.numpy() for logits in model((x - mean) / std)]
    manager = checkpoints.manager(killed.checkpoints)
    state = checkpoints.restore(manager, 2, create_train_state(TORCH_TINY, SHAPE, 3))
    manager.close()
    predict = make_predict_fn(build_model(TORCH_TINY, 3), data.mean, data.std)
    got = predict({"params": state.params, "batch_stats": state.batch_stats}, data.val.images)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, atol=1e-4)
    assert float((want[0].argmax(-1) == data.val.labels).mean()) == whole[1]["val_accuracy_local"]
    assert int(state.step) == 2 * (len(data.train) // TORCH_TINY.batch_size)


def test_from_the_same_weights_and_batches_the_two_frameworks_agree_step_by_step():
    """Augmentation and dropout off, w = 0.3: 20 Adam steps, the losses within 1e-4 relative."""
    config = dataclasses.replace(TINY, dropout_rate=0.0)
    mean, std = np.array([0.4], np.float32), np.array([0.3], np.float32)
    trainer = TorchTrainer(
        SHAPE,
        3,
        mean=mean,
        std=std,
        crop_padding=0,
        horizontal_flip=False,
        local_weight=0.3,
        seed=5,
        architecture=_architecture(config),
    )
    fresh = create_train_state(config, SHAPE, 3)
    ported = jax.tree.map(np.asarray, torch_to_flax(_state_dicts(trainer.model)))
    state = fresh.replace(params=ported["params"], batch_stats=ported["batch_stats"])
    step = make_train_step(local_weight=0.3, mean=mean, std=std, horizontal_flip=False, crop_padding=0)
    jax_losses, torch_losses = [], []
    for i in range(20):
        batch = _batch(seed=100 + i)
        state, metrics = step(state, batch, jax.random.key(i))
        jax_losses.append(float(metrics["loss"]))
        images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()
        torch_losses.append(float(trainer.step(images, torch.from_numpy(batch["label"]).long())[0]))
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=1e-4)
    assert jax_losses[-1] < jax_losses[0]  # they trained, not merely agreed on the first loss


def test_torch_plateau_schedule_counts_as_ours():
    """The same validation errors lower the rate at the same epochs in both frameworks."""
    errors = [0.5, 0.4, 0.41, 0.42, 0.40, 0.43, 0.44, 0.45, 0.39, 0.39, 0.38995, 0.39, 0.2]
    schedule = optim.plateau(0.5, 2)
    state = schedule.init({})
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    scheduler = torch_backend.plateau_scheduler(optimizer, 0.5, 2)
    ours, theirs = [], []
    for error in errors:
        state = optim.end_of_epoch(schedule, state, error)
        scheduler.step(error)
        ours.append(float(state.scale))
        theirs.append(optimizer.param_groups[0]["lr"])
    assert ours == theirs
    assert ours[-1] < 0.5  # the sequence did lower the rate, more than once


def test_ddnn_run_with_the_torch_backend_goes_through_every_stage(tmp_path, fashion_mnist_ready):
    out = tmp_path / "torch-run"
    # SMALL_RUN's shapes (the routers' programs come from the session's cache), two epochs
    flags = [*SMALL_RUN, "--epochs", "2", "--no-ablations", "--no-inference-timing", "--quiet"]
    flags += ["--backend", "torch"]
    assert cli.main(["run", *flags, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["framework"] == "torch" and config["versions"]["torch"] == torch.__version__
    assert config["backend"] == "torch-cpu" and config["runtime"]["torch_device"] == "cpu"
    results = json.loads((out / "results.json").read_text())
    rows = read_metrics(out)
    best = max(rows, key=lambda row: row["val_accuracy_mean"])
    assert results["best_epoch"] == best["epoch"] and results["test_size"] == 1000
    assert results["edge_only_accuracy"] > 0.5  # two epochs of real training, not chance
    assert {"entropy", "router_logits_calibrated"} <= set(results["curves"])
    assert (out / "report.md").is_file()
    # Resuming with the other framework is another run, refused before anything is written.
    before = (out / "metrics.jsonl").read_text()
    train_flags = [*SMALL_RUN[:8], "--epochs", "2"]
    assert cli.main(["train", *train_flags, "--out", str(out), "--quiet"]) == 2
    assert (out / "metrics.jsonl").read_text() == before


def test_what_only_jax_does_is_refused_with_the_torch_backend(tmp_path, capsys, pristine):
    for flags, fragment in ((["--precision", "bf16"], "--precision"), (["--conv", "xla"], "--conv")):
        args = ["train", "--out", str(tmp_path / "run"), "--backend", "torch", *flags]
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert fragment in err and "--backend torch" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
    # A JAX run is not continued by PyTorch: the framework is part of what makes a run.
    copy = tmp_path / "jax-run"
    copy.mkdir()
    shutil.copy(pristine / "config.json", copy / "config.json")
    args = ["train", "--dataset", "fashion_mnist", "--epochs", "2", "--limit-train", "512"]
    args += ["--limit-eval", str(PRISTINE_EVAL), "--batch-size", "128", "--backend", "torch"]
    assert cli.main([*args, "--out", str(copy)]) == 2
    assert "framework: 'jax' -> 'torch'" in capsys.readouterr().err
    assert not (copy / "metrics.jsonl").exists() and not (copy / "checkpoints").exists()
