"""The Site calibration page's "Without labels" part, run headless with AppTest: what it says
before any film, uploaded unlabelled films scored once with a progress bar, the estimated
prevalence, the alignment drawn, the evaluation's expected figures, a download that is the
profile ``site align`` would write, and refusals in plain words."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from pneumo_model import alignment, site
from pneumo_model.artifacts import REPO_ROOT
from test_site_page import LOOKS_NORMAL, LOOKS_PNEUMONIA, NORMAL_SAMPLES, PNEUMONIA_SAMPLES, downloads, texts, variant  # noqa: F401
from ui import label_free, resources

pytestmark = pytest.mark.shipped_model

TIMEOUT = 240


def open_without_labels() -> AppTest:
    app = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=TIMEOUT).run()
    app.switch_page("pages/site.py").run()
    app.radio(key="site_evidence").set_value("Without labels (provisional)").run()
    assert not app.exception, app.exception
    return app


def unlabelled(count: int) -> list[tuple[str, bytes]]:
    """Distinct films (seeded noise variants of the demo images), about two in three pneumonia."""
    stems = PNEUMONIA_SAMPLES + NORMAL_SAMPLES + (LOOKS_NORMAL, LOOKS_PNEUMONIA)
    return [(f"film_{index:03d}.png", variant(stems[index % len(stems)], 5000 + index)) for index in range(count)]


def upload(app: AppTest, files) -> AppTest:
    app.radio(key="align_source").set_value("Upload unlabelled films").run()
    app.file_uploader(key="align_files").set_value([(name, data, "image/png") for name, data in files])
    app.run()
    assert not app.exception, app.exception
    return app


def test_without_labels_says_what_it_does_and_that_labels_are_the_better_evidence():
    app = open_without_labels()
    shown = texts(app.markdown)
    assert "Without labels" in shown and "the better evidence" in shown and "site check" in shown
    assert f"At least {alignment.MIN_FILMS} distinct films" in shown
    assert app.button(key="align_trail")  # the trail's last films, on request
    assert not app.get("download_button")


def test_too_few_uploaded_films_are_refused_in_plain_words_and_nothing_is_offered():
    app = upload(open_without_labels(), unlabelled(30))
    assert "Only 30 distinct films remain after exclusions; at least 100 are needed" in texts(app.error)
    assert not app.get("download_button")


def test_uploaded_films_give_the_profile_site_align_would_write(downloads):  # noqa: F811
    files = unlabelled(120)
    app = upload(open_without_labels(), files)
    predictor = resources.predictor()
    scores = alignment.score_unlabelled(predictor, [label_free.Upload(name, data) for name, data in files])
    try:
        expected = alignment.align(predictor.metadata, resources.validation_reference(), scores)
    except alignment.AlignmentRefused as refused:  # the page must then say the same reasons
        for reason in refused.reasons:
            assert reason in texts(app.error)
        return
    assert not app.error, texts(app.error)
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["Estimated share of pneumonia"] == f"{expected.estimated_prevalence:.0%}"
    assert len(app.image) >= 1  # the alignment drawn
    table = next(frame.value for frame in app.dataframe if "operating point" in frame.value.columns)
    report = json.loads((REPO_ROOT / "reports" / "site_label_free.json").read_text())
    first = report["results"]["250|split"]["points"]["label_free"]["specificity"]
    assert table.iloc[0]["Specificity"] == f"{first['median']:.3f} ({first['p5']:.3f}–{first['p95']:.3f})"
    (name,) = [name for name in downloads if name.startswith("site_profile_label_free_")]
    profile = site.SiteProfile.from_dict(json.loads(downloads[name]))
    assert isinstance(profile, alignment.LabelFreeProfile) and profile.id == expected.id
    assert predictor.operating_point.id != profile.id  # downloading activated nothing
    assert "administrator's act" in texts(app.info)


def test_the_trail_s_last_films_are_aligned_on_request(tmp_path, monkeypatch):
    from pneumo_model.cli import main

    folder = tmp_path / "films"
    folder.mkdir()
    for name, data in unlabelled(110):
        (folder / name).write_bytes(data)
    trail = tmp_path / "trail.sqlite3"
    assert main(["batch", str(folder), "--out", str(tmp_path / "results"), "--audit", str(trail), "--no-progress"]) == 0
    monkeypatch.setenv("PNEUMO_AUDIT_DB", str(trail))
    app = open_without_labels()
    app.number_input(key="align_last").set_value(100).run()
    app.button(key="align_trail").click().run()
    assert not app.exception, app.exception
    shown = texts(app.markdown)
    assert "distinct films used of 100" in shown  # the last 100 of the 110 the trail holds
    assert app.error or app.get("download_button")  # a refusal in words, or the profile


def test_a_missing_trail_is_said_in_plain_words_and_not_created(tmp_path, monkeypatch):
    trail = tmp_path / "none.sqlite3"
    monkeypatch.setenv("PNEUMO_AUDIT_DB", str(trail))
    app = open_without_labels()
    app.button(key="align_trail").click().run()
    assert "There is no audit trail" in texts(app.error) and not trail.exists()
