"""The look every figure and table shares: one colour and line style per mechanism, the number
formats, the bar charts, and the writer of a figure's PNG."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ddnn_jax.core.families import FAMILIES, calibrated  # noqa: E402
from ddnn_jax.core.mechanisms import ORACLE, RULES, deployable_rules  # noqa: E402
from ddnn_jax.rundir import atomic_file  # noqa: E402

# One colour per mechanism in every figure (the decision rules' from their registry); a router
# family's thesis decision is dashed and its calibrated decision solid, in the family's colour.
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
    "olive",
    "sienna",
    "deeppink",
    "steelblue",
    "yellowgreen",
    "maroon",
    "darkviolet",
    "darkcyan",
)


def family_colour(curve: str) -> str:
    """A registered family's colour, by its place in the registry (cycling past the palette's
    length); an unregistered family's is tab:blue."""
    curves = [f.curve for f in FAMILIES.values()]
    return _ROUTER_PALETTE[curves.index(curve) % len(_ROUTER_PALETTE)] if curve in curves else "tab:blue"


def _colours() -> dict[str, str]:
    rules = {name: rule.colour for name, rule in RULES.items()}
    return {ORACLE: "black", **rules, **{calibrated(name): rules[name] for name in deployable_rules()}}


def style(name: str) -> dict[str, Any]:
    """Line style of a curve: its mechanism's colour, dashed for a router's thesis decision."""
    colours = _colours()
    if name in colours:
        dashed = name == ORACLE or name.endswith("_calibrated")
        return dict(color=colours[name], linestyle="--" if dashed else "-")
    family = name.removesuffix("_calibrated")
    return dict(
        color=family_colour(family),
        linestyle="-" if name.endswith("_calibrated") else "--",
        marker="o",
        markersize=3,
    )


def pct(x) -> str:
    """A fraction in percent with two decimals, or a dash for a missing value."""
    return "–" if x is None else f"{100 * x:.2f}"


def significant(ci95: list[float] | None) -> bool:
    """Whether a 95 % interval of a difference excludes zero (no interval: not shown to be)."""
    return ci95 is not None and (ci95[0] > 0 or ci95[1] < 0)


def bars(ax, labels: list[str], values: list[float], title: str, ylabel: str = "%") -> None:
    """One bar per label, fractions shown in %."""
    drawn = ax.bar(labels, [100 * v for v in values], color="tab:blue")
    ax.bar_label(drawn, fmt="%.2f", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)


def grouped_bars(
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
        drawn = ax.bar(
            [x + offset for x in range(len(groups))],
            [scale * v for v in values],
            width,
            yerr=yerr,
            capsize=3,
            label=label,
        )
        ax.bar_label(drawn, fmt=fmt, fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)


def draw_figure(draw: Callable, path: Path, size: tuple[float, float] = (6.4, 4.2)) -> None:
    """Calls ``draw(ax)`` on a fresh figure of ``size`` inches and writes it to ``path`` as a
    PNG, atomically."""
    fig, ax = plt.subplots(figsize=size)
    draw(ax)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
