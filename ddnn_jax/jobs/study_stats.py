"""Statistics over a study's seeds: the mean with its Student-t interval, Spearman's rank
correlation, paired differences over seeds, and the per-mechanism curves and AUCs they make."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.stats

from ddnn_jax.core.families import calibrated, curve_name
from ddnn_jax.core.mechanisms import ENTROPY, REFERENCE_TARGET
from ddnn_jax.rundir import Results

CONFIDENCE = 0.95  # level of every interval over seeds
# Fig. 6.17 from full runs: what the local weight w is correlated with, across seeds.
WEIGHT_MEASURES = {
    "edge-only": lambda r: r["edge_only_accuracy"],
    "cloud-only": lambda r: r["cloud_only_accuracy"],
    f"entropy at L0={REFERENCE_TARGET}": lambda r: _accuracy_at(r, ENTROPY, REFERENCE_TARGET),
    f"router (calibrated) at L0={REFERENCE_TARGET}": lambda r: _accuracy_at(
        r, calibrated(curve_name("logits")), REFERENCE_TARGET
    ),
}


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
    """A curve's accuracy at exactly ``target`` (None if the run has no such point)."""
    for point in results["curves"].get(curve, []):
        if abs(point["target"] - target) < 1e-6:
            return point["accuracy"]
    return None


def _keyed(points, key) -> dict[Any, Any]:
    """The points by ``key(point)``."""
    return {key(p): p for p in points}


def curves_over_seeds(all_results: list[Results]) -> dict[str, list[dict[str, Any]]]:
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


def summary_over_seeds(all_results: list[Results]) -> dict[str, dict[str, Any]]:
    """Per mechanism summarised in every run: its mean AUC and share of the oracle gap
    recovered, with their intervals."""
    names = [n for n in all_results[0]["summary"] if all(n in r["summary"] for r in all_results)]
    summary = {}
    for name in names:
        mean, interval = mean_interval([r["summary"][name]["auc"] for r in all_results])
        summary[name] = {"auc_mean": mean, "auc_ci95": interval, "n": len(all_results)}
        recovered = [r["summary"][name].get("oracle_gap_recovered") for r in all_results]
        if all(v is not None for v in recovered):
            mean, interval = mean_interval([float(v) for v in recovered if v is not None])
            summary[name].update(oracle_gap_recovered_mean=mean, oracle_gap_recovered_ci95=interval)
    return summary


def _difference_over_seeds(differences: list[float]) -> dict[str, Any]:
    """A paired difference's mean over seeds, its interval and a one-sample t test of zero."""
    mean, interval = mean_interval(differences)
    spread = len(differences) >= 2 and float(np.std(differences)) > 0
    return {
        "difference_mean": mean,
        "difference_ci95": interval,
        "p_value": float(scipy.stats.ttest_1samp(differences, 0.0).pvalue) if spread else None,
        "n": len(differences),
    }


def gap_recovered_differences(all_results: list[Results], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every curve's share of the oracle gap recovered minus that of the calibrated score router
    (the best router of one training), paired by seed."""
    baseline = calibrated(curve_name("logits-score"))
    if "oracle_gap_recovered_mean" not in summary.get(baseline, {}):
        return []
    per_run = lambda r, name: r["summary"][name]["oracle_gap_recovered"]
    return [
        {
            "mechanism": name,
            "baseline": baseline,
            **_difference_over_seeds([per_run(r, name) - per_run(r, baseline) for r in all_results]),
        }
        for name, s in summary.items()
        if name != baseline and "oracle_gap_recovered_mean" in s
    ]


def auc_differences(all_results: list[Results], summary: dict[str, Any]) -> list[dict[str, Any]]:
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


def comparisons_over_seeds(all_results: list[Results]) -> list[dict[str, Any]]:
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


def local_weight_over_seeds(all_results: list[Results], seeds: list[int]) -> dict[str, Any]:
    """Each run's local weight with its WEIGHT_MEASURES, and each measure's rank correlation with w."""
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


def reliability_over_seeds(all_results: list[Results]) -> dict[str, Any] | None:
    """Calibration (temperature, test ECE before and after, per exit), each scored mechanism's
    AURC and E-AURC, and the guarantee check's violation rates, as means with intervals over
    seeds; None when any run's results.json predates these records."""
    if not all("calibration" in r and "selective" in r and "guarantees" in r for r in all_results):
        return None
    over = lambda values: dict(zip(("mean", "ci95"), mean_interval(values), strict=True))
    calibration = {
        exit_name: {
            "temperature": over([r["calibration"][exit_name]["temperature"] for r in all_results]),
            **{
                f"ece_{when}": over([r["calibration"][exit_name]["test"][when]["ece"] for r in all_results])
                for when in ("before", "after")
            },
        }
        for exit_name in all_results[0]["calibration"]
    }
    scored = [n for n in all_results[0]["selective"] if all(n in r["selective"] for r in all_results)]
    selective = {
        name: {m: over([r["selective"][name][m] for r in all_results]) for m in ("aurc", "e_aurc")}
        for name in scored
    }
    checks = [r["guarantees"]["check"] for r in all_results]
    return {
        "calibration": calibration,
        "selective": selective,
        "guarantee": {k: v for k, v in all_results[0]["guarantees"].items() if k != "check"},
        "violation_rates": {
            rule: over([c[f"{rule}_violation_rate"] for c in checks]) for rule in ("guaranteed", "plug_in")
        },
    }
