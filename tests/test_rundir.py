"""The run directory: atomic files and directories, strict records, readable errors."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import ddnn_jax
from conftest import lock_held_elsewhere
from ddnn_jax.common.errors import UsageError
from ddnn_jax.core.config import TrainConfig
from ddnn_jax.rundir import (
    SPLITS,
    RunDir,
    RunRecord,
    SplitOutputs,
    atomic_dir,
    locked,
    outputs_fingerprint,
    outputs_source,
    read_outputs,
    read_run_record,
    write_json,
    write_outputs,
    write_run_record,
)


def _record(**changes):
    config = TrainConfig(local_weight="0.25", seed=3, limit_train=100, **changes)
    return RunRecord.resolve(
        config,
        num_classes=10,
        image_shape=(28, 28, 1),
        mean=[0.3],
        std=[0.35],
        split_sizes={"train": 100, "val": 6000, "test": 10000},
    )


def test_run_record_round_trips_through_config_json(tmp_path):
    run = RunDir(tmp_path)
    record = _record(conv="xla", cloud_conv_channels=(8, 8, 8, 8))
    write_run_record(run, record)
    again = read_run_record(run)
    assert again == record
    assert again.train.cloud_conv_channels == (8, 8, 8, 8) and again.local_weight == 0.25
    on_disk = json.loads(run.config.read_text())
    assert on_disk["seed"] == 3 and on_disk["normalization"] == {"mean": [0.3], "std": [0.35]}


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_config_json_names_the_commit_of_the_code(tmp_path):
    checkout = Path(ddnn_jax.__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    run = RunDir(tmp_path)
    write_run_record(run, _record())
    on_disk = json.loads(run.config.read_text())
    assert on_disk["source"]["commit"] == head and isinstance(on_disk["source"]["dirty"], bool)
    assert read_run_record(run).source == on_disk["source"]


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"{}", b"[]", b'{"seed": 1', b"null"])
def test_a_damaged_config_is_one_clear_error(tmp_path, content):
    run = RunDir(tmp_path)
    run.config.write_bytes(content)
    with pytest.raises(UsageError, match="config.json") as err:
        read_run_record(run)
    assert "\n" not in str(err.value) and "train the run again" in str(err.value)


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "family"
    with atomic_dir(target) as staging:
        (staging / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as staging:
        (staging / "a").write_text("half")
        raise RuntimeError("killed while writing")
    assert (target / "a").read_text() == "old"
    with atomic_dir(target) as staging:
        (staging / "b").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["family"]  # no staging or old copy left


def test_strict_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"tau": float("nan")})
    assert not list(tmp_path.iterdir())


def _outputs(epoch, seed=0, features=False):
    rng = np.random.default_rng(seed)
    return SplitOutputs(
        local_logits=rng.normal(size=(6, 3)).astype(np.float32),
        cloud_logits=rng.normal(size=(6, 3)).astype(np.float32),
        labels=rng.integers(0, 3, 6).astype(np.int32),
        epoch=epoch,
        features=rng.normal(size=(6, 2, 2, 4)).astype(np.float32) if features else None,
    )


def test_outputs_say_which_epoch_they_come_from_and_mixed_epochs_are_caught(tmp_path):
    run = RunDir(tmp_path)
    write_outputs(run, {split: _outputs(4, features=True) for split in SPLITS})
    assert outputs_source(run, with_features=True) == (4, "")
    loaded = read_outputs(run, need_features=True)
    np.testing.assert_array_equal(loaded["val"].features, _outputs(4, features=True).features)
    before = outputs_fingerprint(loaded)
    write_outputs(run, {split: _outputs(5) for split in SPLITS})  # replaced as a whole
    assert outputs_source(run, with_features=False) == (5, "")
    assert outputs_fingerprint(read_outputs(run)) != before
    assert sorted(p.name for p in run.outputs_dir.parent.iterdir()) == ["outputs"]  # nothing aside
    with pytest.raises(UsageError, match="no edge features"):
        read_outputs(run, need_features=True)
    # a split from another collection (copied in by hand, or an older version's killed collect)
    with open(run.outputs("val"), "wb") as f:
        np.savez(f, local_logits=np.zeros((6, 3)), cloud_logits=np.zeros((6, 3)), labels=np.zeros(6), epoch=7)
    assert outputs_source(run, with_features=False) is None
    with pytest.raises(UsageError, match="mixes the outputs of epochs .* run 'ddnn collect --run"):
        read_outputs(run)
    run.outputs("test").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UsageError, match="test.npz is damaged .* run 'ddnn collect"):
        read_outputs(run)


def test_a_directory_is_swapped_in_whole(tmp_path):
    target = tmp_path / "family"
    for version in ("old", "new"):
        with atomic_dir(target) as staging:
            (staging / "version").write_text(version)
    assert (target / "version").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["family"]  # neither staging nor old left
    with pytest.raises(RuntimeError), atomic_dir(target) as staging:
        (staging / "version").write_text("broken")
        raise RuntimeError("killed while building")
    assert (target / "version").read_text() == "new"


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    run = RunDir(tmp_path / "run")
    with (
        lock_held_elsewhere(run.root, "train") as holder,
        pytest.raises(UsageError, match=f"in use by process {holder.pid} \\(ddnn train\\)"),
        locked(run, "collect"),
    ):
        pass
        holder.wait()
    with locked(run, "collect"), locked(run, "collect"):  # free again after a kill; re-entrant
        assert "ddnn collect" in run.lock.read_text()


def test_a_directory_made_for_the_lock_alone_is_removed_on_failure(tmp_path):
    run = RunDir(tmp_path / "new")
    with pytest.raises(UsageError), locked(run, "train"):
        raise UsageError("bad flags")
    assert not run.root.exists()
