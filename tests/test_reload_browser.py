"""A reload in the real browser (Playwright + Debian's Chromium): F5 on a scored 30-file worklist
brings back the worklist and the chosen image; a second tab, or another browser, on the same URL
shows nothing of it; a reload during LIME says what it stopped; and the worklist of 30 uploads fits
its table on the first screen at 1366 x 768, with the grid's toolbar clear of the filters.

Skipped like ``test_browser.py`` when Chromium or playwright is missing."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import re
import shutil
from pathlib import Path

import pytest

from test_browser import (  # noqa: F401  (fixtures)
    SAMPLES_DIR, SLOW_MS, WINDOW, app_url, browser, click_worklist_row, open_page, page, server_files,
)
from ui import state

pytestmark = [pytest.mark.shipped_model, pytest.mark.browser]

OTHER_TAB_WORDS = state.OTHER_TAB.split("**")[1]
OPENED = "case006_person10_virus_35.jpeg"  # on the first page: the highest probability


def thirty_files(folder: Path) -> list[Path]:
    """30 copies of the demo images, each under its own name."""
    samples = sorted(SAMPLES_DIR.glob("*.jpeg"))
    files = []
    for index in range(30):
        sample = samples[index % len(samples)]
        path = folder / f"case{index:03d}_{sample.name}"
        shutil.copy(sample, path)
        files.append(path)
    return files


def scored_worklist(tab, folder: Path) -> None:
    from playwright.sync_api import expect

    open_page(tab, "Worklist")
    tab.locator("input[type=file][multiple]").set_input_files([str(path) for path in thirty_files(folder)])
    expect(tab.get_by_test_id("stMetric").filter(has_text="Scored").get_by_test_id("stMetricValue")).to_have_text("30")
    expect(tab.locator("[data-testid=stDataFrame] table[role=grid]")).to_have_attribute("aria-rowcount", "11")


def overlap(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"] and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]


def test_after_30_uploads_the_table_is_on_the_first_screen_and_its_toolbar_clear_of_the_filters(page, tmp_path):
    from playwright.sync_api import expect

    scored_worklist(page, tmp_path)
    grid = page.locator("[data-testid=stDataFrame]")
    page.wait_for_timeout(1000)  # the grid settles
    box = grid.bounding_box()
    # The header and the first two rows (the page draws rows 50 px high) on the first screen, unscrolled.
    assert page.get_by_test_id("stMain").evaluate("main => main.scrollTop") == 0
    assert box["y"] >= 0 and box["y"] + 38 + 2 * 50 <= WINDOW["height"], box
    # The uploader's 30 file chips are folded away, not between the metrics and the table.
    chips = page.get_by_role("button", name=re.compile(r"^Remove case0"))
    expect(chips.first).to_be_hidden()

    grid.hover()
    toolbar = page.locator("[data-testid=stElementToolbar]").first
    expect(toolbar).to_be_visible()
    toolbar_box = toolbar.bounding_box()
    filters = {
        name: page.get_by_test_id("stElementContainer").filter(has=page.get_by_test_id("stWidgetLabel").filter(has_text=name)).last
        for name in ("Call", "Flags (rows with any of them)", "Order")
    }
    for name, filter_ in filters.items():
        filter_box = filter_.bounding_box()
        assert filter_box is not None, name
        assert not overlap(toolbar_box, filter_box), (name, toolbar_box, filter_box)
    page.screenshot(path=str(tmp_path / "worklist_30.png"))

    # Opening the folded uploader shows the files, and the worklist stays.
    page.get_by_test_id("stExpander").filter(has_text="Upload chest X-rays").locator("summary").click()
    expect(chips.first).to_be_visible()
    expect(page.get_by_test_id("stMetric").filter(has_text="Scored").get_by_test_id("stMetricValue")).to_have_text("30")


def test_a_reload_keeps_the_worklist_and_chosen_image_and_no_other_tab_or_browser_sees_them(browser, app_url, tmp_path):
    from playwright.sync_api import expect

    context = browser.new_context(viewport=WINDOW)
    other_browser = browser.new_context(viewport=WINDOW)  # another profile: its own cookies
    try:
        tab = context.new_page()
        tab.set_default_timeout(SLOW_MS)
        tab.goto(app_url)
        scored_worklist(tab, tmp_path)
        click_worklist_row(tab, OPENED)
        sidebar = tab.get_by_test_id("stSidebar")
        expect(sidebar).to_contain_text(f"Chosen image: {OPENED}")
        url = tab.url
        assert "uploads=" in url and "case0" not in url and "IM-" not in url  # no file name in the URL

        tab.reload()
        expect(tab.get_by_test_id("stMetric").filter(has_text="Scored").get_by_test_id("stMetricValue")).to_have_text("30")
        expect(tab.get_by_test_id("stSidebar")).to_contain_text(f"Chosen image: {OPENED}")
        expect(tab.locator("[data-testid=stDataFrame] table[role=grid] tr", has_text=OPENED)).to_have_count(1)
        expect(tab.get_by_text(OTHER_TAB_WORDS)).to_have_count(0)
        expect(tab.get_by_text("No image chosen")).to_have_count(0)
        # The mark stays (a second reload comes back too); the verdict form on screen has a new submission id.
        assert parse_qs(urlsplit(tab.url).query)["uploads"] == parse_qs(urlsplit(url).query)["uploads"]

        # A second tab on the same URL while the first is open: a plain note, none of its films.
        second = context.new_page()
        second.set_default_timeout(SLOW_MS)
        second.goto(url)
        expect(second.get_by_text(OTHER_TAB_WORDS)).to_be_visible()
        expect(second.get_by_test_id("stSidebar")).to_contain_text("No image chosen yet.")
        expect(second.get_by_test_id("stDataFrame")).to_have_count(0)
        expect(second.get_by_text("case0")).to_have_count(0)
        expect(second).not_to_have_url(re.compile("uploads="))

        # The first tab closed, its link pasted into another browser: still nothing.
        tab.close()
        pasted = other_browser.new_page()
        pasted.set_default_timeout(SLOW_MS)
        pasted.goto(url)
        expect(pasted.get_by_text(OTHER_TAB_WORDS)).to_be_visible()
        expect(pasted.get_by_test_id("stDataFrame")).to_have_count(0)
        expect(pasted.get_by_test_id("stSidebar")).to_contain_text("No image chosen yet.")
    finally:
        context.close()
        other_browser.close()


def test_a_reload_during_lime_keeps_the_image_and_says_lime_was_stopped(page):
    from playwright.sync_api import expect

    page.get_by_test_id("stSidebar").get_by_role("button", name=re.compile("person10_virus_35")).click()
    open_page(page, "Explain")
    expect(page.get_by_test_id("stImage").filter(has_text="Grad-CAM")).to_be_visible()
    page.get_by_role("button", name="Run LIME").click()
    expect(page.get_by_text(re.compile(r"Running LIME|LIME: \d+ of"))).to_be_visible()
    page.reload()
    expect(page.get_by_text("The LIME explanation that was running was stopped by the reload")).to_be_visible()
    expect(page.get_by_test_id("stSidebar")).to_contain_text("Chosen image: person10_virus_35.jpeg")
    expect(page.get_by_text("Choose the settings and press Run LIME")).to_be_visible()  # not started again unasked
