"""The ddnn command line: bad input is one line and exit 2; real runs on a Fashion-MNIST slice."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import PRISTINE_EVAL, PRISTINE_FLAGS, run_cli


def _assert_usage_error(result, fragment: str):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("ddnn: error:") and fragment in lines[0], lines[0]


def _main(capsys, *args: str) -> subprocess.CompletedProcess:
    """``ddnn ARGS`` in this process (what ``run_cli`` runs in a fresh one), as a finished process."""
    from ddnn_jax import cli

    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["ddnn", *args], code, out, err)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--local-weight", "1.5"], "must lie in [0, 1]"),
        (["--local-weight", "-0.1"], "must lie in [0, 1]"),
        (["--local-weight", "often"], "'per-run', 'per-batch' or a number"),
        (["--epochs", "0"], "--epochs must be a positive integer"),
        (["--epochs", "two"], "expected an integer"),
        (["--batch-size", "-4"], "--batch-size must be a positive integer"),
    ],
)
def test_bad_training_arguments(tmp_path, capsys, args, fragment):
    from ddnn_jax import cli

    # in this process: the entry point's own exit and stderr are test_unwritable_run_dir's
    assert cli.main(["train", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddnn: error:") and fragment in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_every_flag_has_a_sentence_and_its_default():
    import argparse

    from ddnn_jax import cli

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 10, (name, action.dest)

    def described(command: str, flag: str) -> str:
        """The words of the flag's entry in the options section of the command's help."""
        options = commands.choices[command].format_help().split("options:", 1)[1]
        return " ".join(options.split(f"  {flag}", 1)[1].split("\n  -", 1)[0].split())

    for flag, default in (("--epochs", 20), ("--batch-size", 128), ("--seed", 0), ("--conv", "auto")):
        assert f"(default: {default})" in described("train", flag), described("train", flag)
    assert "(default: 0)" in described("run", "--router-seed")


@pytest.mark.parametrize("grid", ["", ",,", "0.3,,0.5"])
def test_an_empty_grid_is_refused(tmp_path, capsys, grid):
    from ddnn_jax import cli

    assert cli.main(["route", "--run", str(tmp_path), "--grid", grid]) == 2
    assert "expected comma-separated numbers" in capsys.readouterr().err


def test_unwritable_run_dir(capsys):
    _assert_usage_error(_main(capsys, "train", "--out", "/proc/ddnn-run", "--epochs", "1"), "cannot write")


def test_non_run_directory_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    _assert_usage_error(_main(capsys, "train", "--out", str(tmp_path)), "holds no ddnn run")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_missing_data_says_how_to_get_it(tmp_path):
    env = {"DDNN_FASHION_MNIST_SOURCE": str(tmp_path / "none"), "TFDS_DATA_DIR": str(tmp_path / "tfds")}
    result = run_cli("train", "--out", str(tmp_path / "run"), "--epochs", "1", env=env)
    _assert_usage_error(result, "apt-get install -y dataset-fashion-mnist")
    assert not (tmp_path / "run").exists()


def test_collect_needs_a_training_run(tmp_path, capsys):
    _assert_usage_error(_main(capsys, "collect", "--run", str(tmp_path)), "ddnn train")


TRAIN = ["train", *PRISTINE_FLAGS, "--seed", "0"]  # what the pristine run trained: 2 epochs of 512 images


def _metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory, pristine):
    """An uninterrupted 2-epoch run of TRAIN: the training part of the session's pristine run,
    whose flags are TRAIN's (a copy of what training wrote, nothing of the later stages)."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    run_dir.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy2(pristine / name, run_dir / name)
    shutil.copytree(pristine / "checkpoints", run_dir / "checkpoints")
    return run_dir


@pytest.mark.slow
def test_train_collect_end_to_end_and_conflicting_rerun(two_epoch_run, capsys):
    run_dir = two_epoch_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["dataset"] == "fashion_mnist" and config["epochs"] == 2 and config["seed"] == 0
    assert config["batch_size"] == 128 and config["local_weight_mode"] == "per-run"
    assert 0 <= config["local_weight"] <= 1 and "jax" in config["versions"]
    assert config["split_sizes"] == {"train": 512, "val": PRISTINE_EVAL, "test": PRISTINE_EVAL}
    rows = _metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train_loss", "val_accuracy_local", "val_accuracy_cloud", "learning_rate"):
        assert all(np.isfinite(r[key]) for r in rows)

    result = _main(capsys, "collect", "--run", str(run_dir), "--features")
    assert result.returncode == 0, result.stderr
    sizes = {"train": 512, "val": PRISTINE_EVAL, "test": PRISTINE_EVAL}
    for split, n in sizes.items():
        with np.load(run_dir / "outputs" / f"{split}.npz") as out:
            assert out["local_logits"].shape == (n, 10) and out["local_logits"].dtype == np.float32
            assert out["cloud_logits"].shape == (n, 10) and out["cloud_logits"].dtype == np.float32
            assert out["labels"].shape == (n,) and out["features"].shape == (n, 14, 14, 32)
            assert np.all(np.isfinite(out["cloud_logits"]))
    with np.load(run_dir / "outputs" / "val.npz") as out:
        best = max(rows, key=lambda r: r["val_accuracy_mean"])
        assert int(out["epoch"]) == best["epoch"]
        # the collected validation outputs are the best epoch's validation accuracies
        for exit_name in ("local", "cloud"):
            collected = (out[f"{exit_name}_logits"].argmax(1) == out["labels"]).mean()
            assert np.isclose(collected, best[f"val_accuracy_{exit_name}"], atol=1e-3)

    before = (run_dir / "config.json").read_text()
    result = _main(capsys, *TRAIN, "--epochs", "2", "--out", str(run_dir), "--local-weight", "0.3")
    _assert_usage_error(result, "another configuration")
    assert (run_dir / "config.json").read_text() == before


# The TRAIN run, killed by SIGKILL once epoch 2 has trained and before it is checkpointed.
KILLED_IN_EPOCH_2 = r"""
import os, signal, sys
from pathlib import Path
from ddnn_jax.core.config import TrainConfig
from ddnn_jax.jobs.training import run_training

def kill(epoch):
    if epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)

config = TrainConfig(
    dataset="fashion_mnist", epochs=2, batch_size=128, seed=0, limit_train=512, limit_eval=1000
)
run_training(config, Path(sys.argv[1]), on_epoch_trained=kill)
"""


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(tmp_path, two_epoch_run, capsys):
    killed = tmp_path / "killed"
    crash = subprocess.run(
        [sys.executable, "-c", KILLED_IN_EPOCH_2, str(killed)], capture_output=True, text=True, timeout=900
    )
    assert crash.returncode == -9, crash.stderr
    assert [r["epoch"] for r in _metrics(killed)] == [1]
    resumed = _main(capsys, *TRAIN, "--epochs", "2", "--out", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert _metrics(killed) == _metrics(two_epoch_run)


def test_the_edge_capacity_flags_reach_the_model():
    from ddnn_jax import cli
    from ddnn_jax.cli.configs import train_config_from
    from ddnn_jax.core.training import build_model

    args = cli.build_parser().parse_args(["study", "--edge-channels", "8", "--local-hidden", "16"])
    config = train_config_from(args)
    assert (config.edge_channels, config.local_hidden) == (8, 16)
    model = build_model(config, 10)
    assert (model.edge_channels, model.local_hidden) == (8, 16)
