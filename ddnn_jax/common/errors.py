"""Errors the CLI reports as one line: UsageError exits with 2, TrainingDiverged with 1."""


class UsageError(Exception):
    """Bad input: the message names the problem and how to fix it."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""
