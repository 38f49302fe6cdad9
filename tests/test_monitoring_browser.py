"""The Monitoring page in the real browser (Playwright + Debian's Chromium), on a trail of 700
films over a week whose last 200 come from changed films: the alert in words with what to do, the
windows drawn over time, the table. Skipped like ``test_browser.py`` when Chromium or playwright is missing."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pytest

from pneumo_model import audit as trail_module
from pneumo_model.artifacts import DEFAULT_MODEL_PATH, read_metadata
from test_browser import app_url, browser, open_page, page, server_files  # noqa: F401  (fixtures)
from test_monitor import write_trail

pytestmark = [pytest.mark.shipped_model, pytest.mark.browser]
# Where to also save the page's screenshot (docs/screenshots when regenerating them), if set.
SCREENSHOT_ENV = "PNEUMO_MONITORING_SCREENSHOT"


@pytest.fixture(scope="module", autouse=True)
def changed_stream(server_files):
    """Seven days of 100 films each (a quarter normal), written before the server starts; from day
    six the normal films score 2 higher and a tenth of the films are flagged."""
    rng = np.random.default_rng(24)
    metadata = read_metadata(DEFAULT_MODEL_PATH)
    start = dt.datetime(2026, 11, 30, 8, tzinfo=dt.timezone.utc)
    with pytest.MonkeyPatch.context() as patch:
        for day in range(7):
            changed = day >= 5
            sick = rng.random(100) < 0.74
            logits = np.where(sick, rng.normal(3.4, 1.5, 100), rng.normal(-4.3 + (2.0 if changed else 0.0), 1.1, 100))
            clock = iter(start + dt.timedelta(days=day, minutes=5 * i) for i in range(100))
            patch.setattr(trail_module, "_utc_now", lambda: next(clock).isoformat(timespec="microseconds"))
            flagged = [bool(changed and i % 10 == 0) for i in range(100)]
            write_trail(server_files["audit"], logits, flagged, metadata, first=day * 100)


def test_a_change_of_the_films_is_drawn_and_said_with_what_to_do(page, tmp_path):
    from playwright.sync_api import expect

    open_page(page, "Monitoring")
    alert = page.get_by_test_id("stAlertContentError")
    expect(alert).to_contain_text("The films changed", timeout=120_000)
    expect(alert).to_contain_text("window 7 (2026-12-06 to 2026-12-06, 100 films)")
    main = page.get_by_test_id("stMain")
    for words in ("Check the scanner's processing", "align again", "Calibrate with labels"):
        expect(main).to_contain_text(words)
    picture = main.get_by_test_id("stImage")
    expect(picture).to_have_count(1)
    image = picture.locator("img")
    expect(image).to_have_js_property("complete", True)
    assert image.evaluate("img => img.naturalWidth") > 600  # the figure arrived, not a broken picture
    expect(image).to_be_visible()
    box = image.bounding_box()
    assert box is not None and box["width"] > 600
    expect(main.get_by_test_id("stDataFrame")).to_be_visible()
    page.mouse.move(0, 0)
    page.screenshot(path=str(tmp_path / "monitoring.png"), full_page=True)
    if os.environ.get(SCREENSHOT_ENV):
        height = main.evaluate("main => main.scrollHeight")
        page.set_viewport_size({"width": 1366, "height": max(768, height)})
        page.wait_for_timeout(500)
        page.screenshot(path=str(Path(os.environ[SCREENSHOT_ENV])))
