"""Property-based tests of the CLI's argument handling: whatever a flag is given, a command
that cannot run ends in exactly one line on stderr and exit 2, never a traceback."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddnn_jax import cli

# Text a user might type: numbers, separators, signs, words, NaN and friends, empty pieces.
PIECES = st.sampled_from(
    ["0", "1", "0.3", "-1", "1e9", "nan", "inf", "", ",", ",,", " ", "none", "x", "0.54"]
)
VALUES = st.lists(PIECES, max_size=5).map("".join) | st.text(max_size=12)
FLAGS = {
    "train": ["--epochs", "--batch-size", "--local-weight", "--seed", "--limit-train", "--dataset"],
    "route": ["--grid", "--inputs", "--dropout", "--max-epochs", "--depth", "--labels", "--name"],
    "evaluate": ["--tau"],
    "study": ["--seeds", "--epochs", "--grid"],
}


def _argv(command: str, flag: str, value: str, target: str) -> list[str]:
    where = {"train": "--out", "study": "--out"}.get(command, "--run")
    extra = ["--seeds", "0"] if command == "study" and flag != "--seeds" else []
    return [command, flag, value, where, target, *extra]


@pytest.fixture(scope="module")
def a_file(tmp_path_factory):
    """A path that is a file: no command can run on it, so each must stop with exit 2."""
    path = tmp_path_factory.mktemp("cli") / "a_file"
    path.write_text("not a run")
    return str(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(sorted(FLAGS)), data=st.data(), value=VALUES)
def test_any_flag_value_ends_in_one_line_and_exit_2(a_file, capsys, command, data, value):
    flag = data.draw(st.sampled_from(FLAGS[command]))
    capsys.readouterr()
    code = cli.main(_argv(command, flag, value, a_file))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (command, flag, value, err)
    assert len(err) == 1 and err[0].startswith("ddnn: error: "), err
