"""The gate in graded words (docs/ood_grades.md) and the DICOM header's age (the population note)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import encode, synthetic_xray
from pneumo_model.artifacts import DEFAULT_MODEL_PATH, REPO_ROOT
from pneumo_model.dicom import AGE_UNREADABLE_NOTE, age_in_years, is_population_note, population_note
from pneumo_model.errors import ModelFileError
from pneumo_model.ood import (
    IN_DISTRIBUTION,
    OOD_GRADES,
    OUTSIDE,
    UNUSUAL,
    OodGate,
    OodGrades,
    file_sha256,
    gate_path,
    grades_path,
    known_grade,
    single_cut_grade,
)
from pneumo_model.prediction import Predictor
from pneumo_model.preprocessing import load_image
from test_inputs import dicom_file
from test_ood import tiny_gate  # noqa: F401 (the fixture)


# --- grades ------------------------------------------------------------------------------------


def test_grades_read_the_score_in_three_bands_with_the_cut_inside_the_middle_one():
    grades = OodGrades("0" * 64, unusual_from=0.95, outside_from=1.29)
    assert [grades.grade(score) for score in (0.2, 0.95, 0.951, 1.0, 1.1, 1.2899, 1.29, 7.0)] == [
        IN_DISTRIBUTION, IN_DISTRIBUTION, UNUSUAL, UNUSUAL, UNUSUAL, UNUSUAL, OUTSIDE, OUTSIDE,
    ]  # fmt: skip
    assert grades.grade(float("nan")) == OUTSIDE  # the gate flags a NaN score; so does its grade
    assert grades.grade(None) is None


def test_without_cut_offs_the_grade_is_the_single_cut():
    assert [single_cut_grade(score) for score in (0.5, 1.0, 1.0001, float("nan"))] == [IN_DISTRIBUTION, IN_DISTRIBUTION, OUTSIDE, OUTSIDE]
    assert single_cut_grade(None) is None
    assert known_grade(UNUSUAL, 1.1) == UNUSUAL and known_grade(None, 1.1) == OUTSIDE


@pytest.mark.parametrize(("unusual_from", "outside_from"), [(1.1, 1.3), (0.9, 0.99), (0.0, 1.2), (0.9, float("inf"))])
def test_cut_offs_that_do_not_bracket_the_gate_cut_are_refused(unusual_from, outside_from):
    with pytest.raises(ValueError, match="grade cut-offs"):
        OodGrades("0" * 64, unusual_from, outside_from)


@pytest.fixture
def gated_copy(tiny_gate, tmp_path):  # noqa: F811
    """The tiny model and its gate in a fresh folder (the grades file is written per test)."""
    model_path, _ = tiny_gate
    for suffix in (".keras", ".json", ".ood.npz", ".onnx", ".onnx.json"):  # the run time scores the ONNX graph
        shutil.copy(model_path.with_suffix(suffix), tmp_path / f"tiny{suffix}")
    return tmp_path / "tiny.keras"


def test_the_side_file_gives_the_predictor_its_grades_and_predict_its_json(gated_copy, tmp_path):
    plain = Predictor.from_file(gated_copy)
    assert plain.gate.grades is None
    image = tmp_path / "x.png"
    image.write_bytes(encode(synthetic_xray(np.random.default_rng(4), 64)))
    score = plain.predict_source(image).ood_score
    # Cut-offs placed around this image's score: it must read "unusual" once they are beside the gate.
    OodGrades(file_sha256(gate_path(gated_copy)), min(score * 0.9, 1.0), max(score * 1.1, 1.0)).save(grades_path(gated_copy))
    graded = Predictor.from_file(gated_copy)
    record = graded.predict_source(image).to_record(str(image))
    assert record["ood_grade"] == UNUSUAL and record["ood_score"] == pytest.approx(score, abs=1e-4)
    assert record["ood"] == (score > 1.0) and record["age_years"] is None  # the flag keeps its meaning
    assert plain.predict_source(image).to_record("x")["ood_grade"] == single_cut_grade(score)


def test_a_side_file_of_another_gate_or_damaged_is_refused_in_plain_words(gated_copy):
    OodGrades("f" * 64, 0.9, 1.3).save(grades_path(gated_copy))
    with pytest.raises(ModelFileError, match="fixed for another gate"):
        Predictor.from_file(gated_copy)
    grades_path(gated_copy).write_text('{"schema_version": 1, "gate_sha256": ')
    with pytest.raises(ModelFileError, match="cannot be read"):
        OodGate.load(gate_path(gated_copy))
    grades_path(gated_copy).unlink()
    assert Predictor.from_file(gated_copy).gate.grades is None


def test_refitting_the_gate_deletes_its_stale_grades(gated_copy, monkeypatch):
    from pneumo_model.lab import ood_fit

    OodGrades(file_sha256(gate_path(gated_copy)), 0.9, 1.3).save(grades_path(gated_copy))
    gate = OodGate.load(gate_path(gated_copy))
    monkeypatch.setattr(ood_fit, "model_split", lambda metadata, data_dir: type("S", (), {"train": [], "validation": []}))
    monkeypatch.setattr(ood_fit, "load_model_inputs", lambda samples, size: np.zeros((0, size, size, 1), np.uint8))
    monkeypatch.setattr(ood_fit, "fit_gate", lambda *args, **kwargs: gate)
    ood_fit.fit_for_model(gated_copy, REPO_ROOT)
    assert gate_path(gated_copy).is_file() and not grades_path(gated_copy).exists()


@pytest.mark.shipped_model
def test_the_shipped_grades_belong_to_the_shipped_gate_and_follow_their_rule():
    grades = OodGrades.load(grades_path(DEFAULT_MODEL_PATH), gate_path(DEFAULT_MODEL_PATH))
    facts = grades.facts
    assert grades.unusual_from < 1.0 < grades.outside_from
    # The rule, from the recorded validation and corpus figures (docs/ood_grades.md).
    assert grades.outside_from == np.floor(facts["corpus_lowest_score"] * 100) / 100
    assert facts["corpus_lowest_score"] == min(c["lowest_score"] for c in facts["corpus"].values())
    assert all(category["outside"] == 1.0 for category in facts["corpus"].values())
    assert facts["validation_whole"]["unusual"] + facts["validation_whole"]["outside"] == pytest.approx(0.01, abs=0.002)
    for shares in (facts["validation_whole"], facts["validation_diaphragm_crop"]):
        assert sum(shares[grade] for grade in OOD_GRADES) == pytest.approx(1.0)


@pytest.mark.data
@pytest.mark.shipped_model
def test_committed_grade_shares_are_those_of_the_test_split():
    """The report's per-grade shares, recomputed from the official test split with the shipped gate."""
    from pneumo_model.data import DEFAULT_DATA_DIR, scan_split
    from pneumo_model.lab.evaluation import decoded_batches

    report = json.loads((REPO_ROOT / "reports" / "ood.json").read_text())
    shipped = Predictor.from_file(DEFAULT_MODEL_PATH)
    assert report["grades"]["unusual_from"] == shipped.gate.grades.unusual_from
    assert report["grades"]["outside_from"] == shipped.gate.grades.outside_from
    samples = scan_split(DEFAULT_DATA_DIR, "test")
    grades = [call.ood_grade for batch in decoded_batches([s.path for s in samples], 32) for call in shipped.calls(batch)]
    shares = report["test_split"]["grades"]
    assert shares["images"] == len(grades) == 624
    for grade in OOD_GRADES:
        assert shares[grade] == pytest.approx(grades.count(grade) / len(grades), abs=1e-12), grade
    listed = {entry["file"]: entry["ood_grade"] for entry in report["test_split"]["flagged_files"]}
    assert all(grade in (UNUSUAL, OUTSIDE) for grade in listed.values())


