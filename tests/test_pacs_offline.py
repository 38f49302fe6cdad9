"""The PACS code that needs no server: settings, query validation, multipart answers, and the
DICOM structured report and heat-map capture built from an image's header and read back. These run
on every machine; what needs a real Orthanc is in ``test_pacs.py`` (marked ``pacs``).
"""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from helpers import calling_every_film
from pacs_studies import SAMPLES, SENTINELS, grey, sentinel_study
from pneumo_model import __version__
from pneumo_model.errors import ConfigError
from pneumo_model.lab.pacs_files import chest_dicom
from pneumo_model.pacs import PacsSettings, StudyQuery, _dicom_part, _report_header
from pneumo_model.pipeline import DecodedImage
from pneumo_model.prediction import Predictor
from pneumo_model.structured_report import (
    CAPTURE_SERIES_DESCRIPTION,
    NOT_FOR_DIAGNOSIS,
    SERIES_DESCRIPTION,
    build_heatmap_capture,
    build_report,
    capture_uids,
    read_report,
    report_uids,
)


def test_settings_come_from_the_environment_and_hide_the_credentials():
    settings = PacsSettings.from_environment({
        "PNEUMO_DICOMWEB_URL": "https://pacs.example.org/dicom-web/", "PNEUMO_DICOMWEB_USER": "reader",
        "PNEUMO_DICOMWEB_PASSWORD": "hunter2-secret", "PNEUMO_DICOMWEB_TIMEOUT_S": "12",
    })
    assert settings.url == "https://pacs.example.org/dicom-web" and settings.server == "https://pacs.example.org"
    assert settings.verify_tls and not settings.show_patient_identity and settings.read_timeout_s == 12
    assert "hunter2-secret" not in repr(settings)
    token = PacsSettings.from_environment({"PNEUMO_DICOMWEB_URL": "http://127.0.0.1:1/x", "PNEUMO_DICOMWEB_TOKEN": "tok-abc"})
    assert token.token == "tok-abc" and "tok-abc" not in repr(token)
    assert PacsSettings.from_mapping({"url": "http://127.0.0.1:1/x", "show_patient_identity": True}).show_patient_identity


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "No PACS is configured: set PNEUMO_DICOMWEB_URL"),
        ({"PNEUMO_DICOMWEB_URL": "pacs.example.org"}, "must be an http:// or https:// URL"),
        ({"PNEUMO_DICOMWEB_URL": "https://user:pw@pacs.example.org/dw"}, "must not carry credentials"),
        ({"PNEUMO_DICOMWEB_URL": "https://pacs.example.org/dw", "PNEUMO_DICOMWEB_USER": "reader"}, "Give both"),
        ({"PNEUMO_DICOMWEB_URL": "https://p.example.org/dw", "PNEUMO_DICOMWEB_USER": "a", "PNEUMO_DICOMWEB_PASSWORD": "b",
          "PNEUMO_DICOMWEB_TOKEN": "c"}, "not both"),
        ({"PNEUMO_DICOMWEB_URL": "https://p.example.org/dw", "PNEUMO_DICOMWEB_TIMEOUT_S": "soon"}, "number of seconds"),
        ({"PNEUMO_DICOMWEB_URL": "https://p.example.org/dw", "PNEUMO_DICOMWEB_TIMEOUT_S": "0"}, "between 0 and 600"),
        ({"PNEUMO_DICOMWEB_URL": "https://p.example.org/dw", "PNEUMO_DICOMWEB_CA_FILE": "/no/such/ca.pem"}, "does not exist"),
        ({"PNEUMO_DICOMWEB_URL": "https://p.example.org/dw", "PNEUMO_DICOMWEB_VERIFY_TLS": "maybe"}, "is 1 or 0"),
    ],
)
def test_settings_that_cannot_work_are_refused_with_what_to_set(environ, message):
    with pytest.raises(ConfigError, match=message):
        PacsSettings.from_environment(environ)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"date_from": "2026-11-30"}, "date from must be a date as YYYYMMDD"),
        ({"date_to": "20261332"}, "date to must be a date"),
        ({"date_from": "20261201", "date_to": "20261130"}, "after the date to"),
        ({"modalities": ("C R;",)}, "Modalities are DICOM codes"),
        ({"modalities": ()}, "Modalities are DICOM codes"),
        ({"accession_number": "ACC*"}, "no wildcard"),
        ({"accession_number": "A" * 17}, "1 to 16 characters"),
        ({"body_part": "chest/abdomen"}, "body part is a DICOM code"),
        ({"limit": 0}, "between 1 and 10000"),
    ],
)
def test_queries_that_cannot_be_asked_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        StudyQuery(**fields)


