"""Training, evaluation and comparison end to end on a small synthetic data set (seconds, no real data)."""

import csv
import json
import shutil

import keras
import numpy as np
import pytest

from pneumo_model.artifacts import load_model
from pneumo_model.lab.augmentation import AugmentConfig
from pneumo_model.lab.comparison import compare, imbalance_study
from pneumo_model.errors import ConfigError, DataError
from pneumo_model.lab.evaluation import (
    GOAL,
    MUST_BAR,
    TEST_LOG_NAME,
    call_files,
    evaluate,
    evaluate_crop,
    report_markdown,
    targets_met,
)
from pneumo_model.pipeline import DecodedImage
from pneumo_model.prediction import Predictor
from pneumo_model.explain import GradCam
from pneumo_model.lab.metrics import binary_metrics
from pneumo_model.data import load_model_inputs, make_split
from pneumo_model.lab.training import TrainConfig, train


def test_training_writes_a_calibrated_model_with_complete_metadata(tiny_model, synthetic_data):
    model, metadata = load_model(tiny_model)
    assert metadata.architecture == "cnn_small" and metadata.input_size == 32
    assert metadata.keras_version == keras.__version__
    assert metadata.protocol == "official"
    assert 0.05 <= metadata.temperature <= 20
    assert 0.0 < metadata.threshold < 1.0
    low, high = metadata.grey_zone
    assert low <= metadata.threshold <= high
    assert metadata.data_fingerprint == make_split(synthetic_data, "official", 0.25, metadata.seed).fingerprint
    assert metadata.train_config["val_fraction"] == 0.25
    assert metadata.command == "pytest"
    assert {"roc_auc", "sensitivity", "ece", "best_epoch"} <= set(metadata.validation)
    # The validation sensitivity reaches the target the threshold was set for.
    assert metadata.validation["sensitivity"] >= 0.97


def test_training_learns_the_synthetic_signal(tiny_model, synthetic_data):
    predictor = Predictor.from_file(tiny_model)
    split = make_split(synthetic_data, "official", 0.25, predictor.metadata.seed)
    probabilities = [predictor.predict_source(s.path).probability for s in split.test]
    labels = [s.label for s in split.test]
    assert np.mean(np.array(probabilities)[np.array(labels) == 1]) > np.mean(np.array(probabilities)[np.array(labels) == 0])


def test_training_several_members_ships_one_calibrated_ensemble(synthetic_data, tmp_path):
    config = TrainConfig(
        architecture="cnn_small", input_size=32, epochs=2, batch_size=8, val_fraction=0.25, patience=3,
        learning_rate=3e-3, members=2,
    )
    metadata = train(config, synthetic_data, tmp_path / "ensemble.keras", command="pytest", progress=None, verbose=0)
    model, loaded = load_model(tmp_path / "ensemble.keras")
    assert loaded.model_sha256 == metadata.model_sha256 and loaded.gradcam_layer == metadata.gradcam_layer
    assert metadata.gradcam_layer == ("conv2", "m1_conv2")
    assert metadata.train_config["members"] == 2 and metadata.members == 2
    assert metadata.description == "cnn_small, ensemble of 2"
    members = metadata.validation["members"]
    assert [m["seed"] for m in members] == [config.seed, config.seed + 1]
    assert all(0.0 <= m["roc_auc"] <= 1.0 and m["epochs_trained"] <= 2 for m in members)
    assert {"ensemble_logit", "conv2", "m1_conv2"} <= {layer.name for layer in model.layers}
    # The threshold was set on the ensemble's own validation probabilities.
    split = make_split(synthetic_data, "official", 0.25, config.seed)
    predictor = Predictor.from_file(tmp_path / "ensemble.keras", runtime="keras")  # as training calibrated it
    # Exactly the inputs training calibrated on: the threshold is one of their probabilities.
    images = load_model_inputs(split.validation, 32, None).astype(np.float32) / 255.0
    labels = np.array([s.label for s in split.validation])
    probabilities = predictor.probabilities(images)
    assert binary_metrics(labels, probabilities, metadata.threshold)["sensitivity"] == pytest.approx(
        metadata.validation["sensitivity"]
    )
    assert GradCam(predictor.model, metadata.gradcam_layer)(images[0]).shape == (32, 32)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="protocol"):
        TrainConfig(protocol="random")
    with pytest.raises(ConfigError, match="imbalance"):
        TrainConfig(imbalance="magic")
    with pytest.raises(ConfigError, match="Unknown architecture"):
        TrainConfig(architecture="nope")
    with pytest.raises(ConfigError, match="at least one member"):
        TrainConfig(members=0)
    with pytest.raises(ConfigError, match="class_aspect"):
        TrainConfig(augmentation=AugmentConfig(class_aspect=0.0))


