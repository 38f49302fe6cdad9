"""Temperature, threshold and grey-zone selection on inputs whose answer is known."""

import numpy as np
import pytest

from pneumo_model.calibration import (
    GreyZone,
    fit_temperature,
    sigmoid,
    threshold_for_sensitivity,
)
from pneumo_model.errors import ConfigError


def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 6, 20000)
    labels = rng.random(20000) < sigmoid(logits, temperature=2.5)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.08)


def test_fit_temperature_leaves_calibrated_logits_alone():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, 20000)
    labels = rng.random(20000) < sigmoid(logits)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.08)


def test_threshold_is_the_highest_that_reaches_the_target_sensitivity():
    probabilities = np.array([0.05, 0.2, 0.3, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    # 10 positives: sensitivity 0.9 allows one miss, so the threshold is the second-lowest positive.
    assert threshold_for_sensitivity(probabilities, labels, 0.9) == 0.2
    assert threshold_for_sensitivity(probabilities, labels, 1.0) == 0.1
    assert threshold_for_sensitivity(probabilities, labels, 0.85) == 0.2
    assert threshold_for_sensitivity(probabilities, labels, 0.8) == 0.3


def test_threshold_needs_positives_and_a_sensible_target():
    with pytest.raises(ConfigError):
        threshold_for_sensitivity(np.array([0.1]), np.array([0]), 0.9)
    with pytest.raises(ConfigError):
        threshold_for_sensitivity(np.array([0.1]), np.array([1]), 1.5)


def test_grey_zone_contains_uses_a_half_open_band():
    zone = GreyZone(0.4, 0.6)
    assert zone.contains(np.array([0.39, 0.4, 0.59, 0.6])).tolist() == [False, True, True, False]
