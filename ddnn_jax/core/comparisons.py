"""Per-sample comparisons of offload decisions on one split: paired statistics of a mechanism
against a baseline (bootstrap interval, exact McNemar test), and a router's disagreement with the
oracle (Fig. 6.12)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.stats

from ddnn_jax.core.labels import Correctness


class PairedComparison(NamedTuple):
    """M comparisons of a mechanism (a) against a baseline (b) on the same N samples."""

    difference: np.ndarray  # [M] accuracy(a) - accuracy(b)
    ci95_low: np.ndarray  # [M] paired percentile bootstrap of the difference
    ci95_high: np.ndarray  # [M]
    p_value: np.ndarray  # [M] exact McNemar: two-sided binomial test of the discordant pairs
    wins: np.ndarray  # [M] samples a gets right and b wrong
    losses: np.ndarray  # [M] samples b gets right and a wrong


def paired_comparisons(
    right: np.ndarray, base_right: np.ndarray, *, resamples: int, seed: int
) -> PairedComparison:
    """Paired statistics of per-sample correctness, row by row.

    The interval is a percentile bootstrap of the mean per-sample difference in correctness
    (a - b) over samples: ``scipy.stats.bootstrap`` on the [M, N] differences with
    ``np.random.default_rng(seed)``, every row resampled with the same indices (running it on
    any single row gives that row's interval). The p-value is the exact McNemar test: a
    two-sided binomial test of the discordant pairs at 1/2 (1 when there are none).

    Args:
      right: [M, N] bool, whether the mechanism gets each sample right.
      base_right: [M, N] bool, the same for the baseline.
      resamples: bootstrap resamples.
      seed: seed of the bootstrap's numpy Generator.
    """
    differences = right.astype(np.int8) - base_right.astype(np.int8)
    interval = scipy.stats.bootstrap(
        (differences,),
        np.mean,
        axis=-1,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
        batch=max(1, 2_000_000 // differences.size),
    ).confidence_interval
    wins, losses = np.sum(right & ~base_right, -1), np.sum(~right & base_right, -1)
    p_value = [
        scipy.stats.binomtest(int(won), int(won + lost), 0.5).pvalue if won + lost else 1.0
        for won, lost in zip(wins, losses, strict=True)
    ]
    return PairedComparison(
        difference=right.mean(-1) - base_right.mean(-1),
        ci95_low=np.asarray(interval.low),
        ci95_high=np.asarray(interval.high),
        p_value=np.asarray(p_value, np.float64),
        wins=wins,
        losses=losses,
    )


class OracleDisagreement(NamedTuple):
    """A router's decisions split into disjoint groups: where it disagrees with the oracle
    ("noise"), borderline benefit |B| < tau among the rest, and the others ("normal")."""

    noise_rate: float
    border_rate: float  # |B| < tau over all samples, disagreeing or not
    shares: dict[str, float]  # of each group
    misclassification: dict[str, float | None]  # the mixed system's error rate in each (None: empty)


def oracle_disagreement(
    c: Correctness, offload: np.ndarray, oracle: np.ndarray, tau: float
) -> OracleDisagreement:
    """Fig. 6.12's groups of a router's offload mask [N] against the oracle's [N], and the mixed
    system's error rate within each."""
    noise = offload != oracle
    border = np.abs(np.asarray(c.benefit)) < tau
    wrong = ~np.where(offload, np.asarray(c.cloud_correct), np.asarray(c.local_correct))
    groups = {"noise": noise, "border": border & ~noise, "normal": ~noise & ~border}
    return OracleDisagreement(
        noise_rate=float(noise.mean()),
        border_rate=float(border.mean()),
        shares={g: float(m.mean()) for g, m in groups.items()},
        misclassification={g: (float(wrong[m].mean()) if m.any() else None) for g, m in groups.items()},
    )
