"""``ddnn compare A B``: are two studies of one protocol, differing in one field (the training
backend, say), equivalent within a margin?

Each side is a study directory (its seeds' run directories, made by ``ddnn study`` or gathered
from elsewhere). For every number both sides report in every run (each exit's test accuracy,
each mechanism's accuracy at each target, each mechanism's AUC), in accuracy points, the
comparison gives the difference of the means B - A with its 90 % Welch interval, a Welch t test
of no difference, and the equivalence test TOST: two one-sided Welch t tests of d <= -m and
d >= m. The verdict is "equivalent within ±m" when TOST rejects both at 5 % (the 90 % interval
lies inside ±m), "different" when the t test rejects no difference at 5 % and TOST does not,
and "undecided" otherwise; with it, the seeds per side at which the observed means and spreads
would decide. The sides are unpaired: the seeds of two frameworks share no random stream.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from ddnn_jax.common.errors import UsageError
from ddnn_jax.jobs.study import as_json, check_comparable_runs, read_evaluated_alike, shared_fields
from ddnn_jax.rundir import Results, RunDir, StudyDir, read_json, read_run_record

ALPHA = 0.05  # each one-sided test of TOST, and the t test of no difference
DEFAULT_MARGIN = 0.5  # accuracy points
MOST_SEEDS = 1000  # seeds per side beyond which a row is called out of reach
EQUIVALENT, DIFFERENT, UNDECIDED = "equivalent", "different", "undecided"


@dataclasses.dataclass(frozen=True)
class Side:
    """One side of the comparison: its directory, what defines its runs, and their results."""

    root: Path
    identity: dict[str, Any]
    seeds: list[int]
    results: list[Results]


def read_side(root: Path) -> Side:
    """A study directory's runs, checked to be alike, and the fields that define them."""
    study = StudyDir(root)
    runs = study.runs()
    if not runs:
        raise UsageError(
            f"{root} holds no runs (folders with a config.json): give a study directory "
            "('ddnn study --out DIR')"
        )
    seeds = check_comparable_runs(runs)
    results = read_evaluated_alike(runs)
    return Side(Path(root), _identity(runs[0], results[0]), seeds, results)


def _identity(run: RunDir, results: Results) -> dict[str, Any]:
    """What makes a run of the side what it is, but its seed: training flags, plan, evaluation."""
    record = read_run_record(run)
    plan = read_json(run.run_plan, "rerun 'ddnn run' on it") if run.run_plan.is_file() else {}
    plan.pop("together", None)  # how runs train, not what they are
    return as_json(
        {
            "dataset": record.dataset,
            "train": shared_fields(record.train),
            "plan": plan,
            "evaluation": results["evaluation_config"],
        }
    )


def differing_fields(a: Any, b: Any, where: str = "") -> list[str]:
    """Every dotted field where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            found += differing_fields(a.get(key), b.get(key), f"{where}.{key}" if where else key)
        return found
    return [] if a == b else [where]


def check_comparable(a: Side, b: Side) -> list[str]:
    """The one field (or none) in which the sides differ; a UsageError otherwise."""
    if a.identity["dataset"] != b.identity["dataset"]:
        raise UsageError(
            f"{a.root} holds {a.identity['dataset']} runs and {b.root} {b.identity['dataset']} "
            "ones: compare studies of one dataset"
        )
    fields = differing_fields(a.identity, b.identity)
    if len(fields) > 1:
        raise UsageError(
            f"{a.root} and {b.root} differ in {len(fields)} fields ({', '.join(fields)}): compare "
            "studies that differ in one field only"
        )
    return fields


# ------------------------------------------------------------------------------------------------
# The statistics of one row


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Difference of means b - a, its standard error and Welch's degrees of freedom."""
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if se > 0 else math.inf
    return float(b.mean() - a.mean()), se, df


def _decide(d: float, se: float, df: float, margin: float) -> dict[str, Any]:
    """TOST and the t test of no difference for a difference ``d`` with standard error ``se``."""
    if se == 0:  # both sides constant: the difference is known exactly
        equivalent, different = abs(d) < margin, d != 0
        p_tost, p_difference = (0.0 if equivalent else 1.0), (0.0 if different else 1.0)
        half = 0.0
    else:
        t = scipy.stats.t(df)
        p_tost = float(max(t.sf((d + margin) / se), t.cdf((d - margin) / se)))
        p_difference = float(2 * t.sf(abs(d) / se))
        half = float(t.ppf(1 - ALPHA) * se)
        equivalent, different = p_tost < ALPHA, p_difference < ALPHA
    verdict = EQUIVALENT if equivalent else DIFFERENT if different else UNDECIDED
    return {
        "difference": d,
        "ci90": [d - half, d + half],
        "p_tost": p_tost,
        "p_difference": p_difference,
        "verdict": verdict,
    }


