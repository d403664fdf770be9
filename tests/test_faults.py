"""Faults a run directory meets: damaged artefacts, a second writer, no network, an occupied
export directory. Each ends in a repair or one line with exit 2, never a traceback."""

import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import lock_held_elsewhere
from ddnn_jax import cli
from ddnn_jax.data import prepare as data
from ddnn_jax.jobs.check import DAMAGED, MISSING, OK, STALE, check
from ddnn_jax.rundir import RunDir


def _one_line_error(capsys, argv, fragment):
    capsys.readouterr()
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines


def _statuses(run) -> dict[str, str]:
    return {f.artefact: f.status for f in check(run)}


@pytest.fixture
def evaluated_run(tiny_run):
    assert cli.main(["route", "--run", str(tiny_run), "--grid", "0.3,0.7", "--max-epochs", "2"]) == 0
    assert cli.main(["evaluate", "--run", str(tiny_run)]) == 0
    assert cli.main(["report", "--run", str(tiny_run)]) == 0
    return tiny_run


def test_check_finds_a_damaged_family_and_its_repair_makes_it_ok(evaluated_run, capsys):
    statuses = _statuses(evaluated_run)
    # a synthetic run has no checkpoints; everything made after them is checked all the same
    assert statuses.pop("checkpoints/") == MISSING
    assert set(statuses.values()) == {OK}
    record = RunDir(evaluated_run).family("logits").record
    record.write_text(record.read_text()[:40])  # truncated
    finding = next(f for f in check(evaluated_run) if f.artefact == "routers/logits/")
    assert finding.status == DAMAGED and finding.repair.startswith("ddnn route --run")
    assert cli.main(shlex.split(finding.repair)[1:]) == 0
    statuses = _statuses(evaluated_run)
    assert statuses["routers/logits/"] == OK
    assert statuses["results.json"] == OK  # the retrained family gives the same scores
    capsys.readouterr()
    assert cli.main(["check", "--run", str(evaluated_run)]) == 1  # checkpoints still missing
    assert "missing  checkpoints/" in capsys.readouterr().out


def test_check_finds_stale_results_and_report(evaluated_run):
    from conftest import write_tiny_outputs

    write_tiny_outputs(RunDir(evaluated_run), seed=5)  # new outputs, same epoch
    statuses = _statuses(evaluated_run)
    assert statuses["routers/logits/"] == STALE and statuses["results.json"] == STALE
    assert cli.main(["route", "--run", str(evaluated_run), "--grid", "0.3,0.7", "--max-epochs", "2"]) == 0
    assert cli.main(["evaluate", "--run", str(evaluated_run)]) == 0
    statuses = _statuses(evaluated_run)
    assert statuses["results.json"] == OK and statuses["report.md"] == STALE


def test_a_second_writer_gets_one_line_naming_the_holder(tiny_run, capsys):
    with lock_held_elsewhere(tiny_run, "collect") as holder:
        _one_line_error(capsys, ["evaluate", "--run", str(tiny_run)], f"in use by process {holder.pid}")
        _one_line_error(capsys, ["route", "--run", str(tiny_run), "--grid", "0.5"], "(ddnn collect)")
    assert not (tiny_run / "routers").exists() and not (tiny_run / "results.json").exists()


def test_a_reader_that_closed_stdout_ends_the_command_quietly(tiny_run, capsys, monkeypatch):
    """`ddnn check ... | head -1`: the pipe's reader has gone when check prints its lines."""
    import sys

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    capsys.readouterr()
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert cli.main(["check", "--run", str(tiny_run)]) == 141
    assert capsys.readouterr().err == ""


