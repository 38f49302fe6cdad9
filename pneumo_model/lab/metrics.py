"""Classification and calibration metrics, with patient-grouped bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """Metrics of the call ``p >= threshold`` against the labels (1 = pneumonia).

    Returns:
        dict with accuracy, precision, sensitivity, specificity, f1, roc_auc, pr_auc, n and the
        confusion matrix counts (tn, fp, fn, tp). AUCs are NaN when only one class is present.
    """
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    predicted = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    both_classes = len(np.unique(y)) == 2
    return {
        "n": int(y.size),
        "accuracy": _ratio(tp + tn, y.size),
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": float(roc_auc_score(y, p)) if both_classes else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both_classes else float("nan"),
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def calibration_bins(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 15) -> list[dict]:
    """Equal-width bins over [0, 1]: count, mean predicted probability, observed positive rate."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    index = np.clip((p * n_bins).astype(int), 0, n_bins - 1)  # p == 1 goes in the last bin
    bins = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        bins.append(
            {
                "low": b / n_bins,
                "high": (b + 1) / n_bins,
                "count": count,
                "mean_probability": float(p[members].mean()) if count else None,
                "positive_rate": float(y[members].mean()) if count else None,
            }
        )
    return bins


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the count-weighted mean |positive rate - mean probability| over equal-width bins."""
    bins = calibration_bins(labels, probabilities, n_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        return float("nan")
    return float(
        sum(b["count"] * abs(b["positive_rate"] - b["mean_probability"]) for b in bins if b["count"]) / total
    )


BOOTSTRAP_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc")


def bootstrap_intervals(
    labels: np.ndarray,
    probabilities: np.ndarray,
    groups: np.ndarray,
    threshold: float,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile confidence intervals from resampling whole patient groups with replacement.

    Returns:
        ``{metric: [low, high]}`` for the metrics in ``BOOTSTRAP_METRICS``.
    """
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    _, group_index = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(group_index == g) for g in range(group_index.max() + 1)]
    rng = np.random.default_rng(seed)
    draws = {name: [] for name in BOOTSTRAP_METRICS}
    for _ in range(n_resamples):
        chosen = rng.integers(0, len(members), len(members))
        rows = np.concatenate([members[g] for g in chosen])
        result = binary_metrics(y[rows], p[rows], threshold)
        for name in BOOTSTRAP_METRICS:
            draws[name].append(result[name])
    tail = (1.0 - level) / 2.0 * 100.0
    return {
        name: [float(np.nanpercentile(values, tail)), float(np.nanpercentile(values, 100.0 - tail))]
        for name, values in draws.items()
    }
