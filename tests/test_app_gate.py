"""The Review page's words for each grade of the out-of-distribution gate and for a DICOM header's
age (docs/ood_grades.md), with DICOM films built from the demo images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from pneumo_model.ood import IN_DISTRIBUTION, OUTSIDE, UNUSUAL
from test_app import probability_shown, start, texts, upload, trail_rows
from test_inputs import dicom_file
from ui import resources, state

pytestmark = pytest.mark.shipped_model

NOT_A_CHEST_FILM = "does not look like a frontal chest X-ray"
READ_WITH_CARE = "Unusual for the films this model was trained on: read with care"
POPULATION = "header gives an age of"
SHOW_ANYWAY = "Show the model's output anyway"


def demo_pixels(name: str) -> np.ndarray:
    return np.asarray(Image.open(state.SAMPLES_DIR / name).convert("L"))


def rotated(pixels: np.ndarray, degrees: float) -> np.ndarray:
    """A film tilted on the detector (the edges filled by reflection, as a tilted film fills them)."""
    height, width = pixels.shape
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(pixels, turn, (width, height), borderMode=cv2.BORDER_REFLECT)


# Films chosen once, on the demo images (not the test split), for where the shipped gate puts them;
# each test first checks that the package still grades its film so.
FILMS = {
    "in_distribution": lambda: demo_pixels("IM-0003-0001.jpeg"),
    "unusual_above_the_cut": lambda: rotated(demo_pixels("IM-0001-0001.jpeg"), 12),  # score about 1.10
    "unusual_below_the_cut": lambda: demo_pixels("IM-0003-0001.jpeg")[:90],  # the top 40 %: about 0.99
    "outside": lambda: 255 - demo_pixels("IM-0003-0001.jpeg"),  # inverted
}


def dicom_upload(film: str, **tags):
    """The film as a DICOM upload (``tags`` override the header; a 3-year-old by default) and the
    package's own prediction for it."""
    data = dicom_file(FILMS[film](), **tags)
    app = upload(start(), f"{film}.dcm", data, "application/dicom")
    return app, resources.predictor().predict_source(data)


def call_on_screen(app) -> bool:
    return "Call:" in texts(app.markdown)


def show_anyway_boxes(app) -> list:
    return [box for box in app.checkbox if box.label == SHOW_ANYWAY]


def test_an_ordinary_film_gets_no_gate_words(audit_db):
    app, expected = dicom_upload("in_distribution")
    assert expected.ood_grade == IN_DISTRIBUTION
    assert call_on_screen(app) and probability_shown(app) == f"{expected.probability:.3f}"
    said = texts(app.error) + texts(app.warning)
    assert NOT_A_CHEST_FILM not in said and READ_WITH_CARE not in said and POPULATION not in said
    assert not show_anyway_boxes(app)


@pytest.mark.parametrize("film", ["unusual_above_the_cut", "unusual_below_the_cut"])
def test_a_film_near_the_cut_on_either_side_is_shown_with_read_with_care(film, audit_db):
    app, expected = dicom_upload(film)
    assert expected.ood_grade == UNUSUAL
    assert expected.ood is (film == "unusual_above_the_cut")  # the gate's own cut lies inside the band
    assert READ_WITH_CARE in texts(app.warning)
    assert f"score {expected.ood_score:.2f}" in texts(app.warning)
    assert NOT_A_CHEST_FILM not in texts(app.error)
    assert call_on_screen(app) and probability_shown(app) == f"{expected.probability:.3f}"
    assert not show_anyway_boxes(app)
    (row,) = trail_rows(audit_db)
    assert row["revealed_utc"] is None  # nothing was hidden, so nothing was revealed


def test_a_film_far_outside_hides_its_call_until_asked(audit_db):
    app, expected = dicom_upload("outside")
    assert expected.ood_grade == OUTSIDE
    assert NOT_A_CHEST_FILM in texts(app.error) and READ_WITH_CARE not in texts(app.warning)
    assert not call_on_screen(app)
    (box,) = show_anyway_boxes(app)
    box.check().run()
    assert call_on_screen(app) and probability_shown(app) == f"{expected.probability:.3f}"
    (row,) = trail_rows(audit_db)
    assert row["revealed_utc"] is not None


