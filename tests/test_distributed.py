"""Several processes, one program: ``ddnn train --distributed`` in two CPU processes on this
machine trains the model that one process trains."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import PRISTINE_FLAGS

# The first epoch of the pristine run's training, which one process did
TRAIN = ["train", *PRISTINE_FLAGS, "--epochs", "1", "--quiet"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_the_model_one_process_trains(tmp_path, pristine):
    shared = tmp_path / "two"
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ddnn_jax.cli",
                *TRAIN,
                "--out",
                str(shared),
                "--distributed",
                "--coordinator",
                address,
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
        assert "1 of 1 epochs done" in out
    config = json.loads((shared / "config.json").read_text())
    assert config["runtime"]["processes"] == 2 and config["runtime"]["devices"] == 2
    two, one = _metrics(shared), _metrics(pristine)[:1]
    assert [row["epoch"] for row in two] == [1]
    for a, b in zip(two, one, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        for key in ("val_accuracy_local", "val_accuracy_cloud"):
            assert abs(a[key] - b[key]) <= 0.01, (key, a, b)
    assert sorted(p.name for p in (shared / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--coordinator", "127.0.0.1:1"], "need --distributed"),
        (["--distributed", "--num-processes", "0"], "at least 1"),
        (["--distributed", "--num-processes", "2", "--process-id", "2"], "--process-id must lie"),
    ],
)
def test_bad_process_flags_are_refused_in_one_line(tmp_path, capsys, flags, fragment):
    from ddnn_jax import cli

    assert cli.main([*TRAIN, "--out", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
