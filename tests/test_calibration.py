"""Temperature, threshold and grey-zone selection on inputs whose answer is known."""

import numpy as np
import pytest

from pneumo_model.calibration import (
    GreyZone,
    OperatingPointConfig,
    fit_grey_zone,
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


def test_grey_zone_is_empty_when_the_threshold_separates_perfectly():
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    y = np.array([0, 0, 0, 1, 1, 1])
    zone = fit_grey_zone(p, y, threshold=0.5)
    assert zone.high - zone.low == 0.0
    assert not zone.contains(p).any()


def test_grey_zone_takes_in_the_overlap_and_nothing_more():
    # Negatives up to 0.6, positives from 0.4: the mixed cases 0.4..0.6 must go in the band.
    p = np.array([0.1, 0.2, 0.3, 0.45, 0.6, 0.4, 0.55, 0.7, 0.8, 0.9])
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    config = OperatingPointConfig(zone_sensitivity=1.0, zone_specificity=1.0)
    zone = fit_grey_zone(p, y, threshold=0.5, config=config)
    inside = zone.contains(p)
    assert inside.tolist() == [False, False, False, True, True, True, True, False, False, False]
    assert zone.low == pytest.approx(0.3, abs=1e-9) or zone.low > 0.3
    assert zone.low <= 0.4 and 0.6 < zone.high <= 0.7
    outside = ~inside
    assert ((p[outside] >= zone.high) == y[outside].astype(bool)).all()


def test_grey_zone_allows_the_targets_error_rate_outside():
    rng = np.random.default_rng(3)
    y = rng.random(4000) < 0.7
    p = np.clip(np.where(y, rng.normal(0.75, 0.15, 4000), rng.normal(0.3, 0.15, 4000)), 0, 1)
    config = OperatingPointConfig(zone_sensitivity=0.99, zone_specificity=0.95)
    zone = fit_grey_zone(p, y, threshold=0.5, config=config)
    out = ~zone.contains(p)
    sensitivity = (p[out & y] >= zone.high).mean()
    specificity = (p[out & ~y] < zone.low).mean()
    assert sensitivity >= 0.99 and specificity >= 0.95
    assert zone.low <= 0.5 <= zone.high
    # Narrowest: shrinking either edge by one case breaks a target.
    assert 0.05 < zone.high - zone.low < 0.8


def test_grey_zone_contains_uses_a_half_open_band():
    zone = GreyZone(0.4, 0.6)
    assert zone.contains(np.array([0.39, 0.4, 0.59, 0.6])).tolist() == [False, True, True, False]
