"""Calibration of an exit's softmax probabilities: temperature scaling and the metrics that judge
it (expected calibration error, negative log-likelihood, Brier score, reliability bins).

Temperature scaling (Guo et al., ICML 2017) divides an exit's logits by one scalar T > 0 fitted on
the validation split by minimising the NLL; it leaves each sample's predicted class unchanged but
changes its confidence, and so what the entropy, max-prob and margin rules rank. Everything here
is host-side NumPy in float64 on a few thousand samples; the NLL is minimised with SciPy's bounded
scalar minimiser over log T (the NLL is convex in 1/T, so the minimum is unique).
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import scipy.special

ECE_BINS = 15  # the standard equal-width binning of the max probability (Guo et al. 2017)
LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))  # temperatures searched


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """[N, C] probabilities of logits / temperature, in float64."""
    return scipy.special.softmax(np.asarray(logits, np.float64) / temperature, axis=-1)


def negative_log_likelihood(logits, labels, temperature: float = 1.0) -> float:
    """Mean cross-entropy of the labels under softmax(logits / temperature)."""
    z = np.asarray(logits, np.float64) / temperature
    labels = np.asarray(labels)
    picked = np.take_along_axis(z, labels[:, None], axis=-1)[:, 0]
    return float(np.mean(scipy.special.logsumexp(z, axis=-1) - picked))


def brier_score(probabilities, labels) -> float:
    """Mean over samples of the squared distance between the probability vector and the one-hot
    label (the multi-class Brier score, in [0, 2])."""
    p = np.asarray(probabilities, np.float64)
    onehot = np.eye(p.shape[-1])[np.asarray(labels)]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=-1)))


def reliability_bins(probabilities, labels, bins: int = ECE_BINS) -> dict[str, list]:
    """The max probability binned into ``bins`` equal-width bins ((m-1)/M, m/M], the first one
    closed at 0: per bin its sample count, mean confidence and accuracy (None when empty)."""
    p = np.asarray(probabilities, np.float64)
    confidence = p.max(-1)
    right = p.argmax(-1) == np.asarray(labels)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    mean_of = lambda values: [
        float(s / c) if c else None for s, c in zip(np.bincount(index, values, bins), count, strict=True)
    ]
    return {
        "upper_edges": [float(e) for e in np.linspace(0, 1, bins + 1)[1:]],
        "count": [int(c) for c in count],
        "confidence": mean_of(confidence),
        "accuracy": mean_of(right.astype(np.float64)),
    }


def expected_calibration_error(probabilities, labels, bins: int = ECE_BINS) -> float:
    """sum_m |B_m| / N * |accuracy(B_m) - confidence(B_m)| over equal-width bins of the max
    probability (``reliability_bins``)."""
    table = reliability_bins(probabilities, labels, bins)
    n = sum(table["count"])
    return float(
        sum(
            c / n * abs(a - f)
            for c, a, f in zip(table["count"], table["accuracy"], table["confidence"], strict=True)
            if c
        )
    )


def fit_temperature(logits, labels) -> float:
    """The T minimising the NLL of softmax(logits / T) on these samples (within LOG_T_BOUNDS)."""
    found = scipy.optimize.minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(found.x))


def metrics(logits, labels, temperature: float) -> dict[str, float]:
    """ECE, NLL and Brier score of softmax(logits / temperature)."""
    p = softmax(logits, temperature)
    return {
        "ece": expected_calibration_error(p, labels),
        "nll": negative_log_likelihood(logits, labels, temperature),
        "brier": brier_score(p, labels),
    }


def calibrate_exit(val_logits, val_labels, test_logits, test_labels) -> dict:
    """One exit's temperature, fitted on validation, and its metrics before (T = 1) and after on
    both splits, with the test split's reliability bins before and after."""
    temperature = fit_temperature(val_logits, val_labels)
    splits = {"val": (val_logits, val_labels), "test": (test_logits, test_labels)}
    return {
        "temperature": temperature,
        "fitted_on": "val",
        "ece_bins": ECE_BINS,
        **{
            split: {"before": metrics(z, y, 1.0), "after": metrics(z, y, temperature)}
            for split, (z, y) in splits.items()
        },
        "reliability_test": {
            "before": reliability_bins(softmax(test_logits), test_labels),
            "after": reliability_bins(softmax(test_logits, temperature), test_labels),
        },
    }
