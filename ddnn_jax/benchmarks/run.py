"""Where the time of a whole ``ddnn run`` goes, stage by stage.

    ddnn bench run --out RUN_DIR [any flag of ddnn run]

Runs (or resumes) ``ddnn run`` with the given flags and prints one JSON line per stage (the DDNN's
training and collection, reading the outputs, each router family with its compile and train
seconds, each weight-sweep run, inference timing, evaluate, report), then a total: the stages are
consecutive, so they add up to the measured wall time. The total also counts the XLA programs
this process compiled and those it read from the persistent compilation cache: a second run of
the same shapes into a new directory should compile none.

The command line parses the flags and configures the runtime; ``time_run`` takes the configs.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

from ddnn_jax.common import runtime
from ddnn_jax.common.progress import Progress
from ddnn_jax.core.config import TrainConfig
from ddnn_jax.jobs.run import RunPlan, StageClock, run


def time_run(
    config: TrainConfig, out: Path, plan: RunPlan = RunPlan(), progress: Progress = Progress()
) -> None:
    """Runs ``jobs.run.run(config, out, plan)`` and prints its stages' times as JSON lines.

    Args:
      config: the DDNN's training config.
      out: the run directory (an existing run there is resumed).
      plan: the routers and side studies of the run.
      progress: where the run's own progress goes; it is printed on stderr, since stdout carries
        the JSON lines only.
    """
    started = time.perf_counter()
    counter = runtime.CompileCounter()
    clock = StageClock()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON lines only
        run(config, out, plan, progress=progress, clock=clock)
    wall = time.perf_counter() - started
    counter.close()
    common = {"run": str(out), **runtime.describe()}
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
