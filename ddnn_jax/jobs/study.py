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
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.core.config import TrainConfig
from ddnn_jax.core.families import calibrated, curve_name
from ddnn_jax.jobs.run import RunPlan, default_inputs, run, together
from ddnn_jax.rundir.records import (
    Results,
    RunDir,
    StudyDir,
    read_json,
    read_results,
    read_run_record,
    write_json,
    write_text,
)
from ddnn_jax.stages.report import HEADLINE_TARGETS, draw_figure, pct, significant, style
from ddnn_jax.stages.train import run_trainings

CONFIDENCE = 0.95
# What may differ between the runs of one study: the seed, and where each host keeps its data.
NOT_SHARED = ("seed", "data_dir", "download")
HEADLINE = (
    calibrated(curve_name("logits")),
    calibrated(curve_name("logits-score")),
    curve_name("logits"),
    "entropy",
    "random",
    "oracle",
)
# Fig. 6.17 from full runs: what the local weight w is correlated with, across seeds.
WEIGHT_MEASURES = {
    "edge-only": lambda r: r["edge_only_accuracy"],
    "cloud-only": lambda r: r["cloud_only_accuracy"],
    "entropy at L0=0.54": lambda r: _accuracy_at(r, "entropy", 0.54),
    "router (calibrated) at L0=0.54": lambda r: _accuracy_at(r, calibrated(curve_name("logits")), 0.54),
}


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


def _json(value: Any) -> Any:
    """As it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _shared(train: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(train).items() if k not in NOT_SHARED}


def study_identity(config: TrainConfig, plan: RunPlan) -> dict[str, Any]:
    """What every run of the study shares: the training flags but the seed, and the run plan."""
    plan_fields = dataclasses.asdict(plan)
    del plan_fields["together"]  # how the runs train, not what they are
    return _json({"train": _shared(config), "plan": plan_fields})


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
    them; returns study.md. A study started with other flags is refused, naming the field."""
    seeds = check_seeds(seeds)
    study = StudyDir(out)
    if study.root.exists() and not study.root.is_dir():
        raise UsageError(f"--out {out} is a file: give a directory for the study")
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


# ------------------------------------------------------------------------------------------------
# Aggregation


def mean_interval(values: Sequence[float]) -> tuple[float, list[float] | None]:
    """Mean and its Student-t 95 % interval over seeds (None for a single value)."""
    x = np.asarray(values, np.float64)
    mean = float(x.mean())
    if x.size < 2:
        return mean, None
    sem = float(x.std(ddof=1) / math.sqrt(x.size))
    if sem == 0.0:
        return mean, [mean, mean]
    low, high = scipy.stats.t.interval(CONFIDENCE, x.size - 1, loc=mean, scale=sem)
    return mean, [float(low), float(high)]


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Spearman's rho with a 95 % interval (Fisher z, Bonett-Wright standard error; needs n >= 4)
    and a permutation test's p-value (exact up to 7 runs, else 9,999 seeded pairings); rho is
    None when either side is constant."""
    n = len(x)
    if n < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return {"rho": None, "ci95": None, "p_value": None, "n": n}
    rho = float(scipy.stats.spearmanr(x, y).statistic)
    p_value = scipy.stats.permutation_test(
        (np.asarray(x), np.asarray(y)),
        lambda a, b: scipy.stats.spearmanr(a, b).statistic,
        permutation_type="pairings",
        n_resamples=9999,
        rng=np.random.default_rng(0),
    ).pvalue
    interval = None
    if n >= 4 and abs(rho) < 1.0:
        half = scipy.stats.norm.ppf(0.5 + CONFIDENCE / 2) * math.sqrt((1 + rho**2 / 2) / (n - 3))
        interval = [float(np.tanh(np.arctanh(rho) - half)), float(np.tanh(np.arctanh(rho) + half))]
    return {"rho": rho, "ci95": interval, "p_value": float(p_value), "n": n}


def _accuracy_at(results: Results, curve: str, target: float) -> float | None:
    for point in results["curves"].get(curve, []):
        if abs(point["target"] - target) < 1e-6:
            return point["accuracy"]
    return None


def _check_comparable(runs: list[RunDir]) -> list[int]:
    """The runs' seeds, after refusing runs of different datasets or configurations."""
    records = [read_run_record(r) for r in runs]
    first, base = runs[0], records[0]
    for other, record in zip(runs[1:], records[1:], strict=True):
        if record.dataset != base.dataset:
            raise UsageError(
                f"{other} is a {record.dataset} run but {first} a {base.dataset} one: "
                "a study aggregates runs of one dataset"
            )
        difference = first_difference(_json(_shared(base.train)), _json(_shared(record.train)))
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