@pytest.mark.parametrize(
    ("tags", "years"),
    [
        ({"PatientAge": "081Y"}, 81),
        ({"PatientAge": "81"}, 81),  # without its unit letter
        ({"PatientAge": "084M"}, 7),
        ({"PatientAge": "", "PatientBirthDate": "20140615", "StudyDate": "20230301"}, 8),  # only a birth date
    ],
)
def test_an_older_patient_gets_the_population_note_beside_the_call(tags, years, audit_db):
    app, expected = dicom_upload("in_distribution", **tags)
    assert expected.ood_grade == IN_DISTRIBUTION and int(expected.info.age_years) == years
    note = (
        f"This film's header gives an age of {years} years; the model was trained on children aged 1-5: its output "
        "is from outside the trained population."
    )
    assert note in texts(app.warning)
    assert call_on_screen(app) and NOT_A_CHEST_FILM not in texts(app.error)
    for identifier in ("20140615", "2014", "20230301", "Doe", "Jane", "8675309"):
        assert identifier not in texts(app.warning) + texts(app.info) + texts(app.markdown) + texts(app.caption)


@pytest.mark.parametrize("tags", [{"PatientAge": "003Y"}, {"PatientAge": "071M"}, {"PatientAge": "45 years"}, {"PatientAge": ""}])
def test_a_child_or_an_unreadable_age_gets_no_population_note(tags, audit_db):
    app, _ = dicom_upload("in_distribution", **tags)
    assert POPULATION not in texts(app.warning) and call_on_screen(app)
    if tags["PatientAge"] == "45 years":
        assert "could not be checked against the trained population" in texts(app.info)


def test_an_older_patient_far_outside_is_told_so_not_that_it_is_no_chest_film(audit_db):
    app, expected = dicom_upload("outside", PatientAge="045Y")
    assert expected.ood_grade == OUTSIDE
    assert "Far from the films this model was trained on" in texts(app.error)
    assert NOT_A_CHEST_FILM not in texts(app.error)
    assert "header gives an age of 45 years" in texts(app.warning)
    assert not call_on_screen(app) and show_anyway_boxes(app)


@pytest.mark.parametrize("page", ["pages/explain.py", "pages/crop.py"])
def test_the_population_note_is_said_once_on_the_other_pages_that_show_the_call(page, audit_db):
    from test_app import open_page

    app, _ = dicom_upload("in_distribution", PatientAge="012Y")
    open_page(app, page)
    notes = [element for element in app.warning if POPULATION in str(element.value)]
    assert len(notes) == 1 and "an age of 12 years" in str(notes[0].value)


def test_the_worklist_and_the_trail_flag_each_grade_and_hide_only_outside_calls(audit_db):
    from test_app import open_page

    from ui import worklist

    files = {
        "ordinary.dcm": dicom_file(FILMS["in_distribution"]()),
        "tilted.dcm": dicom_file(FILMS["unusual_above_the_cut"]()),
        "inverted.dcm": dicom_file(FILMS["outside"]()),
        "older.dcm": dicom_file(FILMS["in_distribution"](), PatientAge="81"),
    }
    grades = {name: resources.predictor().predict_source(data).ood_grade for name, data in files.items()}
    assert grades == {"ordinary.dcm": IN_DISTRIBUTION, "tilted.dcm": UNUSUAL, "inverted.dcm": OUTSIDE, "older.dcm": IN_DISTRIBUTION}
    app = open_page(start(), "pages/worklist.py")
    app.file_uploader(key="worklist_upload").set_value([(name, data, "application/dicom") for name, data in files.items()])
    app.run()
    assert not app.exception, app.exception
    table = app.dataframe[0].value.set_index("file")
    assert table.loc["ordinary.dcm", "flags"] == ""
    assert table.loc["tilted.dcm", "flags"] == worklist.UNUSUAL and table.loc["tilted.dcm", "call"] in ("normal", "pneumonia")
    assert table.loc["inverted.dcm", "flags"] == worklist.NOT_XRAY_LIKE
    assert table.loc["inverted.dcm", "call"] == worklist.HIDDEN_ON_SCREEN
    assert table.loc["older.dcm", "flags"] == worklist.OLDER and table.loc["older.dcm", "call"] in ("normal", "pneumonia")
    assert "inverted.dcm" in texts(app.error) and "tilted.dcm" not in texts(app.error)

    from pneumo_model.paths import bytes_sha256

    trail = open_page(app, "pages/trail.py").dataframe[0].value.set_index("image")
    flags = {name: trail.loc[bytes_sha256(data)[:12], "flags"].split(", ") for name, data in files.items()}
    assert "unusual: read with care" in flags["tilted.dcm"] and "not X-ray-like" not in flags["tilted.dcm"]
    assert "not X-ray-like" in flags["inverted.dcm"] and "unusual: read with care" not in flags["inverted.dcm"]
    for name in ("ordinary.dcm", "older.dcm"):
        assert not {"unusual: read with care", "not X-ray-like"} & set(flags[name]), name
