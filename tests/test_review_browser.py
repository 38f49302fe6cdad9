"""Review in a real browser (Chromium through Playwright, the fixtures of ``tests/test_browser.py``):
the verdict form keeps what was typed, asks before a second verdict, and writes one row for a
double click (read back from the server's SQLite trail); and a new upload's call never sits beside
the previous film, its bar or the gate's message (``tools/stale_pairing.py`` watches every change
of the page).
"""

from __future__ import annotations

import pytest

from pneumo_model.audit import AuditTrail
from tools import stale_pairing
from tools.app_server import REPO_ROOT

from test_browser import app_url, browser, page, server_files  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.shipped_model, pytest.mark.browser]

SAMPLES_DIR = REPO_ROOT / "assets" / "samples"
NOTE = "left base hazy; compare with the film of last week"
NAME = "Dr Vance"


def verdict_rows(server_files) -> list[dict]:
    path = server_files["audit"]
    return [row for row in AuditTrail(path).trail() if row["verdict_id"] is not None] if path.exists() else []


def upload(page, name: str) -> None:
    from playwright.sync_api import expect

    page.locator("input[type=file]").first.set_input_files(str(SAMPLES_DIR / name))
    expect(page.get_by_test_id("stImageCaption").filter(has_text=name)).to_be_visible()
    expect(page.get_by_test_id("stMetric").filter(has_text="Probability of pneumonia")).to_be_visible()
    idle(page)


def idle(page, settle_ms: int = 800) -> None:
    """Waits until no script run is going on (and for one a second click may still start)."""
    from playwright.sync_api import expect

    page.wait_for_timeout(settle_ms)
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)


def test_the_verdict_form_keeps_what_was_typed_asks_before_a_second_verdict_and_a_double_click_writes_once(
    page, server_files
):
    from playwright.sync_api import expect

    upload(page, "IM-0003-0001.jpeg")
    before = len(verdict_rows(server_files))
    note = page.get_by_role("textbox", name="Note (optional)")
    reviewer = page.get_by_role("textbox", name="Reviewer (optional)")
    record = page.get_by_role("button", name="Record verdict")

    note.fill(NOTE)
    reviewer.fill(NAME)
    record.click()
    expect(page.get_by_text("Choose agree, disagree or unsure before recording")).to_be_visible()
    idle(page)
    assert note.input_value() == NOTE and reviewer.input_value() == NAME  # nothing typed is lost
    assert len(verdict_rows(server_files)) == before

    page.get_by_test_id("stRadioGroup").get_by_text("agree", exact=True).click()
    record.click()
    expect(page.get_by_text("Verdict agree recorded")).to_be_visible()
    idle(page)
    rows = verdict_rows(server_files)
    assert len(rows) == before + 1
    assert (rows[-1]["verdict"], rows[-1]["note"], rows[-1]["reviewer"]) == ("agree", NOTE, NAME)
    assert note.input_value() == "" and reviewer.input_value() == NAME

    # Again on the same film: asked first, nothing written.
    page.get_by_test_id("stRadioGroup").get_by_text("disagree", exact=True).click()
    note.fill("on second look: the right base")
    record.click()
    question = page.get_by_text("Record another verdict?")
    expect(question).to_be_visible()
    assert f"(record {rows[-1]['verdict_id']})" in page.get_by_test_id("stAlert").filter(has=question).inner_text()
    idle(page)
    assert len(verdict_rows(server_files)) == before + 1
    assert note.input_value() == "on second look: the right base"

    # Confirmed, with a double click on the button: one more row, not two.
    page.get_by_text("Yes, record a second verdict on this image").click()
    record.dblclick()
    expect(page.get_by_text("Another verdict disagree recorded")).to_be_visible()
    idle(page, 1500)
    rows = verdict_rows(server_files)
    assert [row["verdict"] for row in rows[-2:]] == ["agree", "disagree"] and len(rows) == before + 2
    assert rows[-1]["note"] == "on second look: the right base"

    # A first verdict on another film, double-clicked: one row.
    upload(page, "person100_bacteria_475.jpeg")
    page.get_by_test_id("stRadioGroup").get_by_text("unsure", exact=True).click()
    record.dblclick()
    expect(page.get_by_text("Verdict unsure recorded")).to_be_visible()
    idle(page, 1500)
    rows = verdict_rows(server_files)
    assert len(rows) == before + 3 and rows[-1]["verdict"] == "unsure"
    assert rows[-1]["result_id"] != rows[-2]["result_id"]


def test_a_new_upload_never_shows_its_call_beside_the_previous_film(page, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=stale_pairing.SLOW_MS)
    films = stale_pairing.films(tmp_path)
    results = stale_pairing.measure(page, films, uploads=6)
    report = stale_pairing.summary(results)
    assert len(results) == 6 and all(upload.moments >= 2 for upload in results), report  # each change was seen
    assert report["uploads_with_a_mix"] == 0, report
