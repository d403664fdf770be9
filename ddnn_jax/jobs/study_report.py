"""``study.md``: the study's report, its tables and figures, drawn from the aggregate
(``study.json``) alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddnn_jax.core.families import calibrated, curve_name
from ddnn_jax.core.mechanisms import ENTROPY, HEADLINE_TARGETS, ORACLE, RANDOM
from ddnn_jax.jobs.study_stats import WEIGHT_MEASURES
from ddnn_jax.rundir import StudyDir, write_text
from ddnn_jax.stages.plotting import draw_figure, pct, significant, style

# the mechanisms the headline table and figure show; the paired differences are the first two's
HEADLINE = (
    calibrated(curve_name("logits")),
    calibrated(curve_name("logits-score")),
    curve_name("logits"),
    ENTROPY,
    RANDOM,
    ORACLE,
)


def _pm(mean: float, interval: list[float] | None) -> str:
    """A mean in % ± its interval's half-width in points."""
    if interval is None:
        return pct(mean)
    return f"{pct(mean)} ± {100 * (interval[1] - interval[0]) / 2:.2f}"


def _headline_table(value: dict[str, Any]) -> list[str]:
    """The HEADLINE mechanisms' accuracy and local rate at the headline targets, and their AUC."""
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
    """``[low, high]`` scaled and rounded, or nothing without an interval."""
    if interval is None:
        return ""
    return f"[{scale * interval[0]:.{digits}f}, {scale * interval[1]:.{digits}f}]"


def _difference_table(value: dict[str, Any]) -> list[str]:
    """The calibrated routers' paired differences against the baselines at the headline targets."""
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
    """Draws the HEADLINE curves over seeds: mean points with a band for the interval."""

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
    """Draws each run's accuracies against its local weight w (Fig. 6.17 from full runs)."""
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
        "## Mechanisms ranked by the share of the random-to-oracle gap they recover",
        "",
        *_gap_recovered_table(value),
        "",
        "## Every calibrated router against the per-target router on logits: AUC, paired by seed",
        "",
        *_auc_difference_table(value),
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
        *_correlation_table(value),
        *_reliability_section(value.get("reliability")),
    ]
    write_text(study.report, "\n".join(lines) + "\n")
    return study.report


def _gap_recovered_table(value: dict[str, Any]) -> list[str]:
    """Every curve by (AUC - AUC_random) / (AUC_oracle - AUC_random), best first, with its
    difference from the calibrated score router paired by seed."""
    against = {d["mechanism"]: d for d in value.get("gap_recovered_differences", [])}
    rows = [
        "| mechanism | AUC | oracle gap recovered % | minus logits-score (points), paired | t-test p |",
        "|---|---|---|---|---|",
    ]
    ranked = [(n, s) for n, s in value["summary"].items() if "oracle_gap_recovered_mean" in s]
    for name, s in sorted(ranked, key=lambda kv: -kv[1]["oracle_gap_recovered_mean"]):
        d = against.get(name)
        diff = (
            "–"
            if d is None
            else f"{100 * d['difference_mean']:+.1f} {_interval(d['difference_ci95'], 1, 100)}"
        )
        p_value = "–" if d is None or d["p_value"] is None else f"{d['p_value']:.3g}"
        rows.append(
            f"| {name} | {s['auc_mean']:.4f} | "
            f"{_pm(s['oracle_gap_recovered_mean'], s['oracle_gap_recovered_ci95'])} | {diff} | {p_value} |"
        )
    return rows


def _auc_difference_table(value: dict[str, Any]) -> list[str]:
    """Each calibrated router's AUC minus the logits router's, over seeds."""
    return [
        "| mechanism | minus | AUC difference, mean | 95 % interval | t-test p |",
        "|---|---|---|---|---|",
        *(
            f"| {d['mechanism']} | {d['baseline']} | {d['difference_mean']:+.4f} | "
            f"{_interval(d['difference_ci95'], 4)} | "
            f"{'–' if d['p_value'] is None else format(d['p_value'], '.3g')} |"
            for d in value["auc_differences"]
        ),
    ]


def _correlation_table(value: dict[str, Any]) -> list[str]:
    """Each measure's Spearman correlation with the local weight w."""
    rows = ["| measure | Spearman rho | 95 % interval | p | runs |", "|---|---|---|---|---|"]
    for measure, c in value["local_weight"]["spearman"].items():
        rho = "–" if c["rho"] is None else f"{c['rho']:+.3f}"
        interval = _interval(c["ci95"], 3) or ("– (needs 4 runs)" if c["n"] < 4 else "–")
        p_value = "–" if c["p_value"] is None else f"{c['p_value']:.3g}"
        rows.append(f"| {measure} | {rho} | {interval} | {p_value} | {c['n']} |")
    return rows


def _reliability_section(reliability: dict[str, Any] | None) -> list[str]:
    """Calibration, AURC and the guarantee's violation rates over seeds (none for runs evaluated
    before they existed)."""
    if reliability is None:
        return []
    pm = lambda v: _pm(v["mean"], v["ci95"])
    rows = ["", "## Calibration of the exits (test)", "", "| exit | T | ECE % before | ECE % after |"]
    rows.append("|---|---|---|---|")
    for exit_name, c in reliability["calibration"].items():
        t = c["temperature"]
        rows.append(
            f"| {exit_name} | {t['mean']:.3f} {_interval(t['ci95'], 3)} | {pm(c['ece_before'])} | "
            f"{pm(c['ece_after'])} |"
        )
    rows += ["", "## Selective prediction of the local exit (test, lower is better)", ""]
    rows += ["| score | AURC % | E-AURC % |", "|---|---|---|"]
    ranked = sorted(reliability["selective"].items(), key=lambda kv: kv[1]["aurc"]["mean"])
    rows += [f"| {name} | {pm(v['aurc'])} | {pm(v['e_aurc'])} |" for name, v in ranked]
    g, rates = reliability["guarantee"], reliability["violation_rates"]
    rows += [
        "",
        f"## Guaranteed thresholds ({g['kind']}, epsilon {g['epsilon']}, delta {g['delta']})",
        "",
        f"Share of drawn validation sets whose threshold broke the promise: guaranteed "
        f"{pm(rates['guaranteed'])} %, plug-in {pm(rates['plug_in'])} %.",
    ]
    return rows
