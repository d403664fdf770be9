"""Where the time of a whole ``ddnn run`` goes, stage by stage.

    ddnn bench run --out RUN_DIR [any flag of ddnn run]

Runs (or resumes) ``ddnn run`` with the given flags and prints one JSON line per stage (the DDNN's
training and collection, reading the outputs, each router family with its compile and train
seconds, each weight-sweep run, inference timing, evaluate, report), then a total: the stages are
consecutive, so they add up to the measured wall time. The total also counts the XLA programs
this process compiled and those it read from the persistent compilation cache: a second run of
the same shapes into a new directory should compile none.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

from ddnn_jax.common import runtime


def main(argv: list[str] | None = None) -> None:
    from ddnn_jax import cli
    from ddnn_jax.jobs.run import StageClock, run

    started = time.perf_counter()
    args = cli.build_parser().parse_args(["run", *(sys.argv[1:] if argv is None else argv)])
    cli.configure_runtime(args)
    counter = runtime.CompileCounter()
    clock = StageClock()
    config, plan, progress = cli.train_config_from(args), cli.run_plan_from(args), cli.progress_from(args)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON lines only
        run(config, args.out, plan, progress=progress, clock=clock)
    wall = time.perf_counter() - started
    counter.close()
    common = {"run": str(args.out), **runtime.describe()}
    for lap in clock.laps:
        print(json.dumps({"measure": "run_stage", **lap, **common}))
    total = {
        "measure": "run_total",
        "wall_seconds": wall,
        "stages_seconds": sum(lap["seconds"] for lap in clock.laps),
        "compiled_programs": counter.compiled,
        "programs_from_cache": counter.from_cache,
    }
    print(json.dumps({**total, **common}))


if __name__ == "__main__":
    main()
