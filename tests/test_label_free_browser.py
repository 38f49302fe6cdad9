"""The Site calibration page's "Without labels" part in a real browser (Chromium through
Playwright): unlabelled films uploaded, scored with a progress bar, the estimate, the alignment
drawn, the expected figures and a download that is a label-free profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_browser import app_url, browser, open_page, page, server_files  # noqa: F401  (the module's server and Chromium)

pytestmark = [pytest.mark.shipped_model, pytest.mark.browser]


def test_without_labels_aligns_uploaded_films_and_downloads_a_label_free_profile(page, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    from pneumo_model.alignment import LabelFreeProfile
    from pneumo_model.site import SiteProfile
    from test_label_free_page import unlabelled

    paths = []
    for name, data in unlabelled(120):
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(str(path))
    open_page(page, "Site calibration")
    expect(page.get_by_text("Nothing on this page changes how the app calls films")).to_be_visible()
    page.get_by_test_id("stMain").get_by_text("Without labels (provisional)").click()
    expect(page.get_by_text("stays the better evidence").first).to_be_visible()
    page.get_by_test_id("stMain").get_by_text("Upload unlabelled films", exact=True).click()
    expect(page.get_by_text("Unlabelled films (")).to_be_visible()
    page.get_by_test_id("stMain").locator("input[type=file]").set_input_files(paths)
    outcome = page.get_by_text("Download the label-free profile (JSON)").or_(page.get_by_text("Not aligned; nothing to download."))
    expect(outcome.first).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)
    expect(page.get_by_text("distinct films used of 120").first).to_be_visible()
    if page.get_by_text("Not aligned; nothing to download.").count():
        return  # a reasoned refusal, in words, and nothing offered
    expect(page.get_by_test_id("stMetric").filter(has_text="Estimated share of pneumonia")).to_be_visible()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=stImage] img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    with page.expect_download() as download:
        page.get_by_role("button", name="Download the label-free profile (JSON)").click()
    profile = SiteProfile.from_dict(json.loads(Path(download.value.path()).read_text()))
    assert isinstance(profile, LabelFreeProfile) and profile.kind == "label-free" and profile.n <= 120
    assert download.value.suggested_filename == f"site_profile_label_free_{profile.id[:8]}.json"
