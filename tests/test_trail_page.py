"""The Audit trail page run headless with AppTest, on a real SQLite trail: newest first, times in the
reader's time zone to the minute (UTC, said so, when the browser names none), the filters,
"find this image" by SHA-256, pictures only of images the session holds, no server path on screen."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from pneumo_model import audit as trail_module
from pneumo_model.audit import AuditTrail
from pneumo_model.paths import bytes_sha256
from test_app import APP, TIMEOUT, open_page, pick_sample, sample_bytes, texts
from ui import resources

pytestmark = pytest.mark.shipped_model

PAGE = "pages/trail.py"
A, B = "person153_bacteria_726.jpeg", "IM-0001-0001.jpeg"  # two demo images


def result(sha: str, source: str = "app", probability: float = 0.3) -> dict:
    model = resources.predictor()
    return dict(
        image_sha256=sha, model_sha256=model.metadata.model_sha256, threshold=model.operating_point.threshold,
        probability=probability, label="pneumonia" if probability >= 0.241 else "normal", grey_zone=True,
        source=source, ood=False, ood_score=0.2, operating_point=model.operating_point.id,
    )


def at(monkeypatch, moment: str) -> None:
    """The audit trail stamps what it records next with ``moment`` (UTC, ISO 8601)."""
    monkeypatch.setattr(trail_module, "_utc_now", lambda: moment)


@pytest.fixture
def records(audit_db, monkeypatch) -> dict[str, int]:
    """Three results and two verdicts at known times around the night Europe/Berlin moves to summer
    time (2026-03-29, 01:00 UTC): the last verdict is given on the first result."""
    trail, real_clock = AuditTrail(audit_db), trail_module._utc_now
    a, b = bytes_sha256(sample_bytes(A)), bytes_sha256(sample_bytes(B))
    at(monkeypatch, "2026-03-28T22:59:59.900000+00:00")
    first = trail.record_result(**result(a))
    at(monkeypatch, "2026-03-29T00:30:10.000000+00:00")
    second = trail.record_result(**result(b, probability=0.01))
    at(monkeypatch, "2026-03-29T00:45:00.000000+00:00")
    third = trail.record_result(**result(b, source="cli", probability=0.01))
    at(monkeypatch, "2026-03-29T00:50:00.000000+00:00")
    trail.record_verdict(second, "agree", note="clear lungs", reviewer="Dr Early")
    at(monkeypatch, "2026-03-29T01:05:30.500000+00:00")
    trail.record_verdict(first, "disagree", note="right lower lobe", reviewer="Dr Late")
    monkeypatch.setattr(trail_module, "_utc_now", real_clock)  # what the app records next is stamped now
    return {"first": first, "second": second, "third": third}


def trail_page(context: dict | None = None, app: AppTest | None = None) -> AppTest:
    app = app or AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    app.context = context or {}
    app.run()
    assert not app.exception, app.exception
    return open_page(app, PAGE)


def table(app: AppTest) -> pd.DataFrame:
    (frame,) = app.dataframe
    return frame.value


def test_newest_first_in_the_browsers_zone_to_the_minute(records):
    app = trail_page({"timezone": "Europe/Berlin", "timezone_offset": -120})
    shown = table(app)
    # Each row by its latest record: the verdict at 01:05 UTC, the CLI result at 00:45, the verdict at 00:50...
    assert list(zip(shown["result_id"], shown["verdict"].fillna("-"))) == [
        (records["first"], "disagree"), (records["second"], "agree"), (records["third"], "-"),
    ]
    # 01:05:30 UTC is 03:05 summer time; 00:50 UTC was still 01:50 winter time; no seconds shown.
    assert list(shown["time"]) == ["2026-03-29 03:05", "2026-03-29 01:50", "2026-03-29 01:45"]
    assert list(shown["shown"]) == ["2026-03-28 23:59", "2026-03-29 01:30", "2026-03-29 01:45"]
    assert "your browser's time zone (Europe/Berlin), to the minute" in texts(app.caption)
    (frame,) = app.dataframe
    assert "time (Europe/Berlin)" in str(frame.proto.columns)  # the column header names the zone


def test_a_half_hour_zone_and_a_browser_that_gives_only_its_offset(records):
    for context, label in (({"timezone": "Asia/Kolkata"}, "Asia/Kolkata"), ({"timezone_offset": -330}, "UTC+05:30")):
        app = trail_page(context)
        assert list(table(app)["shown"])[0] == "2026-03-29 04:29", context  # 22:59:59.9 UTC, never rounded up
        assert f"({label})" in texts(app.caption)


def test_without_a_zone_from_the_browser_times_are_utc_and_it_says_so(records):
    app = trail_page()
    assert list(table(app)["time"]) == ["2026-03-29 01:05", "2026-03-29 00:50", "2026-03-29 00:45"]
    assert "UTC (your browser did not say its time zone)" in texts(app.caption)


def test_the_verdict_note_and_reviewer_come_before_the_technical_columns(records):
    app = trail_page({"timezone": "UTC", "timezone_offset": 0})
    (frame,) = app.dataframe
    order = list(frame.proto.column_order)
    assert order.index("verdict") < order.index("note") < order.index("reviewer") < len(order) <= 10
    assert "result_id" not in order and "model" not in order  # technical, behind the toggle
    app.toggle(key="trail_technical").set_value(True).run()
    (frame,) = app.dataframe
    assert {"result_id", "model", "point", "ood_score", "crop_box"} <= set(frame.proto.column_order)
    assert frame.proto.placeholder == "—"  # a missing note or verdict is a dash, never "None"
    assert "None" not in set(table(app)["flags"]) | set(table(app)["time"])


def test_filters_by_date_verdict_reviewer_and_source(records):
    app = trail_page({"timezone": "Europe/Berlin", "timezone_offset": -120})
    app.date_input(key="trail_days").set_value((dt.date(2026, 3, 28), dt.date(2026, 3, 28))).run()
    assert table(app).empty  # every row's latest record is on the 29th in Berlin...
    app.date_input(key="trail_days").set_value((dt.date(2026, 3, 29), dt.date(2026, 3, 29))).run()
    assert len(table(app)) == 3
    app.date_input(key="trail_days").set_value(()).run()

    app.multiselect(key="trail_verdicts").set_value(["no verdict"]).run()
    assert list(table(app)["result_id"]) == [records["third"]]
    app.multiselect(key="trail_verdicts").set_value(["agree", "disagree"]).run()
    assert list(table(app)["result_id"]) == [records["first"], records["second"]]
    app.multiselect(key="trail_verdicts").set_value([]).run()

    assert app.multiselect(key="trail_reviewers").options == ["Dr Early", "Dr Late"]
    app.multiselect(key="trail_reviewers").set_value(["Dr Late"]).run()
    assert list(table(app)["note"]) == ["right lower lobe"]
    app.multiselect(key="trail_reviewers").set_value([]).run()

    app.multiselect(key="trail_sources").set_value(["cli"]).run()
    assert list(table(app)["result_id"]) == [records["third"]]
    assert "Page 1 of 1: rows 1–1 of 1 (filtered from 3), newest first." in texts(app.caption)


def test_the_date_filter_is_the_readers_day_not_the_servers(records):
    app = trail_page({"timezone": "America/New_York", "timezone_offset": 240})
    app.date_input(key="trail_days").set_value((dt.date(2026, 3, 28), dt.date(2026, 3, 28))).run()
    assert len(table(app)) == 3  # 01:05 UTC on the 29th is still the evening of the 28th in New York


def find(app: AppTest, name: str, data: bytes) -> AppTest:
    app.file_uploader(key="trail_find").set_value((name, data, "image/jpeg"))
    app.run()
    assert not app.exception, app.exception
    return app


def test_find_this_image_matches_by_sha256_and_shows_only_its_records(records):
    app = find(trail_page(), "any-name-at-all.jpeg", sample_bytes(B))
    shown = table(app)
    assert list(shown["result_id"]) == [records["second"], records["third"]]
    assert set(shown["image_sha256"]) == {bytes_sha256(sample_bytes(B))}
    assert "2 record(s) of this image" in texts(app.success)
    assert len(app.image) == 1  # its picture, from the bytes just dropped in
    assert shown["thumbnail"].notna().all()  # and in its rows
    app.multiselect(key="trail_verdicts").set_value(["agree"]).run()
    assert list(table(app)["result_id"]) == [records["second"]]  # the other filters still apply


def test_an_image_with_no_record_and_a_file_that_is_no_image_are_said_plainly(records):
    app = find(trail_page(), "other.jpeg", sample_bytes("person10_virus_35.jpeg"))
    assert "No record of **other.jpeg**" in texts(app.info)
    assert table(app).empty
    app = find(trail_page(), "notes.jpeg", b"these are notes")
    assert "No record of **notes.jpeg**" in texts(app.info)
    assert "No picture:" in texts(app.caption) and not app.image
    assert not app.error


def test_a_picture_only_for_an_image_this_session_still_holds(records):
    app = open_page(pick_sample(AppTest.from_file(str(APP), default_timeout=TIMEOUT).run(), A), PAGE)
    shown = table(app)
    held = bytes_sha256(sample_bytes(A))
    assert shown["thumbnail"].notna().tolist() == (shown["image_sha256"] == held).tolist()
    assert shown["thumbnail"].notna().sum() == 2  # the fixture's result of A, and the one just shown on Review
    assert str(shown["thumbnail"].dropna().iloc[0]).startswith("data:image/png;base64,")


def every_text(app: AppTest) -> str:
    parts = [str(e.value) for kind in ("markdown", "caption", "error", "info", "warning", "success") for e in getattr(app, kind)]
    parts += [str(e.value) for kind in ("markdown", "caption") for e in getattr(app.sidebar, kind)]
    parts += [str(element.proto) for element in app.get("file_uploader")] + [m.label for m in app.metric]
    return "\n".join(parts)


def test_no_server_path_on_screen(records, audit_db):
    app = trail_page()
    assert str(audit_db.parent) not in every_text(app) and "audit.sqlite3" not in every_text(app)
    assert "kept on the server" in texts(app.caption)


def test_an_unreadable_trail_is_said_without_its_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_AUDIT_DB", str(tmp_path))  # a folder
    app = trail_page()
    message = texts(app.error)
    assert "cannot be read" in message and "is a folder" in message and "on the server" in message
    assert str(tmp_path) not in every_text(app)


def test_a_long_trail_is_shown_a_page_at_a_time_and_a_filter_starts_again_at_the_first(audit_db):
    trail = AuditTrail(audit_db)
    trail.record_results([trail_module.ResultRecord(**result(f"{index:064x}")) for index in range(23)])
    trail.record_results([trail_module.ResultRecord(**result("f" * 64, source="cli"))])
    app = trail_page()
    assert len(table(app)) == 20 and "Page 1 of 2: rows 1–20 of 24, newest first." in texts(app.caption)
    (next_page,) = [button for button in app.button if button.label == "Next"]
    next_page.click().run()
    assert len(table(app)) == 4 and "Page 2 of 2: rows 21–24 of 24" in texts(app.caption)
    assert list(table(app)["result_id"]) == [4, 3, 2, 1]  # the oldest last
    app.multiselect(key="trail_sources").set_value(["cli"]).run()
    assert list(table(app)["result_id"]) == [24] and "Page 1 of 1" in texts(app.caption)
