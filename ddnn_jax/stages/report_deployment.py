"""The report's section on the edge-cloud deployment (``ddnn serve`` and ``ddnn edge``): accuracy
against the bytes each uplink sends (z, the image, a bottleneck's codes), the live runs' latency,
and the latency model measured."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt

from ddnn_jax.core.mechanisms import CLOUD_ONLY, ENTROPY, HEADLINE_TARGETS, REFERENCE_TARGET, ROUTER
from ddnn_jax.rundir import Results, RunDir, read_edge_reports, read_edge_sweep
from ddnn_jax.stages.plotting import draw_figure, pct

# one line style per wire of z in the latency figure
WIRE_STYLES = {"fp32": "-", "fp16": "--", "int8": ":"}
# the mechanisms the sweep deploys, each in its line style in the bytes figure
DEPLOYED_MECHANISMS = {ROUTER: "-", ENTROPY: "--", CLOUD_ONLY: ""}
# a colour map per kind of uplink in the bytes figure
UPLINK_COLOURS = {"features": "Blues", "images": "Greens", "codes": "Oranges"}


def deployment_section(run: RunDir, results: Results) -> list[str]:
    """The edge and cloud halves over the network (``ddnn serve`` and ``ddnn edge``): accuracy
    against bytes on the wire, and the latency model with the measured figures."""
    lines = ["## The edge-cloud deployment: accuracy against bytes, and latency\n"]
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
    lines += _bytes_lines(run, sweep)
    if not reports:
        lines.append(f"No live edge run yet: `ddnn edge --run {run} --server URL --mechanism router`.\n")
        return lines
    return [*lines, _live_table(reports), "", *_latency_lines(run, results["latency_model"], reports)]


def _bytes_lines(run: RunDir, sweep: dict | None) -> list[str]:
    """The sweep's figure and table of accuracy against bytes, or how to make the sweep."""
    if sweep is None:
        return [
            f"No current sweep: run `ddnn serve --run {run}` and then "
            f"`ddnn edge --run {run} --server URL --sweep --batch 256`.\n"
        ]
    draw_figure(lambda ax: _bytes_axes(ax, sweep), run.figure("deployment_bytes"), size=(9.0, 4.8))
    return [
        f"![accuracy against bytes]({run.figure('deployment_bytes').relative_to(run.root)})",
        "",
        _bytes_table(sweep),
        "",
    ]


def _latency_lines(run: RunDir, lm: dict, reports: list[dict]) -> list[str]:
    """The latency model's figure and table, assumed and measured (none without a measurement)."""
    measured = _measured_latency(reports)
    if not measured:
        return []
    path = run.figure("deployment_latency")
    draw_figure(lambda ax: _latency_axes(ax, lm, measured, reports), path)
    return [
        f"![latency model]({path.relative_to(run.root)})",
        "",
        f"Fig. 6.5's latency model T(L0) = T_edge + (1 - L0) T_offload with the thesis's assumed "
        f"T_edge = {lm['edge_ms']:g} ms and T_offload = {lm['cloud_ms']:g} ms, and with the medians "
        "measured on loopback at batch 1 (edge: a local sample's latency; offload: the round trip "
        "of one request, encoding and the cloud head included):",
        "",
        "| source | T_edge ms | T_offload ms | " + " | ".join(f"T({t}) ms" for t in HEADLINE_TARGETS) + " |",
        "|---|---|---|---|---|---|",
        _latency_row("assumed (thesis)", lm["edge_ms"], lm["cloud_ms"]),
        *(_latency_row(f"measured, {w} ({device})", e, o) for w, (e, o, device) in measured.items()),
        "",
    ]


def _uplinks(sweep: dict) -> dict[str, str]:
    """Each uplink label of the sweep, in its order, with the kind of what it sends."""
    return {p["uplink"]: p["kind"] for p in sweep["points"]}