def seeds_to_decide(a: np.ndarray, b: np.ndarray, margin: float) -> dict[str, Any] | None:
    """The fewest seeds per side at which the observed means and spreads would reach a verdict
    other than "undecided", and that verdict; None beyond MOST_SEEDS."""
    d = float(b.mean() - a.mean())
    sa, sb = a.var(ddof=1), b.var(ddof=1)
    for n in range(2, MOST_SEEDS + 1):
        va, vb = sa / n, sb / n
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / ((va**2 + vb**2) / (n - 1)) if se > 0 else math.inf
        verdict = _decide(d, se, df, margin)["verdict"]
        if verdict != UNDECIDED:
            return {"seeds": n, "verdict": verdict}
    return None


def compare_values(a: list[float], b: list[float], margin: float) -> dict[str, Any]:
    """One row: each side's mean, B - A with its 90 % interval, TOST and the verdict."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.size < 2 or y.size < 2:
        raise UsageError("each side needs at least 2 seeds for a comparison: add runs to the study")
    d, se, df = _welch(x, y)
    return {
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "sd_a": float(x.std(ddof=1)),
        "sd_b": float(y.std(ddof=1)),
        "n_a": int(x.size),
        "n_b": int(y.size),
        **_decide(d, se, df, margin),
        "to_decide": seeds_to_decide(x, y, margin),
    }


# ------------------------------------------------------------------------------------------------
# The rows of two studies


def measures(results: Results) -> dict[tuple[str, str, float | None], float]:
    """Every number of one run the comparison may use, in accuracy points, keyed (kind, name,
    target): both exits, each curve at each target, each summarised mechanism's AUC."""
    found: dict[tuple[str, str, float | None], float] = {
        ("exit", "local", None): 100 * results["edge_only_accuracy"],
        ("exit", "cloud", None): 100 * results["cloud_only_accuracy"],
    }
    for name, points in results["curves"].items():
        if name.startswith("entropy_at_"):  # the local-weight sweep's curves, not a mechanism
            continue
        for point in points:
            found[("accuracy", name, round(float(point["target"]), 6))] = 100 * point["accuracy"]
    for name, summary in results["summary"].items():
        found[("auc", name, None)] = 100 * summary["auc"]
    return found


def compare_sides(a: Side, b: Side, margin: float = DEFAULT_MARGIN) -> dict[str, Any]:
    """compare.json's content: the differing field, and one row per number both sides have in
    every run."""
    if not margin > 0:
        raise UsageError(f"--margin must be a positive number of accuracy points, got {margin}")
    field = check_comparable(a, b)
    per_run_a = [measures(r) for r in a.results]
    per_run_b = [measures(r) for r in b.results]
    keys = [k for k in per_run_a[0] if all(k in m for m in per_run_a + per_run_b)]
    rows = []
    for kind, name, target in keys:
        values_a = [m[(kind, name, target)] for m in per_run_a]
        values_b = [m[(kind, name, target)] for m in per_run_b]
        row = {"kind": kind, "name": name, "target": target}
        rows.append({**row, **compare_values(values_a, values_b, margin)})
    return {
        "dataset": a.identity["dataset"],
        "a": {"path": str(a.root), "seeds": a.seeds},
        "b": {"path": str(b.root), "seeds": b.seeds},
        "differing_field": field[0] if field else None,
        "values": {"a": _field_value(a.identity, field), "b": _field_value(b.identity, field)},
        "margin_points": margin,
        "alpha": ALPHA,
        "interval": 1 - 2 * ALPHA,
        "units": "accuracy points (percent); AUC x 100",
        "rows": rows,
        "verdicts": {v: sum(r["verdict"] == v for r in rows) for v in (EQUIVALENT, DIFFERENT, UNDECIDED)},
    }


def _field_value(identity: dict[str, Any], field: list[str]) -> Any:
    if not field:
        return None
    value: Any = identity
    for key in field[0].split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def compare(a: Path, b: Path, *, margin: float = DEFAULT_MARGIN, out: Path | None = None) -> dict[str, Any]:
    """Compares study B with study A: ``ddnn compare``.

    Args:
      a, b: study directories of one dataset and protocol, differing in at most one field.
      margin: the equivalence margin in accuracy points.
      out: where compare.json, compare.md and compare.png go (default: A's parent directory,
        ``compare_A_vs_B``).
    Returns:
      compare.json's content, with ``report`` the path of compare.md.
    """
    from ddnn_jax.jobs.compare_report import write_comparison

    value = compare_sides(read_side(a), read_side(b), margin)
    out = out or Path(a).parent / f"compare_{Path(a).name}_vs_{Path(b).name}"
    return {**value, "report": str(write_comparison(value, out))}
