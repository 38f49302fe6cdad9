"""Validation stress perturbations and the rule that chooses between candidate models."""

import numpy as np
import pytest

from pneumo_model.lab.shifts import change_aspect, keep_top
from pneumo_model.lab.stress import (
    STRESS_NAMES,
    acquisition_groups,
    drift_metrics,
    perturb,
    preferred,
    stress_metrics,
)


def _boxes(shapes: list[tuple[int, int]], size: int = 40) -> np.ndarray:
    """(n, size, size, 1) float32: a centred bright rectangle of each (width, height)."""
    images = np.zeros((len(shapes), size, size, 1), np.float32)
    for image, (width, height) in zip(images, shapes):
        left, top = (size - width) // 2, (size - height) // 2
        image[top : top + height, left : left + width] = 1.0
    return images


def _aspect(image: np.ndarray) -> float:
    """Width / height of the bright region."""
    bright = image[..., 0] > 0.5
    return bright.any(axis=0).sum() / bright.any(axis=1).sum()


def test_change_aspect_narrows_and_widens_content_without_changing_the_input():
    image = _boxes([(20, 20)])[0]
    before = image.copy()
    assert _aspect(change_aspect(image, 0.8)) == pytest.approx(0.8, abs=0.06)
    assert _aspect(change_aspect(image, 1.25)) == pytest.approx(1.25, abs=0.06)
    np.testing.assert_array_equal(image, before)
    with pytest.raises(ValueError, match="positive"):
        change_aspect(image, 0.0)


def test_keep_top_stretches_the_upper_part_to_full_height():
    image = np.zeros((40, 40, 1), np.float32)
    image[:20] = 1.0
    out = keep_top(image, 0.5)
    assert out.shape == image.shape and out[:38].min() > 0.95


def test_swapped_narrows_normals_and_widens_pneumonias():
    images = _boxes([(20, 20), (20, 20)])
    out = perturb(images, np.array([0, 1]), "swapped")
    assert _aspect(out[0]) < 0.9 and _aspect(out[1]) > 1.1
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(images, np.array([0, 1]), "mirror")


class _WidthModel:
    """Stub predictor: 'pneumonia' when the box is taller than wide (the shortcut), or when the centre
    is dark (the real sign)."""

    def __init__(self, uses_shortcut: bool):
        self.uses_shortcut = uses_shortcut
        self.threshold = 0.5

    def probabilities(self, images):
        if self.uses_shortcut:
            ratios = np.array([_aspect(image) for image in images])
            return 1.0 / (1.0 + np.exp(20.0 * (ratios - 1.0)))  # narrower than tall -> pneumonia
        return (images[:, 20, 20, 0] < 0.5).astype(float) * 0.9 + 0.05


def test_a_model_that_uses_the_width_cue_fails_swapped_and_loses_to_one_that_does_not():
    labels = np.array([0] * 20 + [1] * 20)
    shapes = [(28, 24)] * 20 + [(24, 28)] * 20  # normals wide, pneumonias narrow: this data's cue
    images = _boxes(shapes)
    images[20:, 14:27, 14:27, 0] = 0.0  # the real sign of pneumonia in this toy: a central hole
    shortcut = stress_metrics(_WidthModel(True), images, labels)
    robust = stress_metrics(_WidthModel(False), images, labels)
    assert set(shortcut) == set(STRESS_NAMES)
    assert shortcut["plain"]["roc_auc"] == 1.0 and robust["plain"]["roc_auc"] == 1.0
    assert shortcut["swapped"]["roc_auc"] < 0.6
    assert shortcut["narrow"]["specificity"] < 0.5 and robust["narrow"]["specificity"] == 1.0
    assert preferred({"shortcut": shortcut, "robust": robust}) == "robust"


