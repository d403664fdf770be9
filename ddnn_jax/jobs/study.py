"""``ddnn study``: one full run per seed, and their aggregate with Student-t intervals over seeds.

How the runs are made is not the study's business: ``run_study`` makes them one after another
with the pipeline, and ``aggregate`` reads whatever run directories sit under the study (made by
one cluster job per seed, say), provided they differ in nothing but the seed. The aggregate,
``study.json``, holds per mechanism and target the mean accuracy and local rate over seeds with
a 95 % t interval, the same for each curve's AUC and for each paired router-vs-baseline
difference, and the local weight's rank correlation with accuracy (Fig. 6.17 from full runs).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.core.config import TrainConfig
from ddnn_jax.jobs.run import RunPlan, default_inputs, run, together
from ddnn_jax.jobs.study_report import write_study_report
from ddnn_jax.jobs.study_stats import (
    CONFIDENCE,
    auc_differences,
    comparisons_over_seeds,
    curves_over_seeds,
    gap_recovered_differences,
    local_weight_over_seeds,
    reliability_over_seeds,
    summary_over_seeds,
)
from ddnn_jax.jobs.training import run_trainings
from ddnn_jax.rundir import (
    Results,
    RunDir,
    StudyDir,
    read_json,
    read_results,
    read_run_record,
    write_json,
)

# What may differ between the runs of one study: the seed, and where each host keeps its data.
NOT_SHARED = ("seed", "data_dir", "download")


def check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    """The seeds as given, or a UsageError naming what is wrong with the list."""
    if not seeds:
        raise UsageError("--seeds is empty: give comma-separated seeds such as 0,1,2")
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        raise UsageError(f"--seeds repeats {repeated[0]}: give each seed once")
    negative = [s for s in seeds if s < 0]
    if negative:
        raise UsageError(f"--seeds must be non-negative integers, got {negative[0]}")
    return tuple(int(s) for s in seeds)


def as_json(value: Any) -> Any:
    """As it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def shared_fields(train: TrainConfig) -> dict[str, Any]:
    """The training fields every run of a study shares: all but NOT_SHARED."""
    return {k: v for k, v in dataclasses.asdict(train).items() if k not in NOT_SHARED}


def study_identity(config: TrainConfig, plan: RunPlan) -> dict[str, Any]:
    """What every run of the study shares: the training flags but the seed, and the run plan."""
    plan_fields = dataclasses.asdict(plan)
    del plan_fields["together"]  # how the runs train, not what they are
    return as_json({"train": shared_fields(config), "plan": plan_fields})


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """The first field (dotted path) where two JSON values differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"


def run_study(
    config: TrainConfig,
    seeds: Sequence[int],
    out: Path,
    plan: RunPlan = RunPlan(sweep_weights=()),
    progress: Progress = Progress(),
) -> Path:
    """Makes (or resumes) one full ``ddnn run`` per seed under ``out/seed_S/`` and aggregates
    them: ``ddnn study``. A study started with other flags is refused, naming the field.

    Args:
      config: the training configuration every seed shares (its seed field is replaced).
      seeds: one run per seed.
      out: the study directory.
      plan: the plan every seed's run follows.
      progress: where stage lines and bars go.
    Returns:
      The path of ``study.md``."""
    seeds = check_seeds(seeds)
    study = StudyDir(out)
    if study.root.exists() and not study.root.is_dir():
        raise UsageError(f"--out {out} is a file: give a directory for the study")
    if RunDir(out).config.is_file():  # its seed_S runs would be written inside another run
        raise UsageError(f"--out {out} is a run directory: give a new directory for the study")
    plan = dataclasses.replace(plan, inputs=plan.inputs or default_inputs())
    identity = study_identity(config, plan)
    if study.config.is_file():
        recorded = read_json(study.config, f"delete it to start {out} afresh")
        difference = first_difference(recorded, identity)
        if difference:
            raise UsageError(
                f"{out} was started with other flags ({difference}, there vs here): "
                "repeat its flags to resume it, or give another --out"
            )
    else:
        try:
            study.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(
                f"cannot make the study directory {out} ({err.strerror}): give another --out"
            ) from None
        write_json(study.config, identity)
    if together(plan):  # the seeds' DDNNs in one program; each run() then finds its training done
        progress.stage(f"study {out}: training seeds {', '.join(map(str, seeds))} together")
        run_trainings(
            [(dataclasses.replace(config, seed=s), study.seed_run(s)) for s in seeds],
            together=True,
            progress=progress,
        )
    for i, seed in enumerate(seeds, 1):
        progress.stage(f"study {out}: seed {seed} ({i} of {len(seeds)})")
        run(dataclasses.replace(config, seed=seed), study.seed_run(seed), plan, progress)
    return aggregate(out, seeds)


def check_comparable_runs(runs: list[RunDir]) -> list[int]:
    """The runs' seeds, after refusing runs of different datasets or configurations."""
    records = [read_run_record(r) for r in runs]
    first, base = runs[0], records[0]
    for other, record in zip(runs[1:], records[1:], strict=True):
        if record.dataset != base.dataset:
            raise UsageError(
                f"{other} is a {record.dataset} run but {first} a {base.dataset} one: "
                "a study aggregates runs of one dataset"
            )
        difference = first_difference(
            as_json(shared_fields(base.train)), as_json(shared_fields(record.train))
        )
        if difference:
            raise UsageError(
                f"{first} and {other} differ in more than the seed ({difference}): "
                "aggregate runs made with the same flags"
            )
    seeds = [r.seed for r in records]
    for i, seed in enumerate(seeds):
        if seeds.index(seed) != i:
            raise UsageError(f"{runs[seeds.index(seed)]} and {runs[i]} both have seed {seed}: keep one")
    plans = {r: read_json(r.run_plan, "rerun 'ddnn run' on it") for r in runs if r.run_plan.is_file()}
    if plans:
        reference_run, reference = next(iter(plans.items()))
        for other, plan in plans.items():
            difference = first_difference(reference, plan)
            if difference:
                raise UsageError(
                    f"{other} was made with another run plan than {reference_run} ({difference}): "
                    "aggregate runs made with the same flags"
                )
    return seeds


