"""compare.md and compare.png of ``ddnn compare``: the headline rows (both exits, entropy and the
calibrated logits router at the reference budgets, their AUC), every row's verdict, and a figure
of the two sides' curves with their bands beside the per-target differences with their
intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import scipy.stats

from ddnn_jax.core.families import calibrated, curve_name
from ddnn_jax.core.mechanisms import ENTROPY, HEADLINE_TARGETS
from ddnn_jax.rundir import atomic_file, write_json, write_text
from ddnn_jax.stages.plotting import style

COMPARE_JSON, COMPARE_MD, COMPARE_FIGURE = "compare.json", "compare.md", "compare.png"
HEADLINE_MECHANISMS = (ENTROPY, calibrated(curve_name("logits")))


def _label(row: dict[str, Any]) -> str:
    if row["kind"] == "exit":
        return f"{row['name']} exit"
    if row["kind"] == "auc":
        return f"{row['name']} AUC"
    return f"{row['name']} at L0 = {row['target']:g}"


def _verdict(row: dict[str, Any], margin: float) -> str:
    return f"equivalent within ±{margin:g}" if row["verdict"] == "equivalent" else row["verdict"]


def _to_decide(row: dict[str, Any]) -> str:
    need = row["to_decide"]
    return "–" if need is None else f"{need['seeds']} ({need['verdict']})"


def row_line(row: dict[str, Any], margin: float) -> str:
    """One row in words: both means, B - A with its 90 % interval, the verdict and, while
    undecided, the seeds per side that would decide it."""
    low, high = row["ci90"]
    after = f"; seeds per side to decide: {_to_decide(row)}" if row["verdict"] == "undecided" else ""
    return (
        f"{_label(row)}: A {row['mean_a']:.2f}, B {row['mean_b']:.2f}, B - A {row['difference']:+.2f} "
        f"[{low:+.2f}, {high:+.2f}] -> {_verdict(row, margin)} (TOST p {row['p_tost']:.3g}){after}"
    )


def headline_rows(value: dict[str, Any]) -> list[dict[str, Any]]:
    """Both exits, then each headline mechanism at each headline target and its AUC."""
    wanted: list[tuple[str, str, float | None]] = [("exit", "local", None), ("exit", "cloud", None)]
    for name in HEADLINE_MECHANISMS:
        wanted += [("accuracy", name, t) for t in HEADLINE_TARGETS] + [("auc", name, None)]
    by_key = {(r["kind"], r["name"], r["target"]): r for r in value["rows"]}
    return [by_key[k] for k in wanted if k in by_key]


def _table(rows: list[dict[str, Any]], margin: float) -> list[str]:
    lines = [
        "| row | A mean | B mean | B − A [90 % CI] | TOST p | verdict | seeds per side to decide |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        low, high = row["ci90"]
        lines.append(
            f"| {_label(row)} | {row['mean_a']:.2f} | {row['mean_b']:.2f} | {row['difference']:+.2f} "
            f"[{low:+.2f}, {high:+.2f}] | {row['p_tost']:.3g} | {_verdict(row, margin)} | {_to_decide(row)} |"
        )
    return lines


def _band(row: dict[str, Any], side: str) -> tuple[float, float]:
    """The side's mean and the half-width of its 95 % t interval."""
    n, sd = row[f"n_{side}"], row[f"sd_{side}"]
    return row[f"mean_{side}"], float(scipy.stats.t.ppf(0.975, n - 1) * sd / n**0.5)


def _draw(value: dict[str, Any], path: Path) -> None:
    fig, (curves, differences) = plt.subplots(1, 2, figsize=(11, 4.2))
    margin = value["margin_points"]
    for j, name in enumerate(HEADLINE_MECHANISMS):
        rows = sorted(
            (r for r in value["rows"] if r["kind"] == "accuracy" and r["name"] == name),
            key=lambda r: r["target"],
        )
        if not rows:
            continue
        targets = [r["target"] for r in rows]
        for side, linestyle in (("a", "-"), ("b", ":")):
            means, halves = zip(*(_band(r, side) for r in rows), strict=True)
            colour = style(name)["color"]
            curves.plot(targets, means, color=colour, linestyle=linestyle, label=f"{name} ({side.upper()})")
            curves.fill_between(
                targets, [m - h for m, h in zip(means, halves, strict=True)],
                [m + h for m, h in zip(means, halves, strict=True)], color=colour, alpha=0.15,
            )  # fmt: skip
        shift = (j - 0.5) * 0.008
        differences.errorbar(
            [t + shift for t in targets],
            [r["difference"] for r in rows],
            yerr=[
                [r["difference"] - r["ci90"][0] for r in rows],
                [r["ci90"][1] - r["difference"] for r in rows],
            ],
            fmt="o",
            capsize=3,
            color=style(name)["color"],
            label=name,
        )
    curves.set_xlabel("target local rate L0")
    curves.set_ylabel("test accuracy % (mean, 95 % band)")
    curves.set_title("A solid, B dotted")
    curves.legend(fontsize=7)
    for level in (-margin, margin):
        differences.axhline(level, color="grey", linestyle="--", linewidth=1)
    differences.axhline(0, color="black", linewidth=0.8)
    differences.set_xlabel("target local rate L0")
    differences.set_ylabel("B − A, accuracy points (90 % Welch interval)")
    differences.set_title(f"equivalence margin ±{margin:g}")
    differences.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def write_comparison(value: dict[str, Any], out: Path) -> Path:
    """Writes compare.json, compare.png and compare.md into ``out``; returns compare.md's path."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / COMPARE_JSON, value)
    _draw(value, out / COMPARE_FIGURE)
    margin = value["margin_points"]
    field = value["differing_field"] or "nothing (two sets of seeds of one protocol)"
    counts = ", ".join(f"{n} {verdict}" for verdict, n in value["verdicts"].items())
    lines = [
        f"# {value['dataset']}: {value['a']['path']} (A) against {value['b']['path']} (B)",
        "",
        f"A and B differ in {field}: A {value['values']['a']!r}, B {value['values']['b']!r}. "
        f"Seeds: A {value['a']['seeds']}, B {value['b']['seeds']}.",
        "",
        f"Units: {value['units']}. B − A with its 90 % Welch interval; TOST at α = {value['alpha']} "
        f"per side against ±{margin:g} points; 'different' when the Welch t test rejects no "
        f"difference at {value['alpha']} and TOST does not. Rows: {counts}.",
        "",
        "## Headline",
        "",
        *_table(headline_rows(value), margin),
        "",
        f"![curves and differences]({COMPARE_FIGURE})",
        "",
        "## Every row",
        "",
        *_table(value["rows"], margin),
        "",
    ]
    write_text(out / COMPARE_MD, "\n".join(lines))
    return out / COMPARE_MD
