"""The report stage: figures (PNG) and ``report.md`` drawn from ``results.json`` and, for the
split over the network, the edge reports (``edge/``).

Every plotted number is read from those files, so each figure can be checked against them. A
figure whose inputs were not produced (no such router family, no local-weight sweep) is listed in
the report with the command that produces them instead of being drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ddnn_jax.common.errors import UsageError  # noqa: E402
from ddnn_jax.core.families import FAMILIES, calibrated, curve_name, study  # noqa: E402
from ddnn_jax.rundir.records import (  # noqa: E402
    Comparison,
    Point,
    Results,
    RunDir,
    as_run,
    atomic_file,
    locked,
    outputs_fingerprint,
    read_edge_reports,
    read_edge_sweep,
    read_outputs,
    read_results,
    write_text,
)

LOGITS = curve_name("logits")
HEADLINE_TARGETS = (0.3, 0.54, 0.7)
# One colour per mechanism in every figure; a router family's thesis decision is dashed and its
# calibrated decision solid, in the family's colour.
COLOURS = {
    "oracle": "black",
    "random": "tab:gray",
    "entropy": "tab:orange",
    "entropy_calibrated": "tab:orange",
    "max_prob": "tab:olive",
    "margin": "tab:brown",
}
_ROUTER_PALETTE = (
    "tab:blue",
    "tab:green",
    "tab:purple",
    "tab:red",
    "tab:cyan",
    "tab:pink",
    "navy",
    "darkgreen",
    "indigo",
    "crimson",
    "teal",
    "goldenrod",
    "slategray",
    "darkorange",
)
assert len(FAMILIES) <= len(_ROUTER_PALETTE), "give every registered family a colour of its own"
FAMILY_COLOURS = {f.curve: colour for f, colour in zip(FAMILIES, _ROUTER_PALETTE, strict=False)}


def style(name: str) -> dict[str, Any]:
    """Line style of a curve: its mechanism's colour, dashed for a router's thesis decision."""
    if name in COLOURS:
        dashed = name == "oracle" or name.endswith("_calibrated")
        return dict(color=COLOURS[name], linestyle="--" if dashed else "-")
    family = name.removesuffix("_calibrated")
    return dict(
        color=FAMILY_COLOURS.get(family, "tab:blue"),
        linestyle="-" if name.endswith("_calibrated") else "--",
        marker="o",
        markersize=3,
    )


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _at(points: list[Point], target: float) -> Point:
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
            p = _at(results["curves"][name], t)
            if name.startswith("entropy_at_"):  # its points sit at the router's achieved rates
                rate = _at(results["curves"][name.removeprefix("entropy_at_")], t)["local_rate"]
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
        for baseline in ("entropy", "random"):
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


def significant(ci95: list[float] | None) -> bool:
    """Whether a 95 % interval of a difference excludes zero (no interval: not shown to be)."""
    return ci95 is not None and (ci95[0] > 0 or ci95[1] < 0)


def _comparison(
    results: Results, routers: list[str], title: str, thesis: bool = False, rules: tuple[str, ...] = ()
):
    """A curve figure: the given routers' calibrated curves (and their thesis decision when
    asked) against entropy, random, other ``rules`` and the oracle, with the headline and
    difference tables."""
    names = [calibrated(r) for r in routers if calibrated(r) in results["curves"]]
    if not names:
        return None
    shown = names + ([r for r in routers if thesis and r in results["curves"]])
    baselines = ["entropy", "random", *rules, "oracle"]
    # the thesis decision keeps its own share local: entropy at that share is its fair match
    at_thesis = [f"entropy_at_{r}" for r in shown if f"entropy_at_{r}" in results["curves"]]

    def draw(ax):
        _curve_axes(ax, results, shown + baselines, title)

    tables = _curve_table(results, shown + at_thesis + baselines)
    differences = _difference_table(results, names)
    return draw, tables + ("\n\n" + differences if differences else "")


def _bars(ax, labels: list[str], values: list[float], title: str, ylabel: str = "%") -> None:
    bars = ax.bar(labels, [100 * v for v in values], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)


def _fig_5_1(results):
    la = results["label_analysis"]
    keys = ["noise_rate", "border_rate", "oracle_local_rate", "oracle_accuracy"]
    table = "| metric | % |\n|---|---|\n" + "\n".join(f"| {k} | {pct(la[k])} |" for k in keys)
    return (
        lambda ax: _bars(
            ax,
            keys,
            [la[k] for k in keys],
            f"meta-dataset labels (train, L0={la['target']}, tau={la['tau']})",
        ),
        table,
    )


def _grouped_bars(
    ax,
    groups: list[str],
    series: dict[str, list[float]],
    fmts: list[str],
    title: str,
    *,
    scale: float = 100,
    ylabel: str = "%",
    errors: dict[str, list[float]] | None = None,
) -> None:
    """Side-by-side bars of several series over the same groups (fractions shown in % unless
    ``scale``/``ylabel`` say otherwise), with optional error bars per series."""
    width = 0.8 / len(series)
    for j, ((label, values), fmt) in enumerate(zip(series.items(), fmts, strict=False)):
        offset = (j - (len(series) - 1) / 2) * width
        yerr = None if errors is None else [scale * e for e in errors[label]]
        bars = ax.bar(
            [x + offset for x in range(len(groups))],
            [scale * v for v in values],
            width,
            yerr=yerr,
            capsize=3,
            label=label,
        )
        ax.bar_label(bars, fmt=fmt, fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)


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
    points = {label: _at(results["routers"][f]["points"], target) for label, f in present.items()}
    values: dict[str, dict[str, Any]] = {label: dict(p) for label, p in points.items()}
    series = {m: [v[m] for v in values.values()] for m in metrics}
    draw = lambda ax: _grouped_bars(ax, list(points), series, ["%.2f"] * 2, f"{title} (L0={target})")
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
        "oracle": results["oracle_unconstrained"]["accuracy"],
    }
    table = "| exit | test accuracy % |\n|---|---|\n" + "\n".join(
        f"| {k} | {pct(v)} |" for k, v in values.items()
    )
    table += (
        f"\n\nThe unconstrained oracle keeps {pct(results['oracle_unconstrained']['local_rate'])} % local."
    )
    return lambda ax: _bars(ax, list(values), list(values.values()), "standalone exits (test)"), table


def _fig_6_5(results):
    lines = results.get("inference")
    if not lines:
        return None
    mechanisms = {"random": "ddnn_random", "entropy": "ddnn_entropy", "router (logits)": "ddnn_router"}
    curves = {"random": "random", "entropy": "entropy", "router (logits)": calibrated(LOGITS)}
    timed = [line for line in lines if line["measure"] == "inference"]
    regimes = list(dict.fromkeys(line["regime"] for line in timed))
    at = {(line["regime"], line["mechanism"]): line for line in timed}

    def series(key):
        return {r: [at[(r, m)][key] for m in mechanisms.values()] for r in regimes}

    title = f"inference at L0 = {timed[0]['target_local']} ({timed[0]['device']})"
    draw = lambda ax: _grouped_bars(
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
        "| mechanism | accuracy % at L0 = 0.54 | "
        + " | ".join(f"{r} ms/sample (mean ± std)" for r in regimes)
        + " |",
        "|---|---|" + "---|" * len(regimes),
    ]
    for label, name in mechanisms.items():
        curve = results["curves"].get(curves[label])
        accuracy = pct(_at(curve, 0.54)["accuracy"]) if curve else "n/a"
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
    draw = lambda ax: _grouped_bars(ax, groups, series, ["%.1f"] * 2, title)

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
            points = row["entropy"]
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

    table = "| w | seed | edge-only % | cloud-only % | entropy at L0=0.54 % |\n|---|---|---|---|---|\n"
    table += "\n".join(
        f"| {row['local_weight']:.3f} | {row['seed']} | {pct(row['edge_only_accuracy'])} | "
        f"{pct(row['cloud_only_accuracy'])} | {pct(_at(row['entropy'], 0.54)['accuracy'])} |"
        for row in sweep
    )
    return draw, table


# (figure id, title, builder, how to produce the missing inputs)
# (figure id, title, builder, how to produce the missing inputs)
SECTIONS: list[tuple[str, str, Callable, str]] = [
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
        lambda r: _comparison(r, [LOGITS], "router on logits", thesis=True, rules=("max_prob", "margin")),
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


def report(run_dir: RunDir | Path) -> Path:
    """Draws every figure it has results for under RUN_DIR/figures/ and writes RUN_DIR/report.md."""
    run = as_run(run_dir)
    read_results(run)
    with locked(run, "report"):
        return _report(run)


def _report(run: RunDir) -> Path:
    results = read_results(run)
    if run.outputs_dir.is_dir() and results["made_from"] != outputs_fingerprint(read_outputs(run)):
        raise UsageError(
            f"{run.results} scored other outputs than {run.outputs_dir} holds now: "
            f"run 'ddnn evaluate --run {run}' first"
        )
    run.figures.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# DDNN offloading report: {results['dataset']}",
        "",
        f"Seed {results['seed']}, {_local_weight(results)}, best epoch {results['best_epoch']}, "
        f"{results['test_size']} test samples. Edge-only {pct(results['edge_only_accuracy'])} %, "
        f"cloud-only {pct(results['cloud_only_accuracy'])} %. "
        f"All numbers are in `{run.results.name}`.",
        "",
    ]
    for fig_id, title, build, how in SECTIONS:
        lines.append(f"## Fig. {fig_id}: {title}\n")
        built = build(results)
        if built is None:
            lines.append(
                f"Not available for this run: produce its inputs with `{how}`, then "
                "`ddnn evaluate` and `ddnn report`.\n"
            )
            continue
        draw, table = built
        path = run.figure(fig_id)
        draw_figure(draw, path)
        lines += [f"![Fig. {fig_id}]({path.relative_to(run.root)})", "", table, ""]
    lines += _split_section(run, results)
    lines += _summary_section(results)
    write_text(run.report, "\n".join(lines) + "\n")
    return run.report


def _local_weight(results: Results) -> str:
    w = results["local_weight"]
    return f"local weight {'unknown' if w is None else f'w = {w:.4f}'} ({results['local_weight_mode']})"


def draw_figure(draw: Callable, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    draw(ax)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


WIRE_STYLES = {"fp32": "-", "fp16": "--", "int8": ":"}
SPLIT_MECHANISMS = {"entropy": COLOURS["entropy"], "router": FAMILY_COLOURS[LOGITS], "cloud_only": "black"}


def _split_section(run: RunDir, results: Results) -> list[str]:
    """The edge and cloud halves over the network (``ddnn serve`` and ``ddnn edge``): accuracy
    against bytes on the wire, and the latency model with the measured figures."""
    lines = ["## The split over the network: accuracy against bytes, and latency\n"]
    current = lambda edge_file: edge_file.get("made_from") == results["made_from"]
    sweep, reports = read_edge_sweep(run), read_edge_reports(run)
    stale = sum(not current(r) for r in reports) + (sweep is not None and not current(sweep))
    if stale:
        lines.append(
            f"{stale} file(s) under `edge/` were made from other outputs than results.json scored "
            "and are left out: rerun `ddnn edge` for them.\n"
        )
    sweep = sweep if sweep is not None and current(sweep) else None
    reports = [r for r in reports if current(r)]
    if sweep is None:
        lines.append(
            f"No current sweep: run `ddnn serve --run {run}` and then "
            f"`ddnn edge --run {run} --server URL --sweep --batch 256`.\n"
        )
    else:
        draw_figure(lambda ax: _bytes_axes(ax, sweep), run.figure("split_bytes"))
        lines += [f"![accuracy against bytes]({run.figure('split_bytes').relative_to(run.root)})", ""]
        lines += [_bytes_table(sweep), ""]
    if not reports:
        lines.append(f"No live edge run yet: `ddnn edge --run {run} --server URL --mechanism router`.\n")
        return lines
    lines += [_live_table(reports), ""]
    measured = _measured_latency(reports)
    if measured:
        lm = results["latency_model"]
        path = run.figure("split_latency")
        draw_figure(lambda ax: _latency_axes(ax, lm, measured, reports), path)
        lines += [
            f"![latency model]({path.relative_to(run.root)})",
            "",
            f"Fig. 6.5's latency model T(L0) = T_edge + (1 - L0) T_offload with the thesis's assumed "
            f"T_edge = {lm['edge_ms']:g} ms and T_offload = {lm['cloud_ms']:g} ms, and with the medians "
            "measured on loopback at batch 1 (edge: a local sample's latency; offload: the round trip "
            "of one request, encoding and the cloud head included):",
            "",
            "| source | T_edge ms | T_offload ms | T(0.3) ms | T(0.54) ms | T(0.7) ms |",
            "|---|---|---|---|---|---|",
            _latency_row("assumed (thesis)", lm["edge_ms"], lm["cloud_ms"]),
            *(_latency_row(f"measured, {w} ({device})", e, o) for w, (e, o, device) in measured.items()),
            "",
        ]
    return lines


def _bytes_axes(ax, sweep: dict) -> None:
    for mechanism, colour in SPLIT_MECHANISMS.items():
        for wire_name, linestyle in WIRE_STYLES.items():
            points = sorted(
                (p for p in sweep["points"] if p["mechanism"] == mechanism and p["wire"] == wire_name),
                key=lambda p: p["bytes_per_sample"],
            )
            if points:
                ax.plot(
                    [p["bytes_per_sample"] / 1000 for p in points],
                    [100 * p["accuracy"] for p in points],
                    color=colour,
                    linestyle=linestyle,
                    marker="o" if mechanism != "cloud_only" else "s",
                    markersize=3,
                    label=f"{mechanism} {wire_name}",
                )
    ax.axhline(
        100 * sweep["edge_only_accuracy"], color="tab:gray", linewidth=0.8, label="edge only (0 bytes)"
    )
    ax.set_xlabel("uplink kB per sample (one request per offload, headers included)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"accuracy against bytes sent ({sweep['samples']} test samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def _bytes_table(sweep: dict) -> str:
    request = sweep["request_bytes"]
    rows = [
        f"One offload costs {request['fp32']} B in fp32, {request['fp16']} B in fp16 and {request['int8']} B "
        f"in int8 ({100 * request['int8'] / request['fp32']:.1f} % of fp32), HTTP headers included; the "
        f"image itself is {sweep['image_bytes']} B.",
        "",
        "| mechanism | L0 | local % | fp32 acc % | fp16 acc % | int8 acc % | fp32 B/sample | int8 B/sample |",
        "|---|---|---|---|---|---|---|---|",
    ]
    at = {(p["mechanism"], p["target"], p["wire"]): p for p in sweep["points"]}
    for mechanism, target, _ in sorted(k for k in at if k[2] == "fp32" and k[1] in (*HEADLINE_TARGETS, 0.5)):
        p = {w: at[mechanism, target, w] for w in WIRE_STYLES}
        rows.append(
            f"| {mechanism} | {target} | {pct(p['fp32']['local_rate'])} | {pct(p['fp32']['accuracy'])} | "
            f"{pct(p['fp16']['accuracy'])} | {pct(p['int8']['accuracy'])} | "
            f"{p['fp32']['bytes_per_sample']:.0f} | {p['int8']['bytes_per_sample']:.0f} |"
        )
    return "\n".join(rows)


def _live_table(reports: list[dict]) -> str:
    rows = [
        "Live runs of the edge against the server (`edge/*/edge_report.json`):",
        "",
        "| mechanism | L0 | wire | batch | samples | accuracy % (in process) | local % | B/sample | "
        "B/offload | ms per sample p50 / p95 / p99 | ms per offload p50 | samples/s | fallbacks % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        c, b, lat = r["config"], r["bytes"], r["latency_ms"]
        per_sample = lat["per_sample"]
        offload_ms = "–" if lat["per_offload"] is None else f"{lat['per_offload']['p50']:.2f}"
        per_offload = "–" if b["uplink_per_offload"] is None else f"{b['uplink_per_offload']:.0f}"
        rows.append(
            f"| {c['mechanism']} | {c['target']:g} | {c['wire']} | {c['batch']} | {r['samples']} | "
            f"{pct(r['accuracy'])} ({pct(r['in_process']['accuracy'])}) | {pct(r['local_rate'])} | "
            f"{b['uplink_per_sample']:.0f} | {per_offload} | "
            f"{per_sample['p50']:.2f} / {per_sample['p95']:.2f} / {per_sample['p99']:.2f} | "
            f"{offload_ms} | {r['throughput_per_s']:.0f} | "
            f"{100 * r['fallback_rate']:.1f} |"
        )
    return "\n".join(rows)


def _measured_latency(reports: list[dict]) -> dict[str, tuple[float, float, str]]:
    """Per wire, (edge ms, offload ms, device) from the live runs at batch 1 without fallbacks."""
    measured = {}
    for r in reports:
        lat = r["latency_ms"]
        if r["config"]["batch"] == 1 and not r["fallbacks"] and lat["per_local_sample"] and lat["round_trip"]:
            measured[r["config"]["wire"]] = (
                lat["per_local_sample"]["p50"],
                lat["round_trip"]["p50"],
                r["device"],
            )
    return measured


def _latency_row(source: str, edge_ms: float, offload_ms: float) -> str:
    cells = " | ".join(f"{edge_ms + (1 - t) * offload_ms:.3g}" for t in HEADLINE_TARGETS)
    return f"| {source} | {edge_ms:.3g} | {offload_ms:.3g} | {cells} |"


def _latency_axes(ax, lm: dict, measured: dict[str, tuple[float, float, str]], reports: list[dict]) -> None:
    rates = [i / 20 for i in range(21)]
    ax.plot(
        [100 * t for t in rates],
        [lm["edge_ms"] + (1 - t) * lm["cloud_ms"] for t in rates],
        color="black",
        label=f"assumed: {lm['edge_ms']:g} + (1 - L0) {lm['cloud_ms']:g} ms",
    )
    for wire_name, (edge_ms, offload_ms, _) in measured.items():
        ax.plot(
            [100 * t for t in rates],
            [edge_ms + (1 - t) * offload_ms for t in rates],
            linestyle=WIRE_STYLES.get(wire_name, "-"),
            color="tab:blue",
            label=f"measured on loopback, {wire_name}: {edge_ms:.2g} + (1 - L0) {offload_ms:.2g} ms",
        )
    live = [r for r in reports if r["config"]["batch"] == 1 and not r["fallbacks"]]
    ax.scatter(
        [100 * r["local_rate"] for r in live],
        [r["latency_ms"]["per_sample"]["mean"] for r in live],
        color="tab:red",
        s=12,
        zorder=3,
        label="live runs at batch 1: mean latency per sample",
    )
    ax.set_yscale("log")
    ax.set_xlabel("local rate L0 (%)")
    ax.set_ylabel("expected latency per sample (ms, log)")
    ax.set_title("latency model (Fig. 6.5): assumed and measured")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def _summary_section(results: Results) -> list[str]:
    rows = [
        "## Area under the accuracy-vs-local-rate curve",
        "",
        "| mechanism | AUC | gap to oracle (points) |",
        "|---|---|---|",
    ]
    for name, s in sorted(results["summary"].items(), key=lambda kv: -kv[1]["auc"]):
        rows.append(f"| {name} | {s['auc']:.4f} | {100 * s['gap_to_oracle']:.2f} |")
    lm = results["latency_model"]
    rows += [
        "",
        f"## Latency model (T_edge = {lm['edge_ms']} ms, T_cloud = {lm['cloud_ms']} ms)",
        "",
        "| L0 | latency ms | naive accuracy mix % | entropy % | oracle % |",
        "|---|---|---|---|---|",
    ]
    for p in lm["points"]:
        if p["target"] in (0.0, 0.3, 0.54, 0.7, 1.0):
            rows.append(
                f"| {p['target']} | {p['latency_ms']:.1f} | {pct(p['naive_accuracy'])} | "
                f"{pct(_at(results['curves']['entropy'], p['target'])['accuracy'])} | "
                f"{pct(_at(results['curves']['oracle'], p['target'])['accuracy'])} |"
            )
    timing = results["timing"]
    rows += [
        "",
        "## Timing",
        "",
        "DDNN training: "
        + (
            "not recorded"
            if timing["ddnn_training_seconds"] is None
            else f"{timing['ddnn_training_seconds']:.1f} s ({timing['ddnn_training_backend']})."
        ),
        "",
    ]
    rows += [f"- router family {k}: {v:.1f} s" for k, v in timing["router_training_seconds"].items()]
    return rows
