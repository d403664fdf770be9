"""The report's figures on how far the decisions can be relied on (``stages.reliability``): the
exits' reliability diagrams, the local exit's risk-coverage curves, and the guaranteed thresholds
beside the calibrated ones. Each builder returns ``(draw(ax), markdown table)``, or None when
results.json predates these records."""

from __future__ import annotations

from ddnn_jax.core.families import calibrated, guaranteed
from ddnn_jax.core.mechanisms import ENTROPY, HEADLINE_TARGETS
from ddnn_jax.rundir import Results
from ddnn_jax.stages.figures import nearest_point
from ddnn_jax.stages.plotting import pct, style

_EXIT_COLOURS = {"local": "tab:orange", "cloud": "tab:blue"}


def reliability_figure(results: Results):
    """Accuracy against confidence per bin of the max probability, both exits, before and after
    temperature scaling, with ECE, NLL and Brier score."""
    calibration = results.get("calibration")
    if calibration is None:
        return None

    def draw(ax):
        ax.plot([0, 1], [0, 1], color="black", linewidth=0.8, label="perfect calibration")
        for exit_name, record in calibration.items():
            scaled = f"T = {record['temperature']:.2f}"
            for when, line, t in (("before", ":", "T = 1"), ("after", "-", scaled)):
                table = record["reliability_test"][when]
                pairs = [
                    (f, a)
                    for f, a in zip(table["confidence"], table["accuracy"], strict=True)
                    if f is not None
                ]
                ax.plot(
                    [f for f, _ in pairs],
                    [a for _, a in pairs],
                    line,
                    marker="o",
                    markersize=3,
                    color=_EXIT_COLOURS[exit_name],
                    label=f"{exit_name} exit, {t}",
                )
        ax.set_xlabel("confidence (max probability), test")
        ax.set_ylabel("accuracy in the bin")
        ax.set_title(f"reliability, {calibration['local']['ece_bins']} equal-width bins")
        ax.legend(fontsize=8)

    rows = [
        "Temperature fitted on validation by minimising the NLL; metrics on the test split "
        f"(ECE over {calibration['local']['ece_bins']} equal-width bins of the max probability).",
        "",
        "| exit | T | ECE % before | ECE % after | NLL before | NLL after | Brier before | Brier after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for exit_name, record in calibration.items():
        before, after = record["test"]["before"], record["test"]["after"]
        rows.append(
            f"| {exit_name} | {record['temperature']:.3f} | {pct(before['ece'])} | {pct(after['ece'])} | "
            f"{before['nll']:.4f} | {after['nll']:.4f} | {before['brier']:.4f} | {after['brier']:.4f} |"
        )
    return draw, "\n".join(rows)


def risk_coverage_figure(results: Results):
    """The local exit's error among the samples kept local against the share kept, per score,
    with the AURC table (every scored mechanism)."""
    selective = results.get("selective")
    if selective is None:
        return None
    shown = [n for n in (ENTROPY, f"{ENTROPY}_ts", "random", "router_logits") if n in selective]

    def draw(ax):
        for name in shown:
            curve = selective[name]["risk_coverage"]
            line = {k: v for k, v in style(name).items() if k != "marker"}
            if name.endswith("_ts"):  # the rule's own colour is its unscaled curve's
                line = {"color": "tab:red"}
            ax.plot([p["coverage"] for p in curve], [100 * p["risk"] for p in curve], label=name, **line)
        ax.set_xlabel("coverage (share kept local), test")
        ax.set_ylabel("local exit's error among those kept (%)")
        ax.set_title("risk-coverage of the local exit")
        ax.legend(fontsize=8)

    rows = ["| score | AURC % | E-AURC % |", "|---|---|---|"]
    for name, record in sorted(selective.items(), key=lambda kv: kv[1]["aurc"]):
        rows.append(f"| {name} | {pct(record['aurc'])} | {pct(record['e_aurc'])} |")
    return draw, "\n".join(rows)


def guarantee_figure(results: Results):
    """Local rate reached on test against the target, for the calibrated and the guaranteed
    entropy thresholds, with the check of the promise."""
    guarantees = results.get("guarantees")
    points = results["curves"].get(guaranteed(ENTROPY))
    if guarantees is None or points is None:
        return None
    plain = results["curves"][calibrated(ENTROPY)]
    check = guarantees["check"]
    local_rate = guarantees["kind"] == "local-rate"

    def draw(ax):
        if local_rate:
            ax.plot([0, 1], [0, 1], color="black", linewidth=0.8, label="local rate = target")
            for name, curve in ((calibrated(ENTROPY), plain), (guaranteed(ENTROPY), points)):
                ax.plot(
                    [p["target"] for p in curve],
                    [p["local_rate"] for p in curve],
                    marker="o",
                    markersize=3,
                    label=name,
                )
            ax.set_xlabel("target L0")
            ax.set_ylabel("local rate on test")
        else:
            ax.plot([100 * p["target"] for p in points], [p["local_rate"] for p in points], marker="o")
            ax.set_xlabel("accuracy drop allowed (points)")
            ax.set_ylabel("local rate on test")
        ax.set_title(
            f"guaranteed ({guarantees['kind']}, epsilon {guarantees['epsilon']}, delta {guarantees['delta']})"
        )
        if local_rate:
            ax.legend(fontsize=8)

    promise = (
        f"local rate >= L0 - {guarantees['epsilon']}"
        if local_rate
        else f"accuracy drop against cloud-only <= {guarantees['epsilon']}"
    )
    rows = [
        f"Promise: {promise}, with probability >= {1 - guarantees['delta']:.2f} over the validation draw "
        f"(Learn-then-Test, exact binomial tests). Checked on {check['draws']} validation sets of "
        f"{check['n_val']} drawn from the {check['pool']} pooled validation and test outputs, "
        f"{check['mechanism']} at L0 = {check['target']}: the guaranteed threshold broke it in "
        f"{pct(check['guaranteed_violation_rate'])} % of the draws, the plug-in one in "
        f"{pct(check['plug_in_violation_rate'])} %.",
        "",
        "| target | local rate % | accuracy % | certified bound % | threshold |",
        "|---|---|---|---|---|",
    ]
    targets = HEADLINE_TARGETS if local_rate else [p["target"] for p in points]
    for target in targets:
        p = nearest_point(points, target)
        rows.append(
            f"| {p['target']:g} | {pct(p['local_rate'])} | {pct(p['accuracy'])} | "
            f"{pct(p['certified_bound'])} | {p['threshold']:.4f} |"
        )
    return draw, "\n".join(rows)


# (figure id, title, builder, how to produce the missing inputs), after the thesis's figures
RELIABILITY_FIGURES = [
    ("R.1", "Calibration of the exits", reliability_figure, "ddnn evaluate"),
    ("R.2", "Risk-coverage of the local exit", risk_coverage_figure, "ddnn evaluate"),
    ("R.3", "Guaranteed thresholds", guarantee_figure, "ddnn evaluate"),
]
