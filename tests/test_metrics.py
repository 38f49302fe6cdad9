"""Metrics against hand-computed fixtures."""

import math

import numpy as np
import pytest

from pneumo_model.lab.metrics import binary_metrics, bootstrap_intervals, calibration_bins, expected_calibration_error

# 4 positives, 6 negatives. At threshold 0.5: TP 3 (0.9, 0.8, 0.6), FN 1 (0.4),
# FP 1 (0.7), TN 5.
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
PROBS = np.array([0.9, 0.8, 0.6, 0.4, 0.7, 0.3, 0.2, 0.1, 0.05, 0.45])


def test_confusion_based_metrics_match_hand_computation():
    m = binary_metrics(LABELS, PROBS, 0.5)
    assert m["confusion"] == {"tn": 5, "fp": 1, "fn": 1, "tp": 3}
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # AUC: of 24 positive-negative pairs, the positive scores higher in all but
    # (0.6 vs 0.7), (0.4 vs 0.7), (0.4 vs 0.45): 21 / 24.
    assert m["roc_auc"] == pytest.approx(21 / 24)
    assert m["n"] == 10


def test_the_threshold_is_inclusive():
    assert binary_metrics(np.array([1, 0]), np.array([0.5, 0.49]), 0.5)["accuracy"] == 1.0


def test_auc_is_nan_with_one_class():
    m = binary_metrics(np.array([1, 1]), np.array([0.7, 0.2]), 0.5)
    assert math.isnan(m["roc_auc"]) and m["sensitivity"] == 0.5 and math.isnan(m["specificity"])


def test_ece_by_hand():
    # Bin [0, 1/15): p 0.05 (label 0); bin [0.6, 0.667): p 0.6, 0.6 (labels 1, 0); bin 14: p 1.0 (label 1).
    labels = np.array([0, 1, 0, 1])
    probs = np.array([0.05, 0.6, 0.6, 1.0])
    expected = (1 * abs(0 - 0.05) + 2 * abs(0.5 - 0.6) + 1 * abs(1 - 1.0)) / 4
    assert expected_calibration_error(labels, probs) == pytest.approx(expected)
    bins = calibration_bins(labels, probs)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 4
    assert bins[14]["count"] == 1 and bins[9]["count"] == 2


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.6
    probs = np.clip(labels * 0.4 + rng.random(300) * 0.6, 0, 1)
    groups = np.arange(300) // 2
    first = bootstrap_intervals(labels, probs, groups, 0.5, n_resamples=200, seed=1)
    again = bootstrap_intervals(labels, probs, groups, 0.5, n_resamples=200, seed=1)
    assert first == again
    point = binary_metrics(labels, probs, 0.5)
    for name, (low, high) in first.items():
        assert low <= point[name] <= high
        assert high - low < 0.2
