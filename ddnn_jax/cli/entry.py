"""The ``ddnn`` entry point: parse, configure the runtime, run one command, and turn what can go
wrong into an exit status with one line on stderr (a bug keeps its traceback)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys

from ddnn_jax.cli.commands import COMMANDS, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE
from ddnn_jax.cli.configs import configure_runtime
from ddnn_jax.cli.parser import build_parser
from ddnn_jax.common.errors import TrainingDiverged, UsageError

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell shows for a reader that went away


def _one_line(text: str) -> str:
    """The message with any unprintable character (a newline in a flag value, say) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _out_of_space(err: BaseException | None) -> bool:
    """Whether a full disk (or quota) caused ``err``: an OSError saying so anywhere in its chain,
    or tensorstore's (Orbax's) error, which carries the OS message in its text."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "Disk quota exceeded" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _silence_stdout() -> None:
    """Points stdout at /dev/null, so that the interpreter's last flush of what is still
    buffered for the closed pipe does not print a second error on the way out."""
    # no file descriptor (a test's capture, say): then nothing is flushed to the pipe either
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    """Runs ``ddnn ARGV`` (default: the process's arguments); returns its exit status."""
    # TensorFlow only prepares data for us; its and tfds's log lines are noise on stderr.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        args = build_parser().parse_args(argv)
        configure_runtime(args)
        code = COMMANDS[args.command](args)
    except UsageError as err:
        print(f"ddnn: error: {_one_line(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as err:
        print(f"ddnn: failed: {_one_line(str(err))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("ddnn: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout's reader has gone (`ddnn check ... | head -1`): end quietly
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as err:
        if not _out_of_space(err):
            raise  # a bug: its traceback is what we need to fix it
        print(
            "ddnn: error: no space left on the device: free some, then rerun the same command",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return code or 0