def test_download_without_network_fails_at_once(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorflow")
    monkeypatch.setattr(data, "NETWORK_PROBE", ("127.0.0.1", 9))  # nothing listens there
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    argv = ["prepare", "--dataset", "cifar10", "--download", "--data-dir", str(tmp_path / "tfds")]
    _one_line_error(capsys, argv, "cannot download 'cifar10': no network (127.0.0.1 unreachable")


def test_export_refuses_an_occupied_directory(tiny_run, tmp_path, capsys):
    occupied = tmp_path / "weights"
    occupied.mkdir()
    (occupied / "edge.pth").write_bytes(b"keep")
    _one_line_error(capsys, ["export-torch", "--run", str(tiny_run), "--out", str(occupied)], "add --force")
    assert (occupied / "edge.pth").read_bytes() == b"keep"
    _one_line_error(
        capsys, ["export-torch", "--run", str(tiny_run), "--out", str(occupied / "edge.pth")], "is a file"
    )


@pytest.fixture
def small_disk(tmp_path):
    """A 120 KiB tmpfs, where the machine lets the test mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=120k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_ends_in_one_line_and_leaves_nothing_half_written(small_disk, capsys):
    from conftest import make_tiny_run

    run = make_tiny_run(small_disk / "run")
    capsys.readouterr()
    argv = ["route", "--run", str(run), "--grid", "0.3,0.5,0.7", "--max-epochs", "1", "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ddnn: error: no space left on the device: free some, then rerun the same command"]
    assert list((run / "routers").iterdir()) == []  # no family, no staging directory


def test_evaluate_refuses_an_incomplete_or_stale_family(evaluated_run, capsys):
    from conftest import write_tiny_outputs

    record = RunDir(evaluated_run).family("logits").record
    saved = record.read_bytes()
    record.unlink()
    _one_line_error(capsys, ["evaluate", "--run", str(evaluated_run)], "routers/logits is incomplete")
    record.write_bytes(saved)
    write_tiny_outputs(RunDir(evaluated_run), seed=5)  # collected again: the family is stale
    _one_line_error(capsys, ["evaluate", "--run", str(evaluated_run)], "trained on other outputs")


def test_report_refuses_results_of_other_outputs(evaluated_run, capsys):
    from conftest import write_tiny_outputs

    write_tiny_outputs(RunDir(evaluated_run), seed=5)
    _one_line_error(capsys, ["report", "--run", str(evaluated_run)], "scored other outputs")


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels, with one tiny IDAT: opening it is
    cheap, decoding it would allocate width x height bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def test_every_file_read_is_bounded_before_it_is_read(tmp_path, monkeypatch):
    import numpy as np

    from ddnn_jax.cli.configs import given_thresholds
    from ddnn_jax.common import limits
    from ddnn_jax.common.errors import UsageError
    from ddnn_jax.data import read_image_folder
    from ddnn_jax.interop import convert

    # a JSON path that never ends is read no further than the limit
    with pytest.raises(UsageError, match=r"/dev/zero is over 67,108,864 bytes, the most a JSON file"):
        given_thresholds(Path("/dev/zero"))
    # an .npz is refused on the sizes it declares, before anything is decompressed
    np.savez_compressed(tmp_path / "zeros.npz", z=np.zeros(100_000, np.float32))
    assert (tmp_path / "zeros.npz").stat().st_size < 10_000
    with pytest.raises(UsageError, match="declares 400,128 bytes of arrays, over the 100,000"):
        limits.check_npz(tmp_path / "zeros.npz", limit=100_000)
    limits.check_npz(tmp_path / "zeros.npz", limit=500_000)
    # an image is refused on its header's size, not decoded (this one would take 81 MB)
    (tmp_path / "images" / "0").mkdir(parents=True)
    (tmp_path / "images" / "0" / "huge.png").write_bytes(_png_claiming(9_000, 9_000))
    with pytest.raises(UsageError, match="huge.png is 9000x9000 pixels, the run's images are 28x28"):
        read_image_folder(tmp_path / "images", (28, 28, 1), 10)
    # a .pth over the limit is not handed to torch.load
    (tmp_path / "big.pth").write_bytes(bytes(64))
    monkeypatch.setattr(convert, "STATE_DICT_BYTES", 32)
    with pytest.raises(UsageError, match="big.pth is over 32 bytes, the most a PyTorch state dict"):
        convert.load_state_dicts({"cloud": tmp_path / "big.pth"})


def test_import_torch_refuses_a_normalisation_that_is_not_finite():
    from ddnn_jax.common.errors import UsageError
    from ddnn_jax.interop.convert import _channel_values

    for values in ([float("nan")], [float("inf")]):
        with pytest.raises(UsageError, match="--mean values must be finite numbers"):
            _channel_values("--mean", values, 1, False)
    with pytest.raises(UsageError, match="--std values must be positive"):
        _channel_values("--std", [0.0], 1, True)


@pytest.mark.parametrize("folder", ["figures", "edge", "routers", "outputs"])
def test_a_run_folder_that_is_a_symlink_is_refused_not_written_through(tmp_path, folder):
    from ddnn_jax.common.errors import UsageError

    run, elsewhere = RunDir(tmp_path / "run"), tmp_path / "elsewhere"
    run.root.mkdir()
    elsewhere.mkdir()
    (run.root / folder).symlink_to(elsewhere)
    paths = {
        "figures": lambda: run.figure("6.1"),
        "edge": lambda: run.edge_report("router-L0.54-fp32-b1"),
        "routers": lambda: run.family("logits").root,
        "outputs": lambda: run.outputs("test"),
    }
    with pytest.raises(UsageError, match=f"{folder} is a symbolic link: a run writes only inside"):
        paths[folder]()
    (run.root / folder).unlink()
    (run.root / folder).mkdir()
    assert str(paths[folder]()).startswith(str(run.root / folder))


def test_check_lists_what_killed_writes_left_and_clean_removes_it(tiny_run, capsys):
    run = RunDir(tiny_run)
    before = _statuses(run)
    (run.root / ".results.json.k2j4.tmp").write_bytes(bytes(1000))  # a write killed mid-file
    staging = run.root / "routers" / ".logits.x81f.tmp"  # a family killed mid-build
    staging.mkdir(parents=True)
    (staging / "scores.npz").write_bytes(bytes(2500))
    found = {f.artefact: f for f in check(run) if f.status == "leftover"}
    assert set(found) == {".results.json.k2j4.tmp", "routers/.logits.x81f.tmp"}
    assert found["routers/.logits.x81f.tmp"].detail == "2,500 bytes a killed write left"
    assert found[".results.json.k2j4.tmp"].repair == f"ddnn check --run {run} --clean"
    assert cli.main(["check", "--run", str(run)]) == 1
    capsys.readouterr()
    cli.main(["check", "--run", str(run), "--clean"])
    out = capsys.readouterr().out
    assert out.count("removed  ") == 2 and "(2,500 bytes)" in out
    assert not staging.exists() and _statuses(run) == before  # nothing else touched


def test_check_reads_edge_reports_and_bottlenecks_as_later_stages_would(tiny_run):
    run = RunDir(tiny_run)
    (run.root / "edge" / "router-L0.5-fp32-b1").mkdir(parents=True)
    (run.root / "edge" / "router-L0.5-fp32-b1" / "edge_report.json").write_text("[1]")
    (run.root / "edge" / "sweep.json").write_text('{"made_from": "' + "0" * 64 + '"}')
    (run.root / "bottlenecks" / "k2-b4-s1").mkdir(parents=True)
    (run.root / "bottlenecks" / "k2-b4-s1" / "bottleneck.json").write_text('{"config": 1}')
    found = {f.artefact: f for f in check(run)}
    assert found["edge/router-L0.5-fp32-b1/edge_report.json"].status == DAMAGED
    assert found["edge/sweep.json"].status == STALE  # measured on other outputs
    damaged = found["bottlenecks/k2-b4-s1/"]
    assert damaged.status == DAMAGED and "not a bottleneck record" in damaged.detail
    assert damaged.repair == f"ddnn bottleneck --run {run} --channels 2 --bits 4 --stride 1"


def test_records_with_fields_of_the_wrong_type_are_refused_by_every_reader(tiny_run, capsys):
    import json

    from ddnn_jax.rundir.records import FamilyRecord
    from ddnn_jax.rundir.schema import wrong_field

    assert cli.main(["route", "--run", str(tiny_run), "--grid", "0.3,0.7", "--max-epochs", "2"]) == 0
    assert cli.main(["evaluate", "--run", str(tiny_run)]) == 0
    # results.json: 'curves: null' stops every reader in one line, and check calls it damaged
    results = json.loads((tiny_run / "results.json").read_text())
    (tiny_run / "results.json").write_text(json.dumps({**results, "curves": None}))
    _one_line_error(capsys, ["report", "--run", str(tiny_run)], "curves: expected dict[str, list[Point]]")
    assert {f.artefact: f.status for f in check(tiny_run)}["results.json"] == DAMAGED
    # router.json: each field against its annotation
    record_path = RunDir(tiny_run).family("logits").record
    record = json.loads(record_path.read_text())
    assert wrong_field(FamilyRecord, record) is None
    for field, bad, expected in (
        ("decision_thresholds", "0.1,0.2", "list[float]"),
        ("best_epoch", [1.5, 2], "list[int]"),
        ("seconds", {"train": "fast"}, "dict[str, float]"),
        ("selected", [True], "list[float | None] | None"),
    ):
        assert wrong_field(FamilyRecord, {**record, field: bad}) == f"{field}: expected {expected}"
    record_path.write_text(json.dumps({**record, "decision_thresholds": "0.1,0.2"}))
    (finding,) = [f for f in check(tiny_run) if f.artefact == "routers/logits/"]
    assert finding.status == DAMAGED and "decision_thresholds: expected list[float]" in finding.detail
    _one_line_error(capsys, ["evaluate", "--run", str(tiny_run)], "is not a router family record")


def test_a_writing_stage_clears_leftovers_when_it_takes_the_lock_but_not_the_edges(tiny_run):
    from ddnn_jax.rundir import locked

    run = RunDir(tiny_run)
    (run.root / ".metrics.jsonl.ab12.tmp").write_bytes(bytes(300))
    (run.root / "edge" / "router-L0.5-fp32-b1").mkdir(parents=True)
    in_flight = run.root / "edge" / "router-L0.5-fp32-b1" / ".edge_report.json.cd34.tmp"
    in_flight.write_bytes(bytes(10))  # the edge writes without the lock: maybe being written
    with locked(run, "route logits") as removed:
        assert removed == {run.root / ".metrics.jsonl.ab12.tmp": 300}
    assert in_flight.is_file() and not (run.root / ".metrics.jsonl.ab12.tmp").exists()
    with locked(run, "route logits") as removed:
        assert removed == {}


def test_check_audits_a_study_and_each_seed_s_run(tmp_path):
    from conftest import make_tiny_run

    study = tmp_path / "study"
    for seed in (0, 1):
        make_tiny_run(study / f"seed_{seed}", seed=seed)
    (study / "study_config.json").write_text('{"seeds": [0, 1]}')
    (study / "study.json").write_text("[1]")  # what study --aggregate's readers would choke on
    found = {f.artefact: f for f in check(study)}
    assert found["study_config.json"].status == OK
    assert (
        found["study.json"].status == DAMAGED
        and found["study.json"].repair == f"ddnn study --aggregate {study}"
    )
    assert found["seed_0/config.json"].status == OK and found["seed_1/outputs/"].status == OK
    (study / "study.json").unlink()
    assert {f.artefact: f.status for f in check(study)}["study.json"] == MISSING
