"""The subtype pattern: its rules (docs/subtype_rule.md), its network beside the model, and where
it applies (films called pneumonia that the gate does not flag; never normal calls)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pneumo_model.bundle import subtype_model_path
from pneumo_model.errors import ConfigError, ModelFileError
from pneumo_model.lab.subtype_training import calibrate, undetermined_band, youden_threshold
from pneumo_model.pipeline import DecodedImage
from pneumo_model.prediction import Predictor
from pneumo_model.schema import PREDICTION_SCHEMA_VERSION
from pneumo_model.subtype import PATTERNS, SubtypeModel, enabled

from helpers import encode, synthetic_xray


def test_youden_threshold_separates_perfectly_separated_scores():
    probabilities = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    threshold = youden_threshold(probabilities, labels)
    assert 0.3 < threshold < 0.6
    assert threshold == pytest.approx(0.45)


def test_youden_threshold_refuses_one_class():
    with pytest.raises(ConfigError, match="both viral and bacterial"):
        youden_threshold(np.array([0.2, 0.4]), np.array([1, 1]))


@pytest.mark.parametrize("n", [7, 100, 580, 581])
def test_undetermined_band_holds_at_most_a_quarter(n):
    rng = np.random.default_rng(n)
    logits = rng.normal(0, 2, n)
    low, high = undetermined_band(logits, 1.3, 0.4)
    p = 1 / (1 + np.exp(-logits / 1.3))
    inside = ((p >= low) & (p < high)).sum()
    assert low < 0.4 < high
    assert inside <= 0.25 * n
    assert inside >= np.floor(0.25 * n) - 1  # the widest such band, not a narrow one


def test_calibrate_reports_the_band_share_and_recall_outside():
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], [200, 100])
    logits = rng.normal(np.where(labels == 1, 1.5, -1.5), 1.0)
    fit = calibrate(logits, labels)
    assert fit.metrics["undetermined_fraction"] <= 0.25
    assert fit.band[0] < fit.threshold < fit.band[1]
    assert fit.metrics["accuracy_outside_band"] > fit.metrics["accuracy"]


def test_setting_reads_one_and_zero_and_refuses_anything_else():
    assert enabled({"PNEUMO_SUBTYPE": "1"}) is True
    assert enabled({"PNEUMO_SUBTYPE": "0"}) is False
    with pytest.raises(ConfigError, match="must be 1"):
        enabled({"PNEUMO_SUBTYPE": "yes"})


def test_subtype_model_is_written_beside_with_its_own_metadata(tiny_subtype):
    path = subtype_model_path(tiny_subtype)
    assert path.name == "tiny_pneumonet.subtype.keras"
    metadata = json.loads(path.with_suffix(".json").read_text())
    main = json.loads(tiny_subtype.with_suffix(".json").read_text())
    assert metadata["train_config"]["task"] == "subtype"
    assert metadata["model_sha256"] != main["model_sha256"]
    assert path.with_suffix(".onnx").is_file()
    low, high = metadata["grey_zone"]
    assert low < metadata["threshold"] < high
    assert metadata["validation"]["undetermined_fraction"] <= 0.25


def _films(n, seed=0):
    rng = np.random.default_rng(seed)
    return [DecodedImage.decode(encode(synthetic_xray(rng, lesion=bool(i % 2)), "PNG", "L")) for i in range(n)]


def test_pattern_only_for_pneumonia_calls_the_gate_does_not_flag(tiny_subtype):
    with_pattern = Predictor.from_file(tiny_subtype, subtype=True)
    without = Predictor.from_file(tiny_subtype, subtype=False)
    assert with_pattern.subtype is not None and without.subtype is None
    films = _films(6)
    inputs = np.stack([film.model_input(32) for film in films])
    # The same films as calls of every kind: pneumonia, normal, flagged by the gate, no gate.
    kinds = [("pneumonia", None), ("pneumonia", False), ("normal", False), ("pneumonia", True), ("normal", None), ("pneumonia", False)]
    calls = [dataclasses.replace(p, label=label, ood=ood) for p, (label, ood) in zip(without.calls(films), kinds)]
    out = with_pattern._with_subtype(inputs, calls)
    for prediction in out:
        if prediction.label == "pneumonia" and prediction.ood is not True:
            assert prediction.subtype in PATTERNS
            assert 0.0 <= prediction.subtype_probability <= 1.0
        else:
            assert prediction.subtype is None and prediction.subtype_probability is None
    assert [p.subtype is not None for p in out] == [True, True, False, False, False, True]


def test_calls_carry_the_pattern_of_their_own_film(tiny_subtype):
    predictor = Predictor.from_file(tiny_subtype, subtype=True)
    films = _films(4, seed=5)
    batched = predictor.calls(films)
    for film, prediction in zip(films, batched):
        one = predictor.call(film)
        assert one.subtype == prediction.subtype
        if prediction.subtype is not None:
            assert one.subtype_probability == pytest.approx(prediction.subtype_probability, abs=1e-6)
            record = prediction.to_record("x.png")
            assert record["schema_version"] == PREDICTION_SCHEMA_VERSION == 4
            assert record["subtype"] == prediction.subtype
            assert record["subtype_probability"] == pytest.approx(prediction.subtype_probability, abs=1e-6)
            model = SubtypeModel.load(tiny_subtype)
            assert prediction.subtype == model.pattern_for(prediction.subtype_probability)


def test_record_has_null_fields_when_the_pattern_is_off(tiny_subtype):
    prediction = Predictor.from_file(tiny_subtype, subtype=False).call(_films(1)[0])
    record = prediction.to_record("x.png")
    assert "subtype" in record and "subtype_probability" in record
    assert record["subtype"] is None and record["subtype_probability"] is None


def test_asked_for_but_missing_is_refused_by_name(tiny_pneumonet, monkeypatch):
    with pytest.raises(ModelFileError, match="subtype pattern's model .*missing.*train-subtype"):
        Predictor.from_file(tiny_pneumonet, subtype=True)
    monkeypatch.setenv("PNEUMO_SUBTYPE", "1")
    with pytest.raises(ModelFileError, match="missing"):
        Predictor.from_file(tiny_pneumonet)


def test_a_main_model_is_not_taken_for_a_subtype_model(tiny_subtype, tmp_path):
    import shutil

    for side in tiny_subtype.parent.glob(tiny_subtype.stem + ".*"):
        if ".subtype" not in side.name:
            shutil.copy(side, tmp_path / side.name.replace(tiny_subtype.stem, tiny_subtype.stem + ".subtype", 1))
            shutil.copy(side, tmp_path / side.name)
    with pytest.raises(ModelFileError, match="not a subtype pattern model"):
        SubtypeModel.load(tmp_path / tiny_subtype.name)


@pytest.mark.parametrize("split", ["validation", "test"])
def test_evaluate_subtype_writes_the_report_and_logs_a_test_run(tiny_subtype, synthetic_data, tmp_path, split):
    from pneumo_model.lab.subtype_evaluation import evaluate_subtype, report_name

    report = evaluate_subtype(tiny_subtype, synthetic_data, tmp_path, split=split, n_resamples=50)
    written = json.loads((tmp_path / report_name(split)).read_text())
    assert written["metrics"]["n"] == report["metrics"]["n"] > 0
    assert written["metrics"]["n"] == written["metrics"]["viral_films"] + written["metrics"]["bacterial_films"]
    m = written["metrics"]
    assert 0.0 <= m["undetermined_fraction"] <= 1.0
    if m["viral_recall_undetermined_as_miss"] is not None and m["viral_recall_outside_band"] is not None:
        assert m["viral_recall_undetermined_as_miss"] <= m["viral_recall_outside_band"] + 1e-12
    assert [row["metric"] for row in written["must_reach"]] == ["roc_auc", "viral_recall_outside_band"]
    assert written["must_reach_met"] == all(row["met"] for row in written["must_reach"])
    assert (tmp_path / report_name(split).replace(".json", ".md")).read_text().startswith("# The subtype pattern")
    logged = (tmp_path / "test_evaluations.jsonl")
    assert logged.is_file() == (split == "test")


def test_a_site_operating_point_leaves_the_pattern_of_a_film_untouched(tiny_subtype):
    from pneumo_model.operating_point import OperatingPoint

    predictor = Predictor.from_file(tiny_subtype, subtype=True)
    shipped = OperatingPoint.shipped(predictor.metadata)
    # A site that calls every film pneumonia (threshold 0): the same films, each with the same pattern.
    everything = dataclasses.replace(shipped, id="site-all", kind="site", threshold=0.0)
    site = predictor.with_operating_point(everything)
    assert site.subtype is predictor.subtype
    films = _films(6, seed=9)
    for before, after in zip(predictor.calls(films), site.calls(films)):
        assert after.label == "pneumonia" and after.subtype in PATTERNS
        if before.subtype is not None:
            assert after.subtype == before.subtype
            assert after.subtype_probability == before.subtype_probability


def test_the_default_setting_follows_the_committed_reports_verdict():
    from pneumo_model.paths import REPO_ROOT
    from pneumo_model.subtype import ENABLED_BY_DEFAULT

    report = json.loads((REPO_ROOT / "reports" / "subtype_evaluation.json").read_text())
    assert report["split"] == "test"
    assert report["must_reach_met"] == all(row["met"] for row in report["must_reach"])
    assert ENABLED_BY_DEFAULT is report["must_reach_met"]
    assert enabled({}) is ENABLED_BY_DEFAULT


@pytest.mark.data
@pytest.mark.shipped_model
def test_the_committed_subtype_report_is_what_the_command_gives(tmp_path):
    from pneumo_model.data import DEFAULT_DATA_DIR
    from pneumo_model.lab.subtype_evaluation import evaluate_subtype
    from pneumo_model.paths import DEFAULT_MODEL_PATH, REPO_ROOT

    from helpers import same_report

    committed = json.loads((REPO_ROOT / "reports" / "subtype_evaluation.json").read_text())
    fresh = evaluate_subtype(DEFAULT_MODEL_PATH, DEFAULT_DATA_DIR, tmp_path)
    same_report(committed, fresh)


@pytest.mark.data
@pytest.mark.shipped_model
def test_the_subtype_graph_gives_the_keras_logits(tmp_path):
    from pneumo_model.data import DEFAULT_DATA_DIR
    from pneumo_model.paths import DEFAULT_MODEL_PATH

    films = sorted((DEFAULT_DATA_DIR / "test" / "PNEUMONIA").glob("*.jpeg"))[::13]
    inputs = np.stack([DecodedImage.decode(path.read_bytes()).model_input(128) for path in films])
    served = SubtypeModel.load(DEFAULT_MODEL_PATH, runtime="onnx").logits(inputs)
    reference = SubtypeModel.load(DEFAULT_MODEL_PATH, runtime="keras").logits(inputs)
    assert np.abs(served - reference).max() < 1e-5  # float32 graphs: about 1e-6 apart


def test_an_altered_subtype_graph_is_refused_with_the_command_that_mends_it(tiny_subtype, tmp_path):
    import shutil

    for side in tiny_subtype.parent.glob(tiny_subtype.stem + ".*"):
        shutil.copy(side, tmp_path / side.name)
    model = tmp_path / tiny_subtype.name
    graph = subtype_model_path(model).with_suffix(".onnx")
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ModelFileError, match=r"does not match its record.*export-onnx --model .*subtype\.keras.*PNEUMO_SUBTYPE=0"):
        Predictor.from_file(model)
    assert Predictor.from_file(model, subtype=False).subtype is None  # the pattern off, the rest works