def _keyed(points, key) -> dict[Any, Any]:
    return {key(p): p for p in points}


def _curves(all_results: list[Results]) -> dict[str, list[dict[str, Any]]]:
    """Per mechanism present in every run, per target present in every run: mean accuracy
    with its interval and mean local rate."""
    names = [n for n in all_results[0]["curves"] if not n.startswith("entropy_at_")]
    names = [n for n in names if all(n in r["curves"] for r in all_results)]
    curves: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        per_run = [_keyed(r["curves"][name], lambda p: round(p["target"], 6)) for r in all_results]
        targets = [t for t in per_run[0] if all(t in run for run in per_run)]
        rows = []
        for t in targets:
            accuracy, interval = mean_interval([run[t]["accuracy"] for run in per_run])
            rows.append(
                {
                    "target": t,
                    "n": len(per_run),
                    "accuracy_mean": accuracy,
                    "accuracy_ci95": interval,
                    "local_rate_mean": float(np.mean([run[t]["local_rate"] for run in per_run])),
                    "local_rate_ci95": mean_interval([run[t]["local_rate"] for run in per_run])[1],
                }
            )
        curves[name] = rows
    return curves


def _summary(all_results: list[Results]) -> dict[str, dict[str, Any]]:
    names = [n for n in all_results[0]["summary"] if all(n in r["summary"] for r in all_results)]
    summary = {}
    for name in names:
        mean, interval = mean_interval([r["summary"][name]["auc"] for r in all_results])
        summary[name] = {"auc_mean": mean, "auc_ci95": interval, "n": len(all_results)}
    return summary


def _difference_over_seeds(differences: list[float]) -> dict[str, Any]:
    mean, interval = mean_interval(differences)
    spread = len(differences) >= 2 and float(np.std(differences)) > 0
    return {
        "difference_mean": mean,
        "difference_ci95": interval,
        "p_value": float(scipy.stats.ttest_1samp(differences, 0.0).pvalue) if spread else None,
        "n": len(differences),
    }