def test_evaluate_writes_the_report_figures_and_counts_test_use(tiny_model, synthetic_data, tmp_path):
    report = evaluate(tiny_model, synthetic_data, tmp_path, n_resamples=50)
    written = json.loads((tmp_path / "evaluation.json").read_text())
    assert written == report
    assert report["model_sha256"] == load_model(tiny_model)[1].model_sha256
    assert report["image"]["n"] == 24
    for key in ("accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc", "pr_auc", "ece", "confusion"):
        assert key in report["image"]
    assert set(report["image_ci95"]) >= {"accuracy", "sensitivity", "specificity", "roc_auc"}
    assert set(report["subtype_sensitivity"]) == {"bacteria", "virus"}
    assert report["patient"]["n"] < report["image"]["n"]  # some patients have two images
    assert 0.0 <= report["grey_zone_fraction"] <= 1.0
    for figure in report["figures"].values():
        assert (tmp_path / figure).stat().st_size > 1000
    assert report["test_evaluations_so_far"] == 1
    evaluate(tiny_model, synthetic_data, tmp_path, n_resamples=10, split="validation")
    again = evaluate(tiny_model, synthetic_data, tmp_path, n_resamples=10)
    assert again["test_evaluations_so_far"] == 2  # the validation evaluation is not counted
    assert len((tmp_path / TEST_LOG_NAME).read_text().splitlines()) == 2
    rows = (tmp_path / "predictions_test.csv").read_text().splitlines()
    assert len(rows) == 25 and rows[0].startswith("file,label")


def test_evaluation_scores_exactly_what_the_app_scores(tiny_model, synthetic_data, tmp_path):
    """Every probability of the report is ``predict_source`` of the same file: float32 inputs, not 8-bit."""
    evaluate(tiny_model, synthetic_data, tmp_path, n_resamples=10)
    predictor = Predictor.from_file(tiny_model)
    rows = list(csv.DictReader((tmp_path / "predictions_test.csv").open()))
    folder = {s.path.name: s.path for s in make_split(synthetic_data, "official", 0.25, predictor.metadata.seed).test}
    for row in rows:
        app = predictor.predict_source(folder[row["file"]])
        # One by one against batches of 32: float32 sums in another order, about 1e-6 apart here.
        assert float(row["probability"]) == pytest.approx(app.probability, abs=1e-5), row["file"]
        assert int(row["call"]) == (app.label == "pneumonia") and int(row["grey_zone"]) == app.grey_zone
        assert row["ood"] == ""  # the tiny model has no gate
    # call_files gives the report's figures, in file order, from the app's float32 model inputs; the
    # lab's evaluation scores on TensorFlow (the app on its ONNX export, to the 1e-5 above).
    paths = list(folder.values())
    calls, inputs = call_files(Predictor.from_file(tiny_model, runtime="keras"), paths)
    assert inputs.dtype == np.float32 and inputs.shape == (len(paths), 32, 32, 1)
    np.testing.assert_array_equal(inputs[3], DecodedImage.decode(paths[3]).model_input(32))  # the same file order
    assert [c.probability for c in calls] == pytest.approx([float(row["probability"]) for row in rows], abs=1e-9)
    # Training's 8-bit storage does not give these figures: this test catches a return to it.
    test = make_split(synthetic_data, "official", 0.25, predictor.metadata.seed).test
    rounded = predictor.probabilities(load_model_inputs(test, 32))
    assert np.max(np.abs(rounded - np.array([c.probability for c in calls]))) > 1e-4


def test_crop_evaluation_goes_through_the_pipeline(tiny_model, synthetic_data, tmp_path):
    report = evaluate_crop(tiny_model, synthetic_data, tmp_path)
    assert report["images"] == 24 and report["ood_flagged"] == {"without_crop": None, "with_auto_crop": None}
    predictor = Predictor.from_file(tiny_model)
    test = make_split(synthetic_data, "official", 0.25, predictor.metadata.seed).test
    labels = np.array([s.label for s in test])
    app = np.array([predictor.predict_source(s.path).probability for s in test])
    assert report["metrics"]["without_crop"]["accuracy"] == pytest.approx(
        binary_metrics(labels, app, predictor.threshold)["accuracy"]
    )
    assert json.loads((tmp_path / "crop_evaluation.json").read_text()) == report
    assert (tmp_path / TEST_LOG_NAME).read_text().count('"test"') == 1


def test_evaluation_refuses_data_that_differ_from_the_training_data(tiny_model, synthetic_data, tmp_path):
    changed = shutil.copytree(synthetic_data, tmp_path / "changed")
    sorted((changed / "train" / "PNEUMONIA").iterdir())[0].unlink()
    for run in (evaluate, evaluate_crop):
        with pytest.raises(DataError, match="differs from the data model"):
            run(tiny_model, changed, tmp_path / "reports")
    assert not (tmp_path / "reports" / TEST_LOG_NAME).exists()  # a refused run is not a look at the test split