def test_acquisition_groups_split_families_subtypes_and_thirds_of_patient_numbers():
    names = [
        "IM-0115-0001.jpeg", "IM-0500-0001.jpeg", "NORMAL2-IM-0300-0001.jpeg",
        "NORMAL2-IM-1400-0001.jpeg", "NORMAL2-IM-0900-0001.jpeg", "IM-0700-0001.jpeg",
        "person1_bacteria_1.jpeg", "person900_virus_1500.jpeg", "person40_bacteria_200.jpeg",
    ]
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])
    groups = acquisition_groups(names, labels)
    assert groups["normal, IM- files"].tolist() == [True, True, False, False, False, True, False, False, False]
    assert groups["normal, NORMAL2- files"].sum() == 3 and groups["pneumonia, viral"].tolist()[7]
    # Normals by number: 115 300 | 500 700 | 900 1400 (NORMAL2- prefix ignored for the number).
    assert groups["normal, patient numbers 115-300 (third 1)"].tolist()[:6] == [True, False, True, False, False, False]
    assert groups["normal, patient numbers 900-1400 (third 3)"].tolist()[:6] == [False, False, False, True, True, False]
    assert groups["pneumonia, patient numbers 900-900 (third 3)"].tolist() == [False] * 7 + [True, False]

    # A model that calls the last third of the normals pneumonia shows the drift there only.
    probabilities = np.array([0.1, 0.1, 0.1, 0.9, 0.9, 0.1, 0.9, 0.2, 0.9])
    rows = drift_metrics(probabilities, labels, names, threshold=0.5)
    assert rows["normal, patient numbers 900-1400 (third 3)"] == {"n": 2, "correct": 0, "rate": 0.0}
    assert rows["normal, patient numbers 115-300 (third 1)"]["rate"] == 1.0
    assert rows["normal, NORMAL2- files"] == {"n": 3, "correct": 1, "rate": 1 / 3}
    assert rows["pneumonia, viral"] == {"n": 1, "correct": 0, "rate": 0.0}
    assert rows["pneumonia, bacterial"]["rate"] == 1.0


def test_stress_report_scores_each_models_own_validation_split_as_the_app_does(tiny_model, synthetic_data, tmp_path):
    import json
    import shutil

    from pneumo_model.artifacts import read_metadata
    from pneumo_model.data import model_split
    from pneumo_model.errors import DataError
    from pneumo_model.prediction import Predictor
    from pneumo_model.lab.stress import stress_report

    report = stress_report([tiny_model], synthetic_data, tmp_path / "reports")
    (name,) = report["results"]
    validation = model_split(read_metadata(tiny_model), synthetic_data).validation
    assert report["models"][name]["validation_images"] == len(validation)
    assert report["models"][name]["ood_flagged"] is None  # the tiny model has no gate
    assert set(report["results"][name]) == set(STRESS_NAMES) and report["preferred"] == name
    # The plain calls are the app's: the same probabilities as predict_source on each file.
    predictor = Predictor.from_file(tiny_model)
    app = np.array([predictor.predict_source(s.path).probability for s in validation])
    labels = np.array([s.label for s in validation])
    expected = {
        "normal": float(((app >= predictor.threshold) == 0)[labels == 0].mean()),
        "pneumonia": float((app >= predictor.threshold)[labels == 1].mean()),
    }
    assert report["results"][name]["plain"]["specificity"] == pytest.approx(expected["normal"])
    assert report["results"][name]["plain"]["sensitivity"] == pytest.approx(expected["pneumonia"])
    from sklearn.metrics import roc_auc_score

    assert report["results"][name]["plain"]["roc_auc"] == pytest.approx(roc_auc_score(labels, app))
    assert json.loads((tmp_path / "reports" / "validation_stress.json").read_text()) == report
    # Data that differ from the model's training data are refused, not silently re-split.
    changed = shutil.copytree(synthetic_data, tmp_path / "changed")
    sorted((changed / "train" / "NORMAL").iterdir())[0].unlink()
    with pytest.raises(DataError, match="differs from the data model"):
        stress_report([tiny_model], changed, tmp_path / "other")
