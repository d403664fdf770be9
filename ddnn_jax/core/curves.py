"""Accuracy-over-local-rate curves as array functions: the operating points of offload masks, the
area under a curve, and the latency model of a local rate."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ddnn_jax.core.labels import Correctness


def operating_points(c: Correctness, offload) -> tuple[np.ndarray, np.ndarray]:
    """Local rate and mixed-system accuracy [G] of offload masks [G, N] (or [N]: scalars).

    Both are float64 on the host: accuracies are exact fractions of the split.
    """
    sent = np.asarray(offload, bool)
    local_rate = 1.0 - sent.mean(-1)
    accuracy = np.where(sent, np.asarray(c.cloud_correct), np.asarray(c.local_correct)).mean(-1)
    return local_rate, accuracy


def area_under_curve(
    local_rates: Sequence[float], accuracies: Sequence[float], edge_only: float, cloud_only: float
) -> float:
    """Trapezoid area of accuracy over local rate on [0, 1], closed by the cloud-only (0) and
    edge-only (1) points."""
    xs = [0.0, *local_rates, 1.0]
    ys = [cloud_only, *accuracies, edge_only]
    order = np.argsort(xs, kind="stable")
    return float(np.trapezoid(np.asarray(ys)[order], np.asarray(xs)[order]))


def latency_model(
    targets: Sequence[float], edge_only: float, cloud_only: float, edge_ms: float, cloud_ms: float
) -> dict:
    """T(L0) = L0*T_edge + (1-L0)*(T_edge+T_cloud) and the naive mix of the exits' accuracies,
    at each target L0."""
    return {
        "edge_ms": edge_ms,
        "cloud_ms": cloud_ms,
        "points": [
            {
                "target": t,
                "latency_ms": edge_ms + (1.0 - t) * cloud_ms,
                "naive_accuracy": t * edge_only + (1.0 - t) * cloud_only,
            }
            for t in targets
        ],
    }
