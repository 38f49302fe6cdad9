"""Temperature scaling, the operating threshold and the grey zone, all fixed on validation data.

Nothing here may ever be given test-split predictions: the training command calls these on
the validation split only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from .errors import ConfigError


@dataclass(frozen=True)
class OperatingPointConfig:
    """Targets that fix the threshold and the grey zone on validation data.

    Attributes:
        target_sensitivity: the threshold is the highest one whose validation sensitivity
            reaches this.
        zone_sensitivity: outside the grey zone, sensitivity must reach this.
        zone_specificity: outside the grey zone, specificity must reach this.
    """

    target_sensitivity: float = 0.97
    zone_sensitivity: float = 0.99
    zone_specificity: float = 0.95


def sigmoid(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probability of pneumonia from logits: ``sigmoid(logit / temperature)``."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    return (1.0 / (1.0 + np.exp(-np.clip(scaled, -500, 500)))).astype(np.float64)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the binary cross-entropy of ``sigmoid(logits / T)``.

    Returns:
        T in [0.05, 20] (searched on log T).
    """
    logits = np.asarray(logits, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=np.float64).ravel()
    if logits.size == 0 or logits.size != labels.size:
        raise ConfigError("fit_temperature needs as many labels as logits, and at least one.")

    def negative_log_likelihood(log_t: float) -> float:
        z = logits / np.exp(log_t)
        # log(1 + exp(-z)) for y=1 and log(1 + exp(z)) for y=0, computed stably.
        return float(np.mean(np.logaddexp(0.0, -z) * labels + np.logaddexp(0.0, z) * (1 - labels)))

    result = minimize_scalar(negative_log_likelihood, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def threshold_for_sensitivity(probabilities: np.ndarray, labels: np.ndarray, target: float) -> float:
    """The highest threshold t such that the share of positives with p >= t reaches ``target``.

    Raises:
        ConfigError: no positive case, or a target outside (0, 1].
    """
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"The target sensitivity must lie in (0, 1]; got {target}.")
    positives = np.sort(np.asarray(probabilities, dtype=np.float64)[np.asarray(labels) == 1])
    if positives.size == 0:
        raise ConfigError("Cannot set a threshold without any pneumonia case in the data.")
    # Calling the k lowest positives negative keeps sensitivity (n - k) / n >= target.
    allowed_misses = int(np.floor(positives.size * (1.0 - target) + 1e-9))
    return float(positives[allowed_misses])


@dataclass(frozen=True)
class GreyZone:
    """Band of calibrated probability [low, high) in which no call is trusted.

    A case with p < low is called normal, p >= high pneumonia, anything else needs a careful read.
    """

    low: float
    high: float

    def contains(self, probabilities: np.ndarray) -> np.ndarray:
        p = np.asarray(probabilities)
        return (p >= self.low) & (p < self.high)


def fit_grey_zone(
    probabilities: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    config: OperatingPointConfig = OperatingPointConfig(),
) -> GreyZone:
    """The narrowest band around ``threshold`` outside which the targets hold.

    Outside the band, sensitivity = TP / (TP + FN) with TP the positives at p >= high and FN
    those at p < low; specificity likewise with the negatives. Candidate edges are the
    observed probabilities (and the threshold itself); the narrowest band that meets both
    targets wins, ties broken towards the band closest to the threshold.

    Returns:
        The band; ``GreyZone(threshold, threshold)`` (empty) if the threshold alone meets the targets,
        and the whole range if no band does.
    """
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    # A low edge just above a case calls that case normal; a high edge at a case calls it pneumonia.
    above_one = np.nextafter(1.0, 2.0)
    lows = np.unique(np.concatenate([[0.0, threshold], np.nextafter(p[p < threshold], 2.0)]))
    highs = np.unique(np.concatenate([[threshold, above_one], p[p >= threshold]]))
    # Counts below each low edge and at-or-above each high edge, per class.
    pos_sorted, neg_sorted = np.sort(p[y]), np.sort(p[~y])
    fn = np.searchsorted(pos_sorted, lows, side="left")[:, None]  # positives with p < low
    tn = np.searchsorted(neg_sorted, lows, side="left")[:, None]
    tp = (pos_sorted.size - np.searchsorted(pos_sorted, highs, side="left"))[None, :]  # p >= high
    fp = (neg_sorted.size - np.searchsorted(neg_sorted, highs, side="left"))[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = np.where(tp + fn > 0, tp / (tp + fn), 1.0)
        specificity = np.where(tn + fp > 0, tn / (tn + fp), 1.0)
    ok = (sensitivity >= config.zone_sensitivity) & (specificity >= config.zone_specificity)
    if not ok.any():
        return GreyZone(0.0, float(np.nextafter(1.0, 2.0)))
    width = np.where(ok, highs[None, :] - lows[:, None], np.inf)
    distance = np.abs(highs[None, :] + lows[:, None] - 2 * threshold)
    order = np.lexsort((distance.ravel(), width.ravel()))
    i, j = np.unravel_index(order[0], width.shape)
    return GreyZone(float(lows[i]), float(highs[j]))
