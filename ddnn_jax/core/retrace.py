"""A guard against silent recompilation of the long-running compiled programs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class RetraceError(RuntimeError):
    """A program meant to compile once was traced again: its shapes or static values changed."""


def trace_once(fn: F) -> F:
    """Wraps a function about to be jitted so that a second trace of *this* instance raises.

    ``chex.assert_max_traces`` counts traces per code object, which the closures built once per
    run (the epoch program, the router grid) share across runs; this counter is per instance.
    """
    traces = 0

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        nonlocal traces
        traces += 1
        if traces > 1:
            raise RetraceError(
                f"{fn.__name__} was traced {traces} times: it recompiles when its argument "
                "shapes, dtypes or shardings change, which they must not within a run"
            )
        return fn(*args, **kwargs)

    return traced  # type: ignore[return-value]
