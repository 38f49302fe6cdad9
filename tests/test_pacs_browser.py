"""The PACS as a worklist source, in Chromium against `streamlit run`, with a real Orthanc behind it:
search, retrieve and score a study, open a row on Review, send the result back as a structured report."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import pytest

from pneumo_model.lab import orthanc as orthanc_server
from pneumo_model.lab.orthanc import PASSWORD, USER, OrthancServer
from pacs_studies import SENTINELS, main_study_files, sentinel_study
from pneumo_model.audit import AuditTrail
from pneumo_model.pacs import PacsClient, PacsSettings
from test_browser import SLOW_MS, _missing_browser
from tools.app_server import CHROMIUM, CHROMIUM_ARGS, WINDOW, streamlit_app

pytestmark = [pytest.mark.shipped_model, pytest.mark.browser, pytest.mark.pacs]
SCREENSHOTS = os.environ.get("PNEUMO_SCREENSHOTS")  # a folder to keep the pictures in, when set


@pytest.fixture(scope="module")
def pacs_app(tmp_path_factory):
    for missing, flag in ((orthanc_server.missing(), "REQUIRE_PACS"), (_missing_browser(), "REQUIRE_BROWSER")):
        if missing:
            if os.environ.get(flag) == "1":
                pytest.fail(f"{missing} and {flag}=1")
            pytest.skip(missing)
    from playwright.sync_api import expect, sync_playwright

    folder = tmp_path_factory.mktemp("pacs_app")
    server = OrthancServer(folder / "orthanc").start()
    study = sentinel_study()
    for data in main_study_files(study).values():
        server.upload(data)
    names = {"PNEUMO_DICOMWEB_URL": server.dicomweb_url, "PNEUMO_DICOMWEB_USER": USER, "PNEUMO_DICOMWEB_PASSWORD": PASSWORD}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)  # the app's server reads them at start, as an administrator sets them
    expect.set_options(timeout=SLOW_MS)
    try:
        with streamlit_app(folder / "streamlit.log", audit_db=folder / "audit.sqlite3") as url, sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            yield {"url": url, "browser": chromium, "server": server, "study": study, "folder": folder}
            chromium.close()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.remove()


def click_row(page, grid, text: str, row_height: int) -> None:
    """Ticks the box at the left of the grid's row showing ``text`` (the grid is a canvas; its
    accessible table says which row is where)."""
    row = int(grid.locator("table[role=grid] tr", has_text=text).get_attribute("aria-rowindex"))  # the header is 1
    rows = int(grid.locator("table[role=grid]").get_attribute("aria-rowcount")) - 1
    height = grid.evaluate("grid => grid.querySelector('.dvn-scroller').clientHeight")
    header = height - row_height * rows
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 16, box["y"] + header + row_height * (row - 2) + row_height / 2)


def shot(page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def test_a_study_from_the_pacs_is_scored_opened_and_its_result_sent_back(pacs_app):
    from playwright.sync_api import expect

    url = pacs_app["url"]
    context = pacs_app["browser"].new_context(viewport=WINDOW)
    page = context.new_page()
    page.set_default_timeout(SLOW_MS)
    outside: list[str] = []
    page.on("request", lambda request: None if request.url.startswith(url) else outside.append(request.url))
    page.goto(url)
    page.get_by_test_id("stSidebar").get_by_role("link", name="Worklist", exact=True).click()
    page.get_by_role("radio", name="PACS", exact=True).click()
    page.get_by_role("button", name="Search the PACS").click()
    studies = page.locator("[data-testid=stDataFrame]").first
    expect(studies).to_contain_text("2026-11-30")
    expect(studies).to_contain_text(SENTINELS["accession_number"])
    expect(studies).to_contain_text("AP, LL")  # the study's views
    expect(page.get_by_test_id("stMain")).not_to_contain_text(SENTINELS["patient_name"].split("^")[0])  # not allowed here
    shot(page, "pacs_search")
    click_row(page, studies, SENTINELS["accession_number"], row_height=35)
    page.get_by_role("button", name=re.compile(r"Retrieve and score this study \(9 instances\)")).click()

    main = page.get_by_test_id("stMain")
    expect(main).to_contain_text("3 instance(s) of this study were not scored")
    expect(main).to_contain_text("a lateral view (ViewPosition LL)")
    expect(main).to_contain_text("not an image (Basic Text SR Storage)")
    grid = page.locator("[data-testid=stDataFrame]").last  # under the study table
    # 5 scored, the video-syntax image unreadable (as the same file uploaded would be), the header
    expect(grid.locator("table[role=grid]")).to_have_attribute("aria-rowcount", "7")
    expect(main).to_contain_text("MPEG2 Main Profile / Main Level', which this installation cannot decode")
    client = PacsClient(PacsSettings(pacs_app["server"].dicomweb_url, USER, PASSWORD))
    frontal = next(i for i in client.instances(pacs_app["study"].study_uid) if i.instance_number == 1 and i.has_pixels)
    shot(page, "pacs_worklist")
    click_row(page, grid, frontal.sop_uid[-12:], row_height=50)
    expect(main).to_contain_text(f"SOP Instance {frontal.sop_uid}")
    page.get_by_role("button", name="Send result to PACS").click()
    expect(main).to_contain_text("was stored in the study with its heat-map picture")
    shot(page, "pacs_sent")
    reports = [i for i in client.instances(pacs_app["study"].study_uid) if i.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.33"]
    pictures = [i for i in client.instances(pacs_app["study"].study_uid) if i.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"]
    assert len(reports) == 1 and len(pictures) == 1
    page.get_by_role("button", name="Review", exact=True).click()
    expect(page.get_by_test_id("stImage").first).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)
    context.close()
    assert outside == [], f"requests that left the app's localhost server: {outside}"

    trail = AuditTrail(pacs_app["folder"] / "audit.sqlite3")
    (event,) = trail.events("sr_sent")
    assert event["detail"]["sr_uid"] == reports[0].sop_uid and event["detail"]["capture_uid"] == pictures[0].sop_uid
    with sqlite3.connect(pacs_app["folder"] / "audit.sqlite3") as connection:
        dump = "\n".join(connection.iterdump())
    log = (pacs_app["folder"] / "streamlit.log").read_text(errors="replace")
    for text in (SENTINELS["patient_name"], SENTINELS["patient_id"], SENTINELS["birth_date"], SENTINELS["accession_number"]):
        assert text not in dump and text not in log, text
