"""``ddnn run``: train -> collect -> route -> evaluate -> report, resumable stage by stage.

Training resumes from its last checkpoint, collection is skipped when the outputs come from the
current best epoch, a router family is skipped when it holds the same configuration trained on
the same outputs, and evaluate/report (seconds) are always redone from the files. An interrupted
run therefore continues where it stopped when the same command is given again.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax

from ddnn_jax.common.progress import Progress
from ddnn_jax.core.config import TrainConfig
from ddnn_jax.core.families import INPUT_KINDS, Family, select_families
from ddnn_jax.core.mechanisms import HEADLINE_TARGETS, REFERENCE_TARGET
from ddnn_jax.core.router_net import DEFAULT_TARGETS, DEPTH_PRESETS, RouterConfig
from ddnn_jax.jobs.out_of_fold import out_of_fold
from ddnn_jax.jobs.training import run_training, run_trainings
from ddnn_jax.rundir import (
    RunDir,
    as_run,
    check_for_training,
    locked,
    outputs_complete,
    read_family,
    read_outputs,
    write_json,
)
from ddnn_jax.stages.collect import collect
from ddnn_jax.stages.evaluate import evaluate
from ddnn_jax.stages.report import report
from ddnn_jax.stages.route import route
from ddnn_jax.stages.timing import InferenceBenchConfig, time_inference
from ddnn_jax.stages.train import together_by_default


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Which routers and side studies ``ddnn run`` produces besides the DDNN itself."""

    targets: tuple[float, ...] = DEFAULT_TARGETS  # grid of the logits routers
    inputs: tuple[str, ...] | None = None  # None: default_inputs() for this backend
    # Registered family names and sets ('default', 'variants', 'all'); the sets' families are
    # those whose input kind is in ``inputs``. None: ('default',).
    families: tuple[str, ...] | None = None
    # High-dimensional inputs cost far more per epoch: a short grid and fewer epochs for them.
    heavy_targets: tuple[float, ...] = HEADLINE_TARGETS
    heavy_max_epochs: int = 15
    ablations: bool = True  # oracle labels (5.2), depth (6.3) and dropout (6.4) at L0 = 0.54
    sweep_weights: tuple[float, ...] = (0.2, 0.5, 0.8)  # Fig. 6.17; empty to skip
    sweep_seeds: int = 2  # runs per weight
    sweep_epochs: int = 2  # short runs, stated on the figure
    sweep_limit_train: int = 5000
    router_seed: int = 0
    inference_timing: bool = True  # Fig. 6.5 (bench_inference.json)
    # Train runs of equal shapes (the sweep's, a study's seeds) as one program with a run axis;
    # None: on an accelerator, not on CPU. How, not what: the numbers are the same either way.
    together: bool | None = None


def default_inputs() -> tuple[str, ...]:
    """Every input kind on an accelerator; no CNN routers on CPU, where a CNN router trained on
    every split's feature maps would cost more than the DDNN itself (``--inputs`` adds them)."""
    on_cpu = jax.default_backend() == "cpu"
    return tuple(name for name, kind in INPUT_KINDS.items() if not (on_cpu and kind.cnn))


def router_config(family: Family, plan: RunPlan) -> RouterConfig:
    """The RouterConfig a registered family gets under this plan."""
    heavy = family.kind.high_dimensional
    if family.grid == "reference":
        targets: tuple[float, ...] = (REFERENCE_TARGET,)
    else:
        targets = plan.heavy_targets if heavy else plan.targets
    config = RouterConfig(
        inputs=family.inputs,
        labels=family.labels,
        objective=family.objective,
        loss=family.loss,
        targets=targets,
        hidden=DEPTH_PRESETS[family.depth],
        dropout_rate=RouterConfig.dropout_rate if family.dropout_rate is None else family.dropout_rate,
        max_epochs=plan.heavy_max_epochs if heavy else RouterConfig.max_epochs,
        seed=plan.router_seed,
    )
    return dataclasses.replace(config, **dict(family.options))


def planned_families(plan: RunPlan) -> dict[str, RouterConfig]:
    """Every router family of the plan, by directory name: the families it names, and those of
    the sets it names whose input kind is asked for (the ablations unless they are switched
    off). Raises ValueError on a name that is neither a family nor a set."""
    inputs = plan.inputs or default_inputs()
    names = plan.families or ("default",)
    wanted = lambda f: f.name in names or (f.inputs in inputs and (plan.ablations or not f.ablation))
    return {f.name: router_config(f, plan) for f in select_families(names) if wanted(f)}


