"""Temperature scaling, the operating threshold and the grey zone, all fixed on validation data.

Nothing here may ever be given test-split predictions: the training command calls these on
the validation split only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class OperatingPointConfig:
    """The target that fixes the threshold on validation data (the grey zone around it is
    ``lab.grey_zone``'s rule, docs/grey_zone_rule.md).

    Attributes:
        target_sensitivity: the threshold is the highest one whose validation sensitivity
            reaches this.
    """

    target_sensitivity: float = 0.97


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

    from scipy.optimize import minimize_scalar  # here: fitting is the lab's, scoring needs no SciPy optimiser

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