# --- the header's age ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patient_age", "years"),
    [
        ("081Y", 81.0), ("81", 81.0), ("81 ", 81.0), ("081y", 81.0), ("006M", 0.5), ("072M", 6.0), ("071M", 5.91),
        ("010W", 0.19), ("003D", 0.0), ("005Y", 5.0), ("006Y", 6.0), ("120Y", 90.0), ("081Y\x00", 81.0),
    ],
)  # fmt: skip
def test_patient_age_with_or_without_its_unit_letter(patient_age, years):
    reading = age_in_years(patient_age)
    assert reading.years == years and not reading.unreadable


@pytest.mark.parametrize(
    ("birth", "dates", "years"),
    [
        ("20150310", ["20230310"], 8.0),
        ("20150310", ["20230309"], 7.99),  # the day before the birthday: still 7, never rounded up to 8
        ("20150310", ["", "garbage", "20230310"], 8.0),  # the first valid of study, acquisition, content, series
        ("2015.03.10", ["2021.03.10"], 6.0),  # the old ACR-NEMA form
        ("20160229", ["20220228"], 5.99),  # a leap-day birthday counts from 1 March
        ("20160229", ["20220301"], 6.0),
    ],
)
def test_age_from_the_birth_date_when_patient_age_is_absent(birth, dates, years):
    for absent in (None, "", "   "):
        reading = age_in_years(absent, birth, dates)
        assert reading.years == years and not reading.unreadable


