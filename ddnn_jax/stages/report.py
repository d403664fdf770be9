"""The report stage: figures (PNG) and ``report.md`` drawn from ``results.json`` and, for the
edge-cloud deployment, the edge reports (``edge/``).

Every plotted number is read from those files, so each figure can be checked against them. A
figure whose inputs were not produced (no such router family, no local-weight sweep) is listed in
the report with the command that produces them instead of being drawn. The figures themselves are
in :mod:`ddnn_jax.stages.figures`, the deployment's section in
:mod:`ddnn_jax.stages.report_deployment`.
"""

from __future__ import annotations

from pathlib import Path

from ddnn_jax.common.errors import UsageError
from ddnn_jax.core.mechanisms import ENTROPY, HEADLINE_TARGETS, ORACLE
from ddnn_jax.rundir import (
    Results,
    RunDir,
    as_run,
    locked,
    outputs_fingerprint,
    read_outputs,
    read_results,
    write_text,
)
from ddnn_jax.stages.figures import FIGURES, nearest_point
from ddnn_jax.stages.figures_reliability import RELIABILITY_FIGURES
from ddnn_jax.stages.plotting import draw_figure, pct
from ddnn_jax.stages.report_deployment import deployment_section


def report(run_dir: RunDir | Path) -> Path:
    """Draws every figure it has results for under RUN_DIR/figures/ and writes RUN_DIR/report.md.

    Args:
      run_dir: a run with an up-to-date ``results.json`` (``evaluate``); the edge's reports
        under ``edge/`` are drawn too when there are any.
    Returns:
      The path of ``report.md``.
    """
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
        *_figures_section(run, results),
        *deployment_section(run, results),
        *_summary_section(results),
    ]
    write_text(run.report, "\n".join(lines) + "\n")
    return run.report


def _figures_section(run: RunDir, results: Results) -> list[str]:
    """One section per thesis figure: drawn with its table, or the command that makes its inputs."""
    lines = []
    for fig_id, title, build, how in [*FIGURES, *RELIABILITY_FIGURES]:
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
    return lines


def _local_weight(results: Results) -> str:
    """The run's local weight w and how it was chosen, for the report's first line."""
    w = results["local_weight"]
    return f"local weight {'unknown' if w is None else f'w = {w:.4f}'} ({results['local_weight_mode']})"


def _summary_section(results: Results) -> list[str]:
    """The AUC of every curve, the latency model's table and the training times."""
    rows = [
        "## Area under the accuracy-vs-local-rate curve",
        "",
        "| mechanism | AUC | gap to oracle (points) | oracle gap recovered % |",
        "|---|---|---|---|",
    ]
    for name, s in sorted(results["summary"].items(), key=lambda kv: -kv[1]["auc"]):
        recovered = s.get("oracle_gap_recovered")
        share = "–" if recovered is None else f"{100 * recovered:.1f}"
        rows.append(f"| {name} | {s['auc']:.4f} | {100 * s['gap_to_oracle']:.2f} | {share} |")
    lm = results["latency_model"]
    rows += [
        "",
        f"## Latency model (T_edge = {lm['edge_ms']} ms, T_cloud = {lm['cloud_ms']} ms)",
        "",
        "| L0 | latency ms | naive accuracy mix % | entropy % | oracle % |",
        "|---|---|---|---|---|",
    ]
    for p in lm["points"]:
        if p["target"] in (0.0, *HEADLINE_TARGETS, 1.0):
            rows.append(
                f"| {p['target']} | {p['latency_ms']:.1f} | {pct(p['naive_accuracy'])} | "
                f"{pct(nearest_point(results['curves'][ENTROPY], p['target'])['accuracy'])} | "
                f"{pct(nearest_point(results['curves'][ORACLE], p['target'])['accuracy'])} |"
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
