"""The thesis's figures: one builder per figure that turns results.json into a drawing and its
table, and FIGURES, the list of them the report walks in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ddnn_jax.core.families import calibrated, curve_name, study
from ddnn_jax.core.mechanisms import ENTROPY, HEADLINE_TARGETS, ORACLE, RANDOM, REFERENCE_TARGET, RULES
from ddnn_jax.rundir import Comparison, Point, Results
from ddnn_jax.stages.plotting import bars, grouped_bars, pct, significant, style

LOGITS = curve_name("logits")


def nearest_point(points: list[Point], target: float) -> Point:
    """The point of a curve whose target L0 is nearest to ``target``."""
    return min(points, key=lambda p: abs(p["target"] - target))


def _curve_axes(ax, results: Results, names: list[str], title: str) -> None:
    for name in names:
        points = sorted(results["curves"][name], key=lambda p: p["local_rate"])
        ax.plot(
            [100 * p["local_rate"] for p in points],
            [100 * p["accuracy"] for p in points],
            label=name,
            **style(name),
        )
    ax.set_xlabel("local classification rate (%)")
    ax.set_ylabel("overall accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _curve_table(results: Results, names: list[str], targets=HEADLINE_TARGETS) -> str:
    head = "| mechanism | " + " | ".join(f"L0={t}: local % / acc %" for t in targets) + " | AUC |"
    rows = [head, "|---" * (len(targets) + 2) + "|"]
    for name in names:
        cells = []
        for t in targets:
            p = nearest_point(results["curves"][name], t)
            if name.startswith("entropy_at_"):  # its points sit at the router's achieved rates
                rate = nearest_point(results["curves"][name.removeprefix("entropy_at_")], t)["local_rate"]
                p = min(results["curves"][name], key=lambda q: abs(q["local_rate"] - rate))
            cells.append(f"{pct(p['local_rate'])} / {pct(p['accuracy'])}")
        auc = results["summary"].get(name, {}).get("auc")
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {'–' if auc is None else f'{auc:.4f}'} |")
    return "\n".join(rows)


def _difference_table(results: Results, mechanisms: list[str], targets=HEADLINE_TARGETS) -> str:
    """Paired differences against entropy and random with their intervals and McNemar p."""
    at: dict[tuple[str, str, float], Comparison] = {
        (c["mechanism"], c["baseline"], round(c["target"], 6)): c for c in results["comparisons"]
    }
    rows = [
        "| mechanism | vs | L0 | difference (points) | 95 % interval | McNemar p | local % (vs) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in mechanisms:
        for baseline in (ENTROPY, RANDOM):
            for t in targets:
                if (name, baseline, round(t, 6)) not in at:
                    continue
                c = at[(name, baseline, round(t, 6))]
                rows.append(
                    f"| {name} | {baseline} | {c['target']:g} | {_signed(c['difference'])}"
                    f"{'' if significant(c['ci95']) else ' (n.s.)'} | "
                    f"[{_signed(c['ci95'][0])}, {_signed(c['ci95'][1])}] | {c['p_value']:.3g} | "
                    f"{pct(c['local_rate'])} ({pct(c['baseline_local_rate'])}) |"
                )
    if len(rows) == 2:
        return ""
    note = (
        "\n\nDifferences are router minus baseline on the same test samples; the interval is a "
        f"paired bootstrap ({results['evaluation_config']['bootstrap_resamples']} resamples, seed "
        f"{results['evaluation_config']['bootstrap_seed']}); n.s.: the interval spans zero."
    )
    return "\n".join(rows) + note


def _signed(x: float) -> str:
    return f"{100 * x:+.2f}"


def _comparison(results: Results, routers: list[str], title: str, thesis: bool = False, rules: bool = False):
    """A curve figure: the given routers' calibrated curves (and their thesis decision when
    asked) against entropy, random, (with ``rules``) every other registered decision rule and the
    oracle, with the headline and difference tables."""
    names = [calibrated(r) for r in routers if calibrated(r) in results["curves"]]
    if not names:
        return None
    shown = names + ([r for r in routers if thesis and r in results["curves"]])
    others = [name for name in RULES if rules and name not in (ENTROPY, RANDOM) and name in results["curves"]]
    baselines = [ENTROPY, RANDOM, *others, ORACLE]
    # the thesis decision keeps its own share local: entropy at that share is its fair match
    at_thesis = [f"entropy_at_{r}" for r in shown if f"entropy_at_{r}" in results["curves"]]

    def draw(ax):
        _curve_axes(ax, results, shown + baselines, title)

    tables = _curve_table(results, shown + at_thesis + baselines)
    differences = _difference_table(results, names)
    return draw, tables + ("\n\n" + differences if differences else "")


def _fig_5_1(results):
    la = results["label_analysis"]
    keys = ["noise_rate", "border_rate", "oracle_local_rate", "oracle_accuracy"]
    table = "| metric | % |\n|---|---|\n" + "\n".join(f"| {k} | {pct(la[k])} |" for k in keys)
    return (
        lambda ax: bars(
            ax,
            keys,
            [la[k] for k in keys],
            f"meta-dataset labels (train, L0={la['target']}, tau={la['tau']})",
        ),
        table,
    )


def _ablation(
    results, families: dict[str, str], title: str, metrics: tuple[str, str] = ("accuracy", "local_rate")
):
    """Bars of two metrics at the reference target for variants (per-target router families) of
    one study, thesis decision; None unless at least two variants were trained."""
    routers = results["routers"]
    present = {label: f for label, f in families.items() if f in routers and routers[f]["points"]}
    if len(present) < 2:
        return None
    target = results["evaluation_config"]["reference_target"]
    points = {label: nearest_point(results["routers"][f]["points"], target) for label, f in present.items()}
    values: dict[str, dict[str, Any]] = {label: dict(p) for label, p in points.items()}
    series = {m: [v[m] for v in values.values()] for m in metrics}
    draw = lambda ax: grouped_bars(ax, list(points), series, ["%.2f"] * 2, f"{title} (L0={target})")
    table = "| variant | accuracy % | local rate % | decision accuracy % |\n|---|---|---|---|\n"
    table += "\n".join(
        f"| {label} | {pct(p['accuracy'])} | {pct(p['local_rate'])} | {pct(p['decision_accuracy'])} |"
        for label, p in points.items()
    )
    return draw, table


def _history(results, router: str, title: str):
    """Train vs validation decision accuracy per epoch at the reference target (per-target
    router families)."""
    if router not in results["routers"] or not results["routers"][router]["points"]:
        return None
    r = results["routers"][router]
    i = min(
        range(len(r["points"])),
        key=lambda j: abs(r["points"][j]["target"] - results["evaluation_config"]["reference_target"]),
    )
    train, val = r["train_quality"][i], r["val_quality"][i]

    def draw(ax):
        epochs = range(1, len(train) + 1)
        ax.plot(epochs, [100 * v for v in train], label="train")
        ax.plot(epochs, [100 * v for v in val], label="validation")
        ax.axvline(r["points"][i]["best_epoch"], color="gray", linestyle=":", label="best epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(r["quality"].replace("_", " ") + " (%)")
        ax.set_title(f"{title} (L0={r['points'][i]['target']})")
        ax.legend(fontsize=8)

    table = (
        f"best epoch {r['points'][i]['best_epoch']} of {len(train)}; final train "
        f"{pct(train[-1])} %, best validation {pct(max(val))} %"
    )
    return draw, table


def _fig_6_1(results):
    values = {
        "edge-only": results["edge_only_accuracy"],
        "cloud-only": results["cloud_only_accuracy"],
        ORACLE: results["oracle_unconstrained"]["accuracy"],
    }
    table = "| exit | test accuracy % |\n|---|---|\n" + "\n".join(
        f"| {k} | {pct(v)} |" for k, v in values.items()
    )
    table += (
        f"\n\nThe unconstrained oracle keeps {pct(results['oracle_unconstrained']['local_rate'])} % local."
    )
    return lambda ax: bars(ax, list(values), list(values.values()), "standalone exits (test)"), table


def _fig_6_5(results):
    lines = results.get("inference")
    if not lines:
        return None
    mechanisms = {RANDOM: "ddnn_random", ENTROPY: "ddnn_entropy", "router (logits)": "ddnn_router"}
    curves = {RANDOM: RANDOM, ENTROPY: ENTROPY, "router (logits)": calibrated(LOGITS)}
    timed = [line for line in lines if line["measure"] == "inference"]
    regimes = list(dict.fromkeys(line["regime"] for line in timed))
    at = {(line["regime"], line["mechanism"]): line for line in timed}

    def series(key):
        return {r: [at[(r, m)][key] for m in mechanisms.values()] for r in regimes}

    title = f"inference at L0 = {timed[0]['target_local']} ({timed[0]['device']})"
    draw = lambda ax: grouped_bars(
        ax,
        list(mechanisms),
        series("per_sample_ms_mean"),
        ["%.3f"] * len(regimes),
        title,
        scale=1,
        ylabel="ms per sample",
        errors=series("per_sample_ms_std"),
    )

    table = [
        f"| mechanism | accuracy % at L0 = {REFERENCE_TARGET} | "
        + " | ".join(f"{r} ms/sample (mean ± std)" for r in regimes)
        + " |",
        "|---|---|" + "---|" * len(regimes),
    ]
    for label, name in mechanisms.items():
        curve = results["curves"].get(curves[label])
        accuracy = pct(nearest_point(curve, REFERENCE_TARGET)["accuracy"]) if curve else "n/a"
        cells = [
            f"{at[(r, name)]['per_sample_ms_mean']:.3f} ± {at[(r, name)]['per_sample_ms_std']:.3f}"
            for r in regimes
        ]
        table.append(f"| {label} | {accuracy} | " + " | ".join(cells) + " |")
    overhead = [line for line in lines if line["measure"] == "router_overhead"]
    table.append("")
    table += [
        f"Router decision cost over entropy ({o['regime']}): {o['over_entropy_ms']:.4f} ms per "
        f"sample, {100 * o['fraction_of_edge_only']:.1f} % of edge-only."
        for o in overhead
    ]
    return draw, "\n".join(table)


def _fig_6_12(results):
    ta = results["test_analysis"]
    if ta is None:
        return None

    groups = list(ta["shares"])
    series = {
        "share of test samples": [ta["shares"][g] for g in groups],
        "misclassification within group": [ta["misclassification"][g] or 0 for g in groups],
    }
    title = f"test analysis, router {ta['router']} (L0={ta['target']}, tau={ta['tau']})"
    draw = lambda ax: grouped_bars(ax, groups, series, ["%.1f"] * 2, title)

    table = "| group | share % | misclassification % |\n|---|---|---|\n" + "\n".join(
        f"| {g} | {pct(ta['shares'][g])} | {pct(ta['misclassification'][g])} |" for g in ta["shares"]
    )
    table += (
        f"\n\nNoise (router ≠ oracle) {pct(ta['noise_rate'])} %, border (|B| < tau) "
        f"{pct(ta['border_rate'])} % of the test split; groups are disjoint, noise first."
    )
    return draw, table


def _fig_6_17(results):
    sweep = results["local_weight_sweep"]
    if not sweep:
        return None

    def draw(ax):
        for row in sweep:
            points = row[ENTROPY]
            ax.plot(
                [100 * p["local_rate"] for p in points],
                [100 * p["accuracy"] for p in points],
                label=f"w={row['local_weight']:.2f} seed {row['seed']}",
            )
        ax.set_xlabel("local classification rate (%)")
        ax.set_ylabel("overall accuracy (%)")
        ax.set_title(
            f"entropy rule across local weights (short runs: {sweep[0]['epochs']} epochs, "
            f"{sweep[0]['limit_train']} train images)",
            fontsize=9,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    header = f"| w | seed | edge-only % | cloud-only % | entropy at L0={REFERENCE_TARGET} % |"
    table = header + "\n|---|---|---|---|---|\n"
    table += "\n".join(
        f"| {row['local_weight']:.3f} | {row['seed']} | {pct(row['edge_only_accuracy'])} | "
        f"{pct(row['cloud_only_accuracy'])} | "
        f"{pct(nearest_point(row[ENTROPY], REFERENCE_TARGET)['accuracy'])} |"
        for row in sweep
    )
    return draw, table


# (figure id, title, builder, how to produce the missing inputs)
FIGURES: list[tuple[str, str, Callable, str]] = [
    ("5.1", "Meta-dataset label analysis", _fig_5_1, ""),
    (
        "5.2",
        "Cost labels vs oracle labels",
        lambda r: _ablation(
            r, study("labels"), "router on cost vs oracle labels", ("accuracy", "decision_accuracy")
        ),
        "ddnn route --labels oracle",
    ),
    ("6.1", "Standalone exits", _fig_6_1, ""),
    (
        "6.2",
        "Router (logits) vs heuristics and oracle",
        lambda r: _comparison(r, [LOGITS], "router on logits", thesis=True, rules=True),
        "ddnn route --inputs logits",
    ),
    (
        "A.1",
        "One score for every budget vs one router per target",
        lambda r: _comparison(r, list(study("score").values()), "score vs per-target routers"),
        "ddnn route --inputs logits --objective score",
    ),
    (
        "6.3",
        "Router depth",
        lambda r: _ablation(r, study("depth"), "router depth"),
        "ddnn route --depth 3 --name logits-depth3",
    ),
    (
        "6.4",
        "Router dropout",
        lambda r: _ablation(r, study("dropout"), "router dropout"),
        "ddnn route --dropout 0.6 --name logits-dropout0.6",
    ),
    (
        "6.5",
        "Inference cost per mechanism",
        _fig_6_5,
        "ddnn bench inference --run RUN --out RUN/bench_inference.json",
    ),
    (
        "6.10",
        "Router training vs validation decision accuracy",
        lambda r: _history(r, LOGITS, "router on logits"),
        "ddnn route --inputs logits",
    ),
    (
        "6.11",
        "Logits+ input",
        lambda r: _comparison(r, list(reversed(study("logits+").values())), "logits+"),
        "ddnn route --inputs logits+",
    ),
    ("6.12", "Test-data analysis", _fig_6_12, "ddnn route --inputs logits"),
    (
        "6.13",
        "Router on edge features (MLP)",
        lambda r: _comparison(r, [curve_name("features")], "features, MLP"),
        "ddnn route --inputs features",
    ),
    (
        "6.14",
        "Router on edge features (CNN)",
        lambda r: _comparison(r, [curve_name("features-cnn")], "features, CNN"),
        "ddnn route --inputs features-cnn",
    ),
    (
        "6.15",
        "Feature CNN router: training vs validation",
        lambda r: _history(r, curve_name("features-cnn"), "features CNN"),
        "ddnn route --inputs features-cnn",
    ),
    (
        "6.16",
        "Edge features vs raw images",
        lambda r: _comparison(r, list(study("images").values()), "features vs images"),
        "ddnn route --inputs images",
    ),
    ("6.17", "Robustness to the local weight w", _fig_6_17, "ddnn run (local-weight sweep)"),
]