def aggregate(study_dir: Path, seeds: Sequence[int] | None = None) -> Path:
    """Aggregates the study's runs into study.json and study.md, with intervals over seeds.

    Args:
      study_dir: the study directory.
      seeds: the seeds' runs to aggregate; None: every run directory under it.
    Returns:
      The path of ``study.md``."""
    study = StudyDir(study_dir)
    if not study.root.is_dir():
        raise UsageError(f"{study_dir} is not a directory of runs: give the study's --out directory")
    runs = [study.seed_run(s) for s in seeds] if seeds is not None else study.runs()
    if not runs:
        raise UsageError(
            f"{study_dir} holds no runs (folders with a config.json): make them with "
            f"'ddnn study --seeds 0,1,2 --out {study_dir}' or 'ddnn run --out {study_dir}/seed_S'"
        )
    found_seeds = check_comparable_runs(runs)
    all_results = read_evaluated_alike(runs)
    value = {
        "dataset": all_results[0]["dataset"],
        "seeds": found_seeds,
        "confidence": CONFIDENCE,
        "runs": _run_rows(study, runs, found_seeds, all_results),
        "curves": curves_over_seeds(all_results),
        "summary": (summary := summary_over_seeds(all_results)),
        "auc_differences": auc_differences(all_results, summary),
        "gap_recovered_differences": gap_recovered_differences(all_results, summary),
        "comparisons": comparisons_over_seeds(all_results),
        "local_weight": local_weight_over_seeds(all_results, found_seeds),
        "reliability": reliability_over_seeds(all_results),
    }
    write_json(study.results, value)
    return write_study_report(study, value)


def read_evaluated_alike(runs: list[RunDir]) -> list[Results]:
    """The runs' results, after refusing runs evaluated with different flags and runs that hold
    the same outputs (a copy of one seed's run with its seed edited would count twice)."""
    all_results = [read_results(r) for r in runs]
    made_from = [results["made_from"] for results in all_results]
    for i, fingerprint in enumerate(made_from):
        if made_from.index(fingerprint) != i:
            raise UsageError(
                f"{runs[made_from.index(fingerprint)]} and {runs[i]} hold the same outputs: "
                "a study aggregates independent runs, so keep one"
            )
    for other, results in zip(runs[1:], all_results[1:], strict=True):
        difference = first_difference(all_results[0]["evaluation_config"], results["evaluation_config"])
        if difference:
            raise UsageError(
                f"{runs[0]} and {other} were evaluated differently ({difference}): "
                "rerun 'ddnn evaluate' on both with the same flags"
            )
    return all_results


def _run_rows(
    study: StudyDir, runs: list[RunDir], seeds: list[int], all_results: list[Results]
) -> list[dict[str, Any]]:
    """One row per run for study.json: where it is and its standalone numbers."""
    return [
        {
            "seed": seed,
            "run": str(r.root.relative_to(study.root)),
            "local_weight": res["local_weight"],
            "best_epoch": res["best_epoch"],
            "edge_only_accuracy": res["edge_only_accuracy"],
            "cloud_only_accuracy": res["cloud_only_accuracy"],
            "test_size": res["test_size"],
        }
        for seed, r, res in zip(seeds, runs, all_results, strict=True)
    ]