def test_a_bare_or_multipart_answer_gives_the_dicom_file_inside():
    body = b"DICM-bytes\r\nwith a line break"
    multipart = b"--abc\r\nContent-Type: application/dicom\r\n\r\n" + body + b"\r\n--abc--\r\n"
    assert _dicom_part(multipart, 'multipart/related; type="application/dicom"; boundary=abc') == body
    assert _dicom_part(body, "application/dicom") == body
    assert _dicom_part(multipart, "multipart/related") is None  # no boundary: unreadable, never guessed
    assert _dicom_part(b"--abc--\r\n", "multipart/related; boundary=abc") is None


# --- the structured report, built without a server -------------------------------------------


def saved_and_read(dataset) -> pydicom.Dataset:
    """``dataset`` written as a DICOM file and read back, as a PACS would store and return it."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@pytest.fixture(scope="module")
def scored_film():
    """A CR film (MONOCHROME1) as a PACS holds it, its header as the client reads it, and the
    shipped model's prediction of it through the one pipeline."""
    study = sentinel_study()
    data = chest_dicom(grey(SAMPLES[1]), study, generate_uid(), modality="CR", photometric="MONOCHROME1")
    predictor = Predictor.from_file()
    prediction = predictor.call(DecodedImage.decode(data))
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return study, header, predictor, prediction


@pytest.mark.shipped_model
def test_the_report_is_built_from_the_header_in_the_image_study_and_reads_back_as_the_prediction(scored_film):
    study, header, predictor, prediction = scored_film
    point = predictor.operating_point
    dataset = saved_and_read(build_report(_report_header(header), prediction, point, __version__))
    assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert dataset.SOPInstanceUID == report_uids(header.SOPInstanceUID, point.id, prediction.model_sha).sop_uid
    assert dataset.StudyInstanceUID == study.study_uid and dataset.SeriesInstanceUID != header.SeriesInstanceUID
    assert dataset.SeriesDescription == SERIES_DESCRIPTION
    assert dataset.PatientID == SENTINELS["patient_id"]  # the image's own patient module, as DICOM requires
    values = read_report(dataset)
    assert values["image"] == (header.SOPClassUID, header.SOPInstanceUID)
    assert values["label"] == prediction.label and values["label"] in ("normal", "pneumonia")
    assert values["probability"] == pytest.approx(prediction.probability, abs=1e-6)
    assert values["threshold"] == pytest.approx(predictor.threshold, abs=1e-6)
    assert values["operating_point"] == f"shipped {point.id}"
    assert values["grey_zone"] is prediction.grey_zone and values["ood"] is prediction.ood
    assert values["model_sha"] == prediction.model_sha and len(values["model_sha"]) == 64
    assert values["comment"].startswith("Decision support, not a diagnosis.")
    # The same image, point and model give the same UID: a report sent twice is one report.
    again = build_report(_report_header(header), prediction, point, __version__)
    assert again.SOPInstanceUID == dataset.SOPInstanceUID


@pytest.mark.shipped_model
def test_a_header_dicom_does_not_allow_is_cleaned_and_the_report_still_builds(scored_film):
    _, header, predictor, prediction = scored_film
    bad = pydicom.Dataset(header)
    bad.PatientBirthDate = "1980-01-01"  # not a DICOM date, as real files often have
    del bad.StudyTime
    cleaned = _report_header(bad)
    assert cleaned.PatientBirthDate == "" and cleaned.StudyTime == ""
    assert bad.PatientBirthDate == "1980-01-01"  # the image's own header is left as it was
    dataset = saved_and_read(build_report(cleaned, prediction, predictor.operating_point, __version__))
    assert dataset.PatientBirthDate == "" and "1980-01-01" not in str(dataset)  # (a random UID may hold "1980")


@pytest.mark.shipped_model
def test_the_heat_map_capture_has_not_for_diagnosis_burned_in_and_refuses_another_point(scored_film):
    _, header, predictor, prediction = scored_film
    point = predictor.operating_point
    picture = np.zeros((64, 48, 3), dtype=np.uint8)
    picture[16:48, 12:36] = (255, 64, 0)
    dataset = saved_and_read(build_heatmap_capture(_report_header(header), picture, prediction, point, __version__))
    assert dataset.SOPInstanceUID == capture_uids(header.SOPInstanceUID, point.id, prediction.model_sha).sop_uid
    assert dataset.SeriesDescription == CAPTURE_SERIES_DESCRIPTION and dataset.BurnedInAnnotation == "YES"
    assert NOT_FOR_DIAGNOSIS in dataset.ImageComments
    pixels = dataset.pixel_array  # the picture, below a band of burned-in text
    band = pixels.shape[0] - 64
    assert pixels.shape[1:] == (48, 3) and band > 0
    np.testing.assert_array_equal(pixels[band:], picture)
    assert pixels[:band].std() > 0  # the band carries the words, not a blank strip
    with pytest.raises(ValueError, match="another operating point"):
        build_heatmap_capture(_report_header(header), picture, prediction, replace(point, id="another"), __version__)
    with pytest.raises(ValueError, match="uint8 RGB"):
        build_heatmap_capture(_report_header(header), picture[:, :, 0], prediction, point, __version__)