class StageClock:
    """The wall time of each stage of a run, as consecutive laps from the clock's creation, so
    that they add up to the time the run took (``ddnn bench run`` prints them)."""

    def __init__(self) -> None:
        self.laps: list[dict[str, Any]] = []
        self._last = time.perf_counter()

    def lap(self, stage: str, **details: Any) -> None:
        """Ends the stage ``stage`` now; ``details`` are recorded with it."""
        now = time.perf_counter()
        self.laps.append({"stage": stage, "seconds": now - self._last, **details})
        self._last = now


def _weight_sweep(
    config: TrainConfig, run: RunDir, plan: RunPlan, progress: Progress, clock: StageClock
) -> None:
    """The short runs of Fig. 6.17, each a run directory of its own under weight_sweep/, trained
    together when the plan says so."""
    runs = [
        (
            dataclasses.replace(
                config,
                local_weight=str(weight),
                seed=seed,
                epochs=plan.sweep_epochs,
                limit_train=min(plan.sweep_limit_train, config.limit_train or plan.sweep_limit_train),
            ),
            run.sweep_run(weight, seed),
        )
        for weight in plan.sweep_weights
        for seed in range(plan.sweep_seeds)
    ]
    if not runs:
        return
    progress.stage(f"[3/5] local-weight sweep: {len(runs)} short runs")
    run_trainings(runs, together=together(plan), progress=progress)
    clock.lap("sweep train")
    for _, sweep_run in runs:
        if not outputs_complete(sweep_run, with_features=False):
            collect(sweep_run, with_features=False, progress=progress)
    clock.lap("sweep collect")


def together(plan: RunPlan) -> bool:
    """Whether this plan trains runs of equal shapes as one program."""
    return together_by_default() if plan.together is None else plan.together


def run(
    config: TrainConfig,
    run_dir: RunDir | Path,
    plan: RunPlan = RunPlan(),
    progress: Progress = Progress(),
    clock: StageClock | None = None,
) -> Path:
    """Runs every stage of the plan on ``run_dir``, resuming what is done: ``ddnn run``.

    Args:
      config: the DDNN's training configuration.
      run_dir: a new run directory, or one this configuration made before.
      plan: the router families, grids and side studies besides the DDNN itself.
      progress: where stage lines, epoch lines and bars go.
      clock: if given, records the wall time of each stage (``ddnn bench run``).
    Returns:
      The path of the run's ``report.md``.
    """
    run = as_run(run_dir)
    config.validate()
    check_for_training(run)
    with locked(run, "run"):
        return _run(config, run, plan, progress, clock or StageClock())


def _run(config: TrainConfig, run: RunDir, plan: RunPlan, progress: Progress, clock: StageClock) -> Path:
    plan = dataclasses.replace(plan, inputs=plan.inputs or default_inputs())
    families = planned_families(plan)
    needs_features = any(f.kind.needs_features for f in families.values())
    progress.stage(f"[1-2/5] training {run} and collecting its per-sample outputs")
    run_training(config, run, progress=progress)
    clock.lap("ddnn train")
    if not outputs_complete(run, with_features=needs_features):
        collect(run, with_features=needs_features, progress=progress)
    clock.lap("ddnn collect")
    if any(f.fit_split == "oof" for f in families.values()):
        out_of_fold(run, together=together(plan), progress=progress)
        clock.lap("out-of-fold DDNNs")
    outputs = read_outputs(run, need_features=needs_features)  # once, for every family
    clock.lap("read outputs")
    for name, family in families.items():
        progress.stage(f"[3/5] router family {name}")
        seconds = read_family(route(run, family, name=name, progress=progress, outputs=outputs)).seconds
        clock.lap(f"router {name}", **{f"{part}_seconds": value for part, value in seconds.items()})
    del outputs
    _weight_sweep(config, run, plan, progress, clock)
    if plan.inference_timing and not run.bench_inference.is_file():
        progress.stage("[4/5] timing inference per mechanism (Fig. 6.5)")
        write_json(run.bench_inference, time_inference(InferenceBenchConfig(run=run.root)))
        clock.lap("inference timing")
    write_json(run.run_plan, dataclasses.asdict(plan))
    progress.stage("[4/5] evaluating")
    evaluate(run)
    clock.lap("evaluate")
    progress.stage("[5/5] writing the report")
    path = report(run)
    clock.lap("report")
    return path
