"""Data parallelism: the compiled epoch on a 4-device mesh computes what it computes on one.

XLA's host platform is split into 4 CPU devices in a fresh interpreter (the flag must be set
before JAX starts). There the same epochs run on a mesh of 4 and of 1 device, then runs trained
together on a (run, data) mesh and each alone: one interpreter for both tests.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_ENV, one_worker_at_a_time

SCRIPT = r"""
import json, sys
import jax, numpy as np
from ddnn_jax.core.config import TrainConfig
from ddnn_jax.core import training as T

assert jax.device_count() == 4, jax.devices()
config = TrainConfig(batch_size=16, edge_channels=4, local_hidden=8,
                     cloud_conv_channels=(8, 8, 8, 8), cloud_dense_features=(16, 8))
rng = np.random.default_rng(0)
labels = rng.integers(0, 3, 96).astype(np.int32)
images = (rng.integers(0, 60, (96, 16, 16, 1)) + 90 * labels[:, None, None, None]).astype(np.uint8)
step = T.train_step_fn(horizontal_flip=True, crop_padding=2)
out = {}
for n in (4, 1):
    mesh = jax.make_mesh((n,), (T.DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:n])
    epoch = T.TrainEpoch(step, mesh, batch_size=16, steps_per_epoch=6)
    state = T.replicate(mesh, T.create_train_state(config, (16, 16, 1), 3))
    x, y = T.replicate(mesh, images), T.replicate(mesh, labels)
    losses = []
    for e in (1, 2, 3):
        state, metrics = epoch(state, x, y, jax.random.key(0), e, T.run_constants(None, [0.5], [0.3]))
        losses += np.asarray(metrics["loss"]).tolist()
    out[n] = {"losses": losses, "devices": len(state.params["cloud"]["fc1"]["kernel"].sharding.device_set),
              "kernel": np.asarray(state.params["cloud"]["fc1"]["kernel"]).ravel()[:20].tolist()}
"""


RUNS_SCRIPT = r"""
import dataclasses, json, sys, tempfile
from pathlib import Path
import jax, numpy as np
from ddnn_jax.core.config import TrainConfig
from ddnn_jax.data import DataSplits, Split
from ddnn_jax.rundir import RunDir
from ddnn_jax.core import training as T
from ddnn_jax.stages import train as S

assert jax.device_count() == 4, jax.devices()
config = TrainConfig(epochs=2, batch_size=16, edge_channels=4, local_hidden=8, eval_batch_size=32,
                     cloud_conv_channels=(8, 8, 8, 8), cloud_dense_features=(16, 8))
rng = np.random.default_rng(0)
labels = rng.integers(0, 3, 96).astype(np.int32)
images = (rng.integers(0, 60, (96, 16, 16, 1)) + 90 * labels[:, None, None, None]).astype(np.uint8)
split = Split(images, labels)
norm = np.array([0.5], np.float32), np.array([0.3], np.float32)
data = DataSplits("tiny", split, split, split, 3, *norm, True, 2)
root = Path(tempfile.mkdtemp())
jobs = lambda kind: [S.TrainJob(dataclasses.replace(config, seed=s), data, RunDir(root / f"{kind}{s}"), w)
                     for s, w in ((0, 0.5), (1, 0.2))]
mesh = T.train_mesh(16, 2)
together = S.train_jobs(jobs("together"), together=True)
alone = [S.train_jobs([job])[0] for job in jobs("alone")]
runs = {"mesh": dict(mesh.shape), "together": together, "alone": alone}
print(json.dumps({"epochs": out, "runs": runs}))
"""


@pytest.fixture(scope="session")
def four_devices() -> dict:
    """Runs SCRIPT, then RUNS_SCRIPT, in one fresh interpreter whose CPU is split into 4 XLA
    devices (the flag must be set before JAX starts): its last stdout line, as JSON, read by
    every worker from the session's shared directory."""
    saved = Path(os.environ[SHARED_ENV]) / "four_devices.json"
    with one_worker_at_a_time("four_devices"):
        if not saved.is_file():
            flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
            env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
            command = [sys.executable, "-c", SCRIPT + RUNS_SCRIPT]
            result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
            assert result.returncode == 0, result.stderr[-3000:]
            saved.write_text(result.stdout.strip().splitlines()[-1])
    return json.loads(saved.read_text())


@pytest.mark.slow
def test_four_devices_follow_the_one_device_loss_trajectory(four_devices):
    four, one = four_devices["epochs"]["4"], four_devices["epochs"]["1"]
    assert (four["devices"], one["devices"]) == (4, 1)
    assert len(four["losses"]) == 18
    assert four["losses"][-1] < four["losses"][0]  # it trains
    for a, b in zip(four["losses"], one["losses"], strict=False):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), (four["losses"], one["losses"])
    for a, b in zip(four["kernel"], one["kernel"], strict=False):
        assert abs(a - b) <= 1e-4


@pytest.mark.slow
def test_runs_together_split_over_a_run_by_data_mesh_compute_what_they_compute_alone(four_devices):
    out = four_devices["runs"]
    assert out["mesh"] == {"run": 2, "data": 2}  # 2 runs, each over 2 devices
    for together, alone in zip(out["together"], out["alone"], strict=True):
        assert len(together) == len(alone) == 2
        for a, b in zip(together, alone, strict=True):
            for key in ("train_loss", "train_accuracy_local", "val_accuracy_cloud", "learning_rate"):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (key, a, b)
