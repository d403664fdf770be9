"""Property-based tests of the CLI's argument handling: a bad value of any flag, given with
everything else valid (a new run directory to train into, a run to route or evaluate), ends in
exactly one line on stderr that names the flag, exit 2 and nothing written, never a traceback.
Everything else being valid, each case fails if that flag's check were removed."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_tiny_run
from ddnn_jax import cli
from ddnn_jax.core.config import TrainConfig
from ddnn_jax.core.families import INPUT_KINDS
from ddnn_jax.core.meta import LABELLINGS, labellings_for
from ddnn_jax.core.router_net import DEPTH_PRESETS, MAX_EPOCHS
from ddnn_jax.core.seeds import MAX_SEED
from ddnn_jax.data import DATASETS

# Text without a digit is neither an integer nor a number (nor 'none', 'nan' or 'inf').
NO_DIGITS = st.text(alphabet="xyz,;:-+ ._/", max_size=8)
NON_INTEGERS = NO_DIGITS | st.floats().map(str)  # str(float) always has '.', 'e', 'inf' or 'nan'


def _integers_below(bound: int):
    return st.integers(max_value=bound - 1).map(str) | NON_INTEGERS


def _numbers_outside(accepted):
    return st.floats().filter(lambda x: not accepted(x)).map(str) | NO_DIGITS


IN_UNIT = lambda x: 0.0 <= x <= 1.0
# A grid with an empty piece, a word, or one target outside [0, 1] ('none' falls back to the default).
OUTSIDE_THE_UNIT = st.tuples(st.lists(st.floats(0.0, 1.0).map(str), max_size=3), _numbers_outside(IN_UNIT))
GRIDS = OUTSIDE_THE_UNIT.map(lambda parts: ",".join([*parts[0], parts[1]])) | st.sampled_from(
    ["", ",", "0.3,,0.5", "0.3,", ",0.5"]
)
NAMES = st.text(max_size=6)
BAD_FAMILY_NAMES = (
    NAMES.map(lambda s: "." + s)
    | st.tuples(NAMES, NAMES).map("/".join)
    | st.tuples(NAMES, NAMES).map("\\".join)
    | NAMES.map(lambda s: s + "-calibrated")
    | NAMES.map(lambda s: s + "_calibrated")
)
BAD_INPUTS = st.text(max_size=12).filter(lambda v: not all(p.strip() in INPUT_KINDS for p in v.split(",")))
# A score label under the default grid objective is refused as well as an unknown one.
BAD_LABELS = st.sampled_from(labellings_for("score")) | st.text(max_size=8).filter(
    lambda v: v not in LABELLINGS
)

# (command, flag) -> (bad values, fragments of which the error line must hold one)
CASES = {
    ("train", "--epochs"): (_integers_below(1), ("--epochs",)),
    ("train", "--batch-size"): (_integers_below(1), ("--batch-size",)),
    ("train", "--local-weight"): (_numbers_outside(IN_UNIT), ("--local-weight",)),
    ("train", "--seed"): (_integers_below(0) | st.integers(min_value=MAX_SEED + 1).map(str), ("--seed",)),
    ("route", "--router-seed"): (
        _integers_below(0) | st.integers(min_value=MAX_SEED + 1).map(str),
        ("--router-seed",),
    ),
    ("train", "--edge-channels"): (_integers_below(1), ("--edge-channels",)),
    ("study", "--local-hidden"): (_integers_below(1), ("--local-hidden",)),
    ("train", "--limit-train"): (_integers_below(TrainConfig.batch_size), ("--limit-train",)),
    ("train", "--dataset"): (
        st.text(max_size=12).filter(lambda v: v not in DATASETS),
        ("unknown dataset", "--dataset"),
    ),
    ("route", "--grid"): (GRIDS, ("--grid", "target")),
    ("route", "--inputs"): (BAD_INPUTS, ("--inputs", "router input")),
    ("route", "--dropout"): (_numbers_outside(lambda x: 0.0 <= x < 1.0), ("--dropout", "dropout")),
    ("route", "--max-epochs"): (
        _integers_below(1) | st.integers(min_value=MAX_EPOCHS + 1).map(str),
        ("--max-epochs", "max_epochs"),
    ),
    ("route", "--depth"): (
        st.integers().filter(lambda d: d not in DEPTH_PRESETS).map(str) | NON_INTEGERS,
        ("--depth",),
    ),
    ("route", "--labels"): (BAD_LABELS, ("--labels", "labels")),
    ("route", "--name"): (BAD_FAMILY_NAMES, ("--name",)),
    ("evaluate", "--tau"): (_numbers_outside(lambda x: math.isfinite(x) and x >= 0), ("--tau",)),
    ("study", "--seeds"): (NO_DIGITS | st.sampled_from(["0,,1", "0,x", "1.5"]), ("--seeds",)),
    ("study", "--epochs"): (_integers_below(1), ("--epochs",)),
    ("study", "--grid"): (GRIDS, ("--grid", "target")),
}


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """A run to route and evaluate, and a new directory to train or study into."""
    root = tmp_path_factory.mktemp("cli")
    return {"run": make_tiny_run(root / "run"), "new": root / "new"}


def _argv(command: str, bad: str, places) -> list[str]:
    """The command with valid everything else and ``bad`` (FLAG=VALUE, so that a value that
    starts with '-' is still the flag's)."""
    if command == "train":
        return [command, "--out", str(places["new"]), bad]
    if command == "study":
        seeds = [] if bad.startswith("--seeds=") else ["--seeds", "0"]
        return [command, "--out", str(places["new"]), *seeds, bad]
    return [command, "--run", str(places["run"]), bad]


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(sorted(CASES)), data=st.data())
def test_a_bad_flag_value_is_refused_in_one_line_that_names_it(places, capsys, case, data):
    command, flag = case
    values, fragments = CASES[case]
    value = data.draw(values, label="value")
    before = _files(places["run"])
    capsys.readouterr()
    code = cli.main(_argv(command, f"{flag}={value}", places))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (command, flag, value, err)
    assert len(err) == 1 and err[0].startswith("ddnn: error: "), err
    assert any(fragment in err[0] for fragment in fragments), (flag, err[0])
    assert not places["new"].exists() and _files(places["run"]) == before, "a refused command wrote"


@pytest.mark.parametrize("case", sorted(CASES), ids="{0[0]} {0[1]}".format)
def test_a_double_dash_value_is_refused_and_named(places, capsys, case):
    # argparse makes '--flag=--' an empty list, which no check downstream expects
    command, flag = case
    assert cli.main(_argv(command, f"{flag}=--", places)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"argument {flag}: '--' is not a value" in err[0], err
    assert not places["new"].exists()