def _items(dataset) -> dict[tuple[str, str], object]:
    return {(str(item.ConceptNameCodeSequence[0].CodingSchemeDesignator), str(item.ConceptNameCodeSequence[0].CodeValue)): item
            for item in dataset.ContentSequence}


def test_the_report_of_a_pneumonia_call_carries_the_pattern_as_its_own_coded_observation_never_a_diagnosis(tiny_subtype):
    from highdicom.sr import ComprehensiveSR

    from pneumo_model.presentation import PATTERN_CAVEAT
    from pneumo_model.structured_report import SCHEME

    study = sentinel_study()
    data = chest_dicom(grey(SAMPLES[1]), study, generate_uid(), modality="CR", photometric="MONOCHROME1")
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    predictor = calling_every_film(Predictor.from_file(tiny_subtype, subtype=True), "pneumonia")
    prediction = predictor.call(DecodedImage.decode(data))
    assert prediction.label == "pneumonia" and prediction.subtype is not None
    dataset = saved_and_read(build_report(_report_header(header), prediction, predictor.operating_point, __version__))
    values = read_report(dataset)
    ComprehensiveSR.from_dataset(dataset)  # a valid Comprehensive SR, as highdicom reads one (it converts in place)
    assert values["label"] == "pneumonia"
    assert values["subtype"] == prediction.subtype
    assert values["subtype_probability"] == pytest.approx(prediction.subtype_probability, abs=1e-6)
    assert values["subtype_note"] == PATTERN_CAVEAT
    dataset = saved_and_read(build_report(_report_header(header), prediction, predictor.operating_point, __version__))
    items = _items(dataset)
    pattern = items[(SCHEME, "PATTERN")]
    (name,), (value,) = pattern.ConceptNameCodeSequence, pattern.ConceptCodeSequence
    assert pattern.ValueType == "CODE" and "Radiographic pattern" in name.CodeMeaning and "not a diagnosis" in name.CodeMeaning
    assert value.CodingSchemeDesignator == SCHEME and value.CodeMeaning.endswith("radiographic pattern")
    assert prediction.subtype.split("-")[0] in value.CodeMeaning.lower()
    # Its own concept, not the call's: the call's "Finding" is still the model's pneumonia call alone.
    (finding,) = items[("DCM", "121071")].ConceptCodeSequence
    assert finding.CodeValue == "PNEUMONIA"
    # No standard diagnosis code for a bacterial or viral pneumonia anywhere in the report.
    codes = [(str(code.CodingSchemeDesignator), str(code.CodeMeaning)) for item in dataset.ContentSequence
             for code in (*item.ConceptNameCodeSequence, *getattr(item, "ConceptCodeSequence", []))]
    assert not [meaning for scheme, meaning in codes if scheme in ("SCT", "ICD10", "I10") and "pneumonia" in meaning.lower()]
    prob = items[(SCHEME, "PATTERN-PROB")]
    assert float(prob.MeasuredValueSequence[0].NumericValue) == pytest.approx(prediction.subtype_probability, abs=1e-6)


def test_the_report_of_a_normal_call_or_with_the_pattern_off_has_no_pattern_item(tiny_subtype):
    from pneumo_model.structured_report import SCHEME

    study = sentinel_study()
    data = chest_dicom(grey(SAMPLES[0]), study, generate_uid(), modality="DX")
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    normal = calling_every_film(Predictor.from_file(tiny_subtype, subtype=True), "normal")
    off = calling_every_film(Predictor.from_file(tiny_subtype, subtype=False), "pneumonia")
    for predictor in (normal, off):
        prediction = predictor.call(DecodedImage.decode(data))
        assert prediction.subtype is None and prediction.subtype_probability is None
        dataset = saved_and_read(build_report(_report_header(header), prediction, predictor.operating_point, __version__))
        values = read_report(dataset)
        assert values["label"] == prediction.label
        assert values["subtype"] is values["subtype_probability"] is values["subtype_note"] is None
        assert not [key for key in _items(dataset) if "PATTERN" in key[1]]
        assert (SCHEME, "PROBABILITY") in _items(dataset)  # the rest of the report as always


def test_every_code_of_the_report_fits_a_dicom_code_value():
    from pneumo_model.structured_report import _codes

    # Code Value is a DICOM short string (16 characters); a longer one goes to Long Code Value,
    # which read_report and many viewers do not read.
    assert all(len(code.value) <= 16 for code in _codes().values())