def test_bar_and_goal_are_judged_from_the_figures():
    figures = {"roc_auc": 0.987, "sensitivity": 0.992, "specificity": 0.825, "ece": 0.03}
    bar = {row["metric"]: row for row in targets_met(figures, MUST_BAR)}
    assert bar["roc_auc"]["met"] and bar["sensitivity"]["met"] and bar["roc_auc"]["gap"] == 0.0
    assert not bar["specificity"]["met"] and bar["specificity"]["gap"] == pytest.approx(0.025)
    goal = {row["metric"]: row for row in targets_met({**figures, "ece": 0.06}, GOAL)}
    assert not goal["ece"]["met"] and goal["ece"]["gap"] == pytest.approx(0.01)  # at most 0.05
    assert targets_met({"specificity": 0.85}, (("specificity", ">=", 0.85),))[0]["met"]  # the bound counts
    assert not targets_met({}, (("roc_auc", ">=", 0.96),))[0]["met"]  # a missing figure is not met


def test_official_report_shows_references_bar_and_goal(tiny_model, synthetic_data, tmp_path):
    report = evaluate(tiny_model, synthetic_data, tmp_path, n_resamples=10)
    text = report_markdown(report)
    assert "| metric | this model | Kermany 2018 | best notebook CNN |" in text
    assert "| specificity |" in text and " 0.901 | 0.850 |" in text
    expected = "met:" if all(row["met"] for row in targets_met(report["image"], MUST_BAR)) else "**not met**:"
    assert f"Must-reach bar {expected}" in text and "Goal " in text
    validation = report_markdown(evaluate(tiny_model, synthetic_data, tmp_path, n_resamples=10, split="validation"))
    assert "Kermany" not in validation and "Must-reach bar" not in validation  # only the official test split


def test_pooled_protocol_model_is_scored_on_its_own_test_part(synthetic_data, tmp_path):
    from pneumo_model.lab.training import train

    config = TrainConfig(architecture="dense", input_size=32, epochs=1, batch_size=8, protocol="pooled", patience=1)
    path = tmp_path / "pooled.keras"
    train(config, synthetic_data, path, progress=None, verbose=0)
    report = evaluate(path, synthetic_data, tmp_path / "reports", n_resamples=10)
    assert report["protocol"] == "pooled"
    assert "official" not in report["split_description"]
    files = (tmp_path / "reports" / "predictions_test.csv").read_text()
    split = make_split(synthetic_data, "pooled", 0.15, config.seed)
    assert {s.split for s in split.test} == {"train", "test"}
    assert len(files.splitlines()) == len(split.test) + 1


def test_compare_trains_each_family_and_ranks_on_validation(synthetic_data, tmp_path):
    rows = compare(
        synthetic_data, tmp_path / "reports", tmp_path / "work", input_size=32, time_budget_s=30, epochs=1,
        architectures=["dense", "cnn_small"], base_config=TrainConfig(batch_size=8, val_fraction=0.25),
        command="pytest",
    )
    assert {row["architecture"] for row in rows} == {"dense", "cnn_small"}
    aucs = [row["validation"]["roc_auc"] for row in rows]
    assert aucs == sorted(aucs, reverse=True)
    assert all(row["forward_images_per_s"] > 0 and row["parameters"] > 0 for row in rows)
    table = (tmp_path / "reports" / "model_comparison.md").read_text()
    assert "| 1 |" in table and "| 2 |" in table
    assert json.loads((tmp_path / "reports" / "model_comparison.json").read_text())["rows"][0]["architecture"] == rows[0]["architecture"]


def test_imbalance_study_ranks_methods_on_validation_without_touching_test(synthetic_data, tmp_path):
    base = TrainConfig(architecture="cnn_small", input_size=32, epochs=1, batch_size=8, val_fraction=0.25)
    rows = imbalance_study(synthetic_data, tmp_path / "reports", tmp_path / "work", base, command="pytest")
    assert {row["imbalance"] for row in rows} == {"class_weight", "oversample", "none"}
    assert all("test" not in row for row in rows)
    assert not (tmp_path / "reports" / TEST_LOG_NAME).exists()
    assert f"Choice: **{rows[0]['imbalance']}**" in (tmp_path / "reports" / "imbalance_study.md").read_text()


def test_model_card_measures_geometry_per_class_from_file_headers(tmp_path):
    from PIL import Image

    from pneumo_model.lab.model_card import write_model_card

    for class_name, size in (("NORMAL", (120, 100)), ("PNEUMONIA", (150, 100))):
        folder = tmp_path / "full" / "train" / class_name
        folder.mkdir(parents=True)
        for i in range(2):
            Image.new("L", size).save(folder / f"x{i}.jpeg")
    facts = write_model_card(tmp_path / "reports", tmp_path / "full")
    geometry = facts["shortcut_geometry"]["per_class"]
    assert geometry["NORMAL"]["mean_aspect"] == 1.2 and geometry["PNEUMONIA"]["mean_aspect"] == 1.5
    assert geometry["NORMAL"]["n"] == 2
    assert json.loads((tmp_path / "reports" / "model_card.json").read_text()) == facts
    assert "not a medical device" in facts["intended_use"].lower()