def _uplink_colours(sweep: dict) -> dict[str, Any]:
    """A colour per uplink: shades of blue for z, green for the image, orange for bottlenecks."""
    uplinks, colours = _uplinks(sweep), {}
    for kind, cmap in UPLINK_COLOURS.items():
        labels = [label for label, k in uplinks.items() if k == kind]
        for i, label in enumerate(labels):
            colours[label] = plt.get_cmap(cmap)(0.45 + 0.5 * i / max(1, len(labels) - 1))
    return colours


def _bytes_axes(ax, sweep: dict) -> None:
    colours = _uplink_colours(sweep)
    for label, colour in colours.items():
        for mechanism, linestyle in DEPLOYED_MECHANISMS.items():
            points = sorted(
                (p for p in sweep["points"] if p["uplink"] == label and p["mechanism"] == mechanism),
                key=lambda p: p["bytes_per_sample"],
            )
            ax.plot(
                [p["bytes_per_sample"] for p in points],
                [100 * p["accuracy"] for p in points],
                color=colour,
                linestyle=linestyle,
                marker="s" if mechanism == CLOUD_ONLY else "o",
                markersize=3,
                linewidth=1,
                label=label if mechanism == ROUTER else None,
            )
    ax.axhline(100 * sweep["edge_only_accuracy"], color="tab:gray", linewidth=0.8)
    for mechanism, linestyle in DEPLOYED_MECHANISMS.items():
        marker = "s" if mechanism == CLOUD_ONLY else "o"
        ax.plot([], [], color="black", linestyle=linestyle, marker=marker, markersize=3, label=mechanism)
    ax.plot([], [], color="tab:gray", linewidth=0.8, label="edge only (0 B)")
    ax.set_xscale("log")
    ax.set_xlabel("uplink bytes per sample (log; one request per offload, HTTP head included)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"accuracy against bytes sent, every uplink ({sweep['samples']} test samples)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))


def _table_target(sweep: dict) -> float:
    """The target the table quotes: the reference budget, or the family's target nearest it."""
    targets = {p["target"] for p in sweep["points"] if p["target"] is not None}
    return min(targets, key=lambda t: abs(t - REFERENCE_TARGET))


def _bytes_table(sweep: dict) -> str:
    target = _table_target(sweep)
    at = {(p["uplink"], p["mechanism"], p["target"]): p for p in sweep["points"]}
    rows = [
        f"Every uplink at L0 = {target:g} (the calibrated router and entropy) and with every sample "
        f"offloaded; the image is {sweep['image_bytes']} B and the edge alone scores "
        f"{pct(sweep['edge_only_accuracy'])} % with 0 B. A request's bytes include the HTTP head; "
        "for PNG, JPEG, WebP and entropy-coded codes they are the mean over the samples.",
        "",
        "| uplink | B per offload | cloud only acc % | router acc % | router B/sample | entropy acc % | "
        "entropy B/sample |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in _uplinks(sweep):
        cloud = at.get((label, CLOUD_ONLY, None))
        router, entropy = at.get((label, ROUTER, target)), at.get((label, ENTROPY, target))
        cells = [f"{sweep['request_bytes'][label]:.0f}", pct(cloud["accuracy"]) if cloud else "–"]
        for point in (router, entropy):
            cells += [pct(point["accuracy"]), f"{point['bytes_per_sample']:.0f}"] if point else ["–", "–"]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _live_table(reports: list[dict]) -> str:
    rows = [
        "Live runs of the edge against the server (`edge/*/edge_report.json`):",
        "",
        "| mechanism | L0 | uplink | batch | samples | accuracy % (in process) | local % | B/sample | "
        "B/offload | ms per sample p50 / p95 / p99 | ms per offload p50 | samples/s | fallbacks % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        c, b, lat = r["config"], r["bytes"], r["latency_ms"]
        per_sample = lat["per_sample"]
        offload_ms = "–" if lat["per_offload"] is None else f"{lat['per_offload']['p50']:.2f}"
        per_offload = "–" if b["uplink_per_offload"] is None else f"{b['uplink_per_offload']:.0f}"
        rows.append(
            f"| {c['mechanism']} | {c['target']:g} | {r['uplink']['label']} | {c['batch']} | "
            f"{r['samples']} | "
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
