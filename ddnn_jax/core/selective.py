"""Selective prediction seen from the local exit: the risk-coverage curve of an offloading score,
its area (AURC) and its excess over the best possible ordering (E-AURC).

A mechanism that offloads the samples with the highest scores keeps the k lowest local; the local
exit's selective risk at coverage k / N is its error rate among those k (Geifman & El-Yaniv,
NeurIPS 2017). AURC is the mean selective risk over k = 1..N (Geifman et al., ICLR 2019), lower
is better; E-AURC subtracts the AURC of the ordering that keeps every right answer before any
wrong one, so that exits of different accuracy compare. Ties in a score are broken by sample
index (a stable sort), as the budget-matched decisions break them.
"""

from __future__ import annotations

import numpy as np

COVERAGE_POINTS = 100  # points of the stored risk-coverage curve: coverage 0.01, 0.02, ..., 1


def selective_risks(offload_scores, local_correct) -> np.ndarray:
    """[N] the local exit's error rate among the k lowest-scored samples, k = 1..N."""
    order = np.argsort(np.asarray(offload_scores, np.float64), kind="stable")
    wrong = 1.0 - np.asarray(local_correct, np.float64)[order]
    return np.cumsum(wrong) / np.arange(1, wrong.size + 1)


def aurc(offload_scores, local_correct) -> float:
    """Mean selective risk over every coverage k / N."""
    return float(selective_risks(offload_scores, local_correct).mean())


def optimal_aurc(local_correct) -> float:
    """AURC of the ordering that keeps every right answer first."""
    right = np.asarray(local_correct, np.float64)
    return aurc(-right, right)


def selective_record(offload_scores, local_correct) -> dict:
    """AURC, E-AURC and the risk-coverage curve at COVERAGE_POINTS coverages."""
    risks = selective_risks(offload_scores, local_correct)
    n = risks.size
    coverages = np.arange(1, COVERAGE_POINTS + 1) / COVERAGE_POINTS
    kept = np.maximum(np.round(coverages * n).astype(int), 1)
    value = float(risks.mean())
    return {
        "aurc": value,
        "e_aurc": value - optimal_aurc(local_correct),
        "risk_coverage": [{"coverage": float(k / n), "risk": float(risks[k - 1])} for k in kept],
    }
