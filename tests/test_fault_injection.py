"""Fault injection: every kind of file in a real run directory truncated, overwritten with
garbage or deleted, then the stage that reads it run again. Each case must end in a repair
(exit 0 and the artefact whole again) or one line on stderr with exit 2: never a traceback,
never exit 0 over a damaged input."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import PRISTINE_EVAL
from conftest import PRISTINE_FLAGS as FLAGS
from conftest import PRISTINE_PLAN as PLAN
from ddnn_jax import cli
from ddnn_jax.jobs.check import DAMAGED, MISSING, OK, STALE, check

ROUTE = ["--grid", "0.5", "--quiet"]


def _damage(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
    elif how == "truncate":  # to half, inside a line or a value (a cut after a whole JSON line
        # would leave a shorter file that is still whole)
        data = path.read_bytes()
        cut = max(1, len(data) // 2)
        while cut > 1 and data[cut - 1 : cut] in (b"\n", b"}"):
            cut -= 1
        path.write_bytes(data[:cut])
    else:  # garbage of the same length
        path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, np.uint8).tobytes())


def _largest_checkpoint_file(run: Path, epoch: int) -> Path:
    files = [p for p in (run / "checkpoints" / str(epoch)).rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


# (file, command that reads it, outcome): 'repair' means exit 0 and a readable artefact again.
CASES = {
    "config.json": (lambda r: r / "config.json", ["collect"], "refused"),
    "metrics.jsonl": (lambda r: r / "metrics.jsonl", ["train", *FLAGS], "refused"),
    "outputs": (lambda r: r / "outputs" / "test.npz", ["route", *ROUTE], "refused"),
    "router.json": (lambda r: r / "routers" / "logits" / "router.json", ["route", *ROUTE], "repair"),
    "scores.npz": (lambda r: r / "routers" / "logits" / "scores.npz", ["route", *ROUTE], "repair"),
    "results.json": (lambda r: r / "results.json", ["report"], "refused"),
    "checkpoint metrics": (lambda r: r / "checkpoints" / "2" / "metrics" / "metrics", ["collect"], "refused"),
    "run_plan.json": (lambda r: r / "run_plan.json", ["run", *FLAGS, *PLAN], "repair-run"),
}


# what ``ddnn check`` calls the artefact each damaged file belongs to
CHECKED = {
    "config.json": "config.json",
    "metrics.jsonl": "metrics.jsonl",
    "outputs": "outputs/",
    "router.json": "routers/logits/",
    "scores.npz": "routers/logits/",
    "results.json": "results.json",
    "checkpoint metrics": "checkpoints/",
}


def _expected_check(kind: str, how: str, outcome: str) -> str:
    """What ``ddnn check`` must say of the artefact after the command: repaired, or still bad."""
    if outcome == "repair":
        return OK
    # a whole file gone is missing; one file of an artefact gone leaves it damaged
    return (
        MISSING if how == "delete" and kind in ("config.json", "metrics.jsonl", "results.json") else DAMAGED
    )


def _argv(command: list[str], run: Path) -> list[str]:
    flag = "--out" if command[0] in ("train", "run") else "--run"
    return [*command, flag, str(run)]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncate", "garbage", "delete"])
@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_damaged_file_is_repaired_or_refused_in_one_line(pristine, tmp_path, capsys, kind, how):
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    where, command, outcome = CASES[kind]
    _damage(where(run), how)
    capsys.readouterr()
    code = cli.main(_argv(command, run))
    err = capsys.readouterr().err.strip().splitlines()
    findings = {f.artefact: f.status for f in check(run)}  # whatever the damage, no crash
    if kind in CHECKED:
        assert findings[CHECKED[kind]] == _expected_check(kind, how, outcome), findings
    if outcome == "repair-run":
        assert code == 0, err
        assert json.loads((run / "run_plan.json").read_text())["inputs"] == ["logits"]
    elif outcome == "repair":
        assert code == 0, err
        assert json.loads((run / "routers" / "logits" / "router.json").read_text())["config"]["targets"] == [
            0.5
        ]
        with np.load(run / "routers" / "logits" / "scores.npz") as scores:
            assert scores["test"].shape == (1, PRISTINE_EVAL)
        assert cli.main(["evaluate", "--run", str(run)]) == 0
    else:
        assert code == 2 and len(err) == 1 and err[0].startswith("ddnn: error: "), err
        assert "'ddnn " in err[0] or "delete" in err[0] or "restore" in err[0], err  # names the fix


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(pristine, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    _damage(_largest_checkpoint_file(run, 2), "garbage")
    capsys.readouterr()
    assert cli.main(["train", *FLAGS, "--out", str(run), "--quiet"]) == 0
    assert "the checkpoint of epoch 2 is damaged" in capsys.readouterr().err  # and moved aside
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    pristine_rows = [json.loads(line) for line in (pristine / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] == pytest.approx(pristine_rows[1]["train_loss"])  # epoch 2 retrained alike


@pytest.mark.slow
def test_a_damaged_best_checkpoint_is_refused_by_collect(pristine, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    best = int(np.load(run / "outputs" / "test.npz")["epoch"])
    for path in (run / "checkpoints" / str(best)).rglob("*"):
        if path.is_file() and path.stat().st_size > 1000:
            _damage(path, "garbage")
    capsys.readouterr()
    assert cli.main(["collect", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"checkpoint of epoch {best} is damaged" in err[0], err
    from ddnn_jax.jobs.check import DAMAGED, check  # and check does not call it ok

    (finding,) = [f for f in check(run) if f.artefact == "checkpoints/"]
    assert finding.status == DAMAGED and f"restore checkpoints/{best} from a copy" in finding.repair


@pytest.mark.slow
def test_outputs_record_the_weights_they_come_from(pristine, tmp_path):
    from ddnn_jax.rundir import RunDir, best_checkpoint, outputs_complete, read_outputs, write_outputs

    run = RunDir(tmp_path / "run")
    shutil.copytree(pristine, run.root)
    epoch, digest = best_checkpoint(run)
    outputs = read_outputs(run)
    assert outputs["test"].epoch == epoch and len(digest) == 64 and outputs["test"].checkpoint == digest
    assert outputs_complete(run, with_features=False)
    # outputs of the same epoch but other weights (a retrained epoch, a nondeterministic GPU)
    write_outputs(run, {s: dataclasses.replace(o, checkpoint="0" * 64) for s, o in outputs.items()})
    assert not outputs_complete(run, with_features=False)
    assert next(f for f in check(run.root) if f.artefact == "outputs/").status == STALE
