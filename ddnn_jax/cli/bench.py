"""``ddnn bench NAME [flags]``: the benchmarks by name, each a function of its own flags.

Most benchmarks parse their own flags (their module's ``main(argv)``, imported only when chosen);
``run`` takes the flags of ``ddnn run``, which only the command line knows, so they are parsed here
and the built configs handed to ``benchmarks.run.time_run``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ddnn_jax.cli.configs import configure_runtime, progress_from, run_plan_from, train_config_from
from ddnn_jax.cli.flags import run_parser


def _own_flags(module: str) -> Callable[[list[str]], object]:
    """A benchmark that parses its own flags: ``module.main(argv)``."""
    return lambda options: importlib.import_module(module).main(options)


def _time_run(options: list[str]) -> None:
    """``ddnn bench run --out DIR [flags of ddnn run]``."""
    from ddnn_jax.benchmarks.run import time_run

    args = run_parser().parse_args(options)
    configure_runtime(args)
    time_run(train_config_from(args), args.out, run_plan_from(args), progress=progress_from(args))


BENCHMARKS: dict[str, Callable[[list[str]], object]] = {
    "train": _own_flags("ddnn_jax.benchmarks.train"),
    "run": _time_run,
    "inference": _own_flags("ddnn_jax.benchmarks.inference"),
    "router": _own_flags("ddnn_jax.benchmarks.router_grid"),
    "conv": _own_flags("ddnn_jax.benchmarks.conv_in_loop"),
}