@pytest.mark.parametrize(
    ("patient_age", "birth", "dates"),
    [
        ("45 years", "20150310", ["20230310"]),  # a malformed age is not overridden by the dates
        ("Y", None, ()), ("0081Y", None, ()), ("-5Y", None, ()), ("81X", None, ()), ("3.5Y", None, ()),
        (None, "2015-03-10", ["20230310"]), (None, "20151345", ["20230310"]), (None, "20150310", []),
        (None, "20150310", ["2023031"]), (None, "20250310", ["20230310"]), (None, "17000101", ["20230310"]),
    ],
)  # fmt: skip
def test_malformed_ages_and_dates_give_no_age_and_never_an_error(patient_age, birth, dates):
    reading = age_in_years(patient_age, birth, dates)
    assert reading.years is None and reading.unreadable


def test_no_age_and_no_birth_date_is_simply_no_age():
    assert age_in_years(None).years is None and not age_in_years(None).unreadable
    assert not age_in_years("", "", ["20230310"]).unreadable


def test_the_population_note_is_for_more_than_five_completed_years():
    assert population_note(5.99) is None and population_note(3.0) is None and population_note(None) is None
    assert population_note(0.4) is None  # under one: no note (docs/ood_grades.md)
    assert population_note(6.0) == (
        "This film's header gives an age of 6 years; the model was trained on children aged 1-5: its output is "
        "from outside the trained population."
    )
    assert "an age of 90 years or more;" in population_note(90.0)
    assert is_population_note(population_note(81.0)) and not is_population_note(AGE_UNREADABLE_NOTE)


@pytest.mark.parametrize(
    ("tags", "years", "note"),
    [
        ({"PatientAge": "081Y"}, 81.0, "an age of 81 years;"),
        ({"PatientAge": "81"}, 81.0, "an age of 81 years;"),
        ({"PatientAge": "006M"}, 0.5, None),
        ({"PatientAge": "010W"}, 0.19, None),
        ({"PatientAge": "003D"}, 0.0, None),
        ({"PatientAge": "096M"}, 8.0, "an age of 8 years;"),
        ({"PatientAge": "", "PatientBirthDate": "20120501", "StudyDate": "20230301"}, 10.83, "an age of 10 years;"),
        ({"PatientAge": "", "PatientBirthDate": "20120501", "ContentDate": "20230301"}, 10.83, "an age of 10 years;"),
        ({"PatientAge": "", "PatientBirthDate": "20200501", "SeriesDate": "20230301"}, 2.83, None),
        ({"PatientAge": "", "PatientBirthDate": "20120501"}, None, "could not be checked"),
        ({"PatientAge": "45 years"}, None, "could not be checked"),
        ({"PatientAge": ""}, None, None),
    ],
)
def test_a_dicom_header_gives_its_age_in_years_and_the_note(tags, years, note):
    _, info = load_image(dicom_file(**tags))
    assert info.age_years == years and info.dicom.age_years == years
    said = [warning for warning in info.warnings if "age" in warning]
    if note is None:
        assert said == []
    else:
        (warning,) = said
        assert note in warning
    recorded = json.dumps(info.to_dict()) + " ".join(info.warnings)
    for identifier in ("Doe", "Jane", "8675309", "20120501", "2012", "20230301", "45 years"):
        assert identifier not in recorded  # the dates are used and dropped, never kept or quoted


def test_a_header_age_never_crashes_whatever_its_bytes():
    for age in (b"\xff\xfe\x00", b"999Y", b"0", b"  ", b"Y081"):
        _, info = load_image(dicom_file(PatientAge=age.decode("latin-1")))
        assert info.age_years is None or 0 <= info.age_years <= 90