def _auc_differences(all_results: list[Results], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every other calibrated router's AUC minus the per-target logits router's (the thesis's
    choice), paired by seed: does one score match the per-target grid, do other inputs help?"""
    baseline = calibrated(curve_name("logits"))
    if baseline not in summary:
        return []
    rows = []
    for name in summary:
        if name == baseline or not name.endswith("_calibrated"):
            continue
        per_seed = [r["summary"][name]["auc"] - r["summary"][baseline]["auc"] for r in all_results]
        rows.append({"mechanism": name, "baseline": baseline, **_difference_over_seeds(per_seed)})
    return rows


def _comparisons(all_results: list[Results]) -> list[dict[str, Any]]:
    """Each paired difference present in every run: its mean over seeds, t interval and a
    one-sample t test of zero difference."""
    key = lambda c: (round(c["target"], 6), c["mechanism"], c["baseline"])
    per_run = [_keyed(r["comparisons"], key) for r in all_results]
    rows = []
    for k in per_run[0]:
        if not all(k in run for run in per_run):
            continue
        rows.append(
            {
                "target": k[0],
                "mechanism": k[1],
                "baseline": k[2],
                **_difference_over_seeds([run[k]["difference"] for run in per_run]),
                "local_rate_mean": float(np.mean([run[k]["local_rate"] for run in per_run])),
            }
        )
    return rows


def _local_weight(all_results: list[Results], seeds: list[int]) -> dict[str, Any]:
    rows = [
        {"seed": seed, "local_weight": r["local_weight"], **{m: f(r) for m, f in WEIGHT_MEASURES.items()}}
        for seed, r in zip(seeds, all_results, strict=True)
    ]
    known = [row for row in rows if row["local_weight"] is not None]
    correlations = {}
    for measure in WEIGHT_MEASURES:
        pairs = [(row["local_weight"], row[measure]) for row in known if row[measure] is not None]
        correlations[measure] = rank_correlation([w for w, _ in pairs], [v for _, v in pairs])
    return {"runs": rows, "spearman": correlations}


def aggregate(study_dir: Path, seeds: Sequence[int] | None = None) -> Path:
    """Aggregates the study's runs (``seeds``' runs, or every run directory under it) into
    study.json and study.md; returns study.md."""
    study = StudyDir(study_dir)
    if not study.root.is_dir():
        raise UsageError(f"{study_dir} is not a directory of runs: give the study's --out directory")
    runs = [study.seed_run(s) for s in seeds] if seeds is not None else study.runs()
    if not runs:
        raise UsageError(
            f"{study_dir} holds no runs (folders with a config.json): make them with "
            f"'ddnn study --seeds 0,1,2 --out {study_dir}' or 'ddnn run --out {study_dir}/seed_S'"
        )
    found_seeds = _check_comparable(runs)
    all_results = [read_results(r) for r in runs]
    for other, results in zip(runs[1:], all_results[1:], strict=True):
        difference = first_difference(all_results[0]["evaluation_config"], results["evaluation_config"])
        if difference:
            raise UsageError(
                f"{runs[0]} and {other} were evaluated differently ({difference}): "
                "rerun 'ddnn evaluate' on both with the same flags"
            )
    value = {
        "dataset": all_results[0]["dataset"],
        "seeds": found_seeds,
        "confidence": CONFIDENCE,
        "runs": [
            {
                "seed": seed,
                "run": str(r.root.relative_to(study.root)),
                "local_weight": res["local_weight"],
                "best_epoch": res["best_epoch"],
                "edge_only_accuracy": res["edge_only_accuracy"],
                "cloud_only_accuracy": res["cloud_only_accuracy"],
                "test_size": res["test_size"],
            }
            for seed, r, res in zip(found_seeds, runs, all_results, strict=True)
        ],
        "curves": _curves(all_results),
        "summary": (summary := _summary(all_results)),
        "auc_differences": _auc_differences(all_results, summary),
        "comparisons": _comparisons(all_results),
        "local_weight": _local_weight(all_results, found_seeds),
    }
    write_json(study.results, value)
    return write_study_report(study, value)


# ------------------------------------------------------------------------------------------------
# study.md


def _pm(mean: float, interval: list[float] | None) -> str:
    if interval is None:
        return pct(mean)
    return f"{pct(mean)} ± {100 * (interval[1] - interval[0]) / 2:.2f}"


def _headline_table(value: dict[str, Any]) -> list[str]:
    rows = [
        "| mechanism | " + " | ".join(f"L0={t}: accuracy % (local %)" for t in HEADLINE_TARGETS) + " | AUC |",
        "|---" * (len(HEADLINE_TARGETS) + 2) + "|",
    ]
    for name in HEADLINE:
        if name not in value["curves"]:
            continue
        at = {round(p["target"], 6): p for p in value["curves"][name]}
        cells = []
        for t in HEADLINE_TARGETS:
            p = at.get(round(t, 6))
            cells.append(
                "–"
                if p is None
                else f"{_pm(p['accuracy_mean'], p['accuracy_ci95'])} ({pct(p['local_rate_mean'])})"
            )
        auc = value["summary"].get(name)
        auc_cell = "–" if auc is None else f"{auc['auc_mean']:.4f} {_interval(auc['auc_ci95'], 4)}"
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {auc_cell} |")
    return rows


def _interval(interval: list[float] | None, digits: int = 2, scale: float = 1.0) -> str:
    if interval is None:
        return ""
    return f"[{scale * interval[0]:.{digits}f}, {scale * interval[1]:.{digits}f}]"


def _difference_table(value: dict[str, Any]) -> list[str]:
    rows = [
        "| mechanism | vs | L0 | difference (points), mean over seeds | 95 % interval | t-test p |",
        "|---|---|---|---|---|---|",
    ]
    for c in value["comparisons"]:
        if c["mechanism"] not in HEADLINE[:2] or round(c["target"], 6) not in HEADLINE_TARGETS:
            continue
        ci = c["difference_ci95"]
        p_value = "–" if c["p_value"] is None else f"{c['p_value']:.3g}"
        mark = " (one seed)" if ci is None else ("" if significant(ci) else " (n.s.)")
        rows.append(
            f"| {c['mechanism']} | {c['baseline']} | {c['target']:g} | {100 * c['difference_mean']:+.2f}"
            f"{mark} | {_interval(ci, 2, 100)} | {p_value} |"
        )
    return rows


def _draw_curves(value: dict[str, Any]):
    def draw(ax):
        for name in HEADLINE:
            points = sorted(value["curves"].get(name, []), key=lambda p: p["local_rate_mean"])
            if not points:
                continue
            x = [100 * p["local_rate_mean"] for p in points]
            y = [100 * p["accuracy_mean"] for p in points]
            line_style = style(name)
            ax.plot(x, y, label=name, **line_style)
            if all(p["accuracy_ci95"] is not None for p in points):
                low = [100 * p["accuracy_ci95"][0] for p in points]
                high = [100 * p["accuracy_ci95"][1] for p in points]
                ax.fill_between(x, low, high, color=line_style["color"], alpha=0.15, linewidth=0)
        ax.set_xlabel("local classification rate (%), mean over seeds")
        ax.set_ylabel("overall accuracy (%)")
        ax.set_title(f"{value['dataset']}: {len(value['seeds'])} seeds, mean and 95 % interval")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    return draw


def _draw_local_weight(value: dict[str, Any]):
    section = value["local_weight"]

    def draw(ax):
        for measure in WEIGHT_MEASURES:
            pairs = [
                (row["local_weight"], row[measure])
                for row in section["runs"]
                if row["local_weight"] is not None and row[measure] is not None
            ]
            if not pairs:
                continue
            rho = section["spearman"][measure]["rho"]
            label = f"{measure} (rho {'–' if rho is None else f'{rho:+.2f}'})"
            ax.scatter([w for w, _ in pairs], [100 * v for _, v in pairs], label=label, s=18)
        ax.set_xlabel("local weight w of the run")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Fig. 6.17 from the study's full-length runs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    return draw


def write_study_report(study: StudyDir, value: dict[str, Any]) -> Path:
    """study.md and its figures, from the aggregate alone."""
    study.figures.mkdir(parents=True, exist_ok=True)
    draw_figure(_draw_curves(value), study.figure("curves"))
    draw_figure(_draw_local_weight(value), study.figure("local_weight"))
    lines = [
        f"# DDNN offloading study: {value['dataset']}, seeds {', '.join(map(str, value['seeds']))}",
        "",
        f"{len(value['runs'])} full runs; every number is a mean over seeds ± the half-width of "
        "its Student-t 95 % interval. All numbers are in `study.json`.",
        "",
        f"![curves]({study.figure('curves').relative_to(study.root)})",
        "",
        *_headline_table(value),
        "",
        "## Every calibrated router against the per-target router on logits: AUC, paired by seed",
        "",
        "| mechanism | minus | AUC difference, mean | 95 % interval | t-test p |",
        "|---|---|---|---|---|",
        *(
            f"| {d['mechanism']} | {d['baseline']} | {d['difference_mean']:+.4f} | "
            f"{_interval(d['difference_ci95'], 4)} | "
            f"{'–' if d['p_value'] is None else format(d['p_value'], '.3g')} |"
            for d in value["auc_differences"]
        ),
        "",
        "## Paired differences (per run: same test samples; across runs: t interval of the mean)",
        "",
        *_difference_table(value),
        "",
        "n.s.: the interval over seeds spans zero.",
        "",
        "## Local weight w vs accuracy (Fig. 6.17)",
        "",
        f"![local weight]({study.figure('local_weight').relative_to(study.root)})",
        "",
        "| measure | Spearman rho | 95 % interval | p | runs |",
        "|---|---|---|---|---|",
    ]
    for measure, c in value["local_weight"]["spearman"].items():
        rho = "–" if c["rho"] is None else f"{c['rho']:+.3f}"
        interval = _interval(c["ci95"], 3) or ("– (needs 4 runs)" if c["n"] < 4 else "–")
        p_value = "–" if c["p_value"] is None else f"{c['p_value']:.3g}"
        lines.append(f"| {measure} | {rho} | {interval} | {p_value} | {c['n']} |")
    write_text(study.report, "\n".join(lines) + "\n")
    return study.report
