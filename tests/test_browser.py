"""End to end in a real browser: `streamlit run app.py` driven by Debian's Chromium through Playwright.

Skipped when /usr/bin/chromium or the playwright package is missing, except where
REQUIRE_BROWSER=1 (CI), where they fail instead. Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import encode
from pneumo_model.data import DEFAULT_DATA_DIR
from tools.app_server import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, WINDOW, streamlit_app
from ui import frame

pytestmark = [pytest.mark.shipped_model, pytest.mark.browser]

SAMPLES_DIR = REPO_ROOT / "assets" / "samples"
GREY_ZONE_SAMPLE = SAMPLES_DIR / "IM-0003-0001.jpeg"  # a test-split image the shipped model puts in the grey zone
SLOW_MS = 180_000  # generous: a loaded 2-core machine decodes, scores and renders 100 files


def _missing_browser() -> str | None:
    if not CHROMIUM.is_file():
        return f"Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package (pip install -r requirements.txt)"
    return None


@pytest.fixture(scope="module")
def browser():
    missing = _missing_browser()
    if missing:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"{missing} is missing and REQUIRE_BROWSER=1")
        pytest.skip(f"{missing} is missing")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=SLOW_MS)  # the first run loads TensorFlow and the model
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("streamlit")
    return {"log": folder / "streamlit.log", "audit": folder / "audit.sqlite3"}


@pytest.fixture(scope="module")
def app_url(browser, server_files):
    with streamlit_app(server_files["log"], audit_db=server_files["audit"]) as url:
        yield url


@pytest.fixture
def page(browser, app_url):
    """A new browser context: a new Streamlit session at the app's start page."""
    context = browser.new_context(viewport=WINDOW, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(SLOW_MS)
    outside: list[str] = []
    tab.on("request", lambda request: None if request.url.startswith(app_url) else outside.append(request.url))
    tab.goto(app_url)
    yield tab
    context.close()
    assert outside == [], f"requests that left the app's localhost server: {outside}"


def open_page(page, title: str) -> None:
    """Clicks the page's link and waits until the browser is on it (the old page's elements linger)."""
    from playwright.sync_api import expect

    link = page.get_by_test_id("stSidebar").get_by_role("link", name=title, exact=True)
    target = link.get_attribute("href").split("?")[0].rstrip("/")
    link.click()
    expect(page).to_have_url(re.compile(re.escape(target) + r"/?(\?.*)?$"))  # a query may follow


def cli_prediction(path: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "pneumo_model", "predict", str(path)],
        capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, check=True,
    )
    return json.loads(result.stdout.splitlines()[0])


def assert_in_first_screen(locator) -> None:
    box = locator.bounding_box()
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= WINDOW["height"], box


def first_test_pneumonia_image() -> Path:
    return sorted((DEFAULT_DATA_DIR / "test" / "PNEUMONIA").glob("*.jpeg"))[0]


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(lambda: GREY_ZONE_SAMPLE, id="grey-zone-sample"),
        pytest.param(first_test_pneumonia_image, id="data-test-split", marks=pytest.mark.data),
    ],
)
def test_review_shows_the_cli_probability_then_explain_shows_an_overlay(page, image):
    from playwright.sync_api import expect

    path = image()
    expected = cli_prediction(path)
    page.locator("input[type=file]").first.set_input_files(str(path))

    metric = page.get_by_test_id("stMetric").filter(has_text="Probability of pneumonia")
    expect(metric).to_be_visible()
    assert metric.get_by_test_id("stMetricValue").inner_text().strip() == f"{expected['probability']:.3f}"
    call = page.get_by_role("heading", name=f"Call: {expected['label'].capitalize()}")
    expect(call).to_be_visible()
    shown = [call, metric]
    if expected["grey_zone"]:
        flag = page.get_by_text("Indeterminate: needs a careful read")
        expect(flag).to_be_visible()
        shown.append(flag)
    for locator in shown:  # at 1366 x 768, without scrolling
        assert_in_first_screen(locator)

    open_page(page, "Explain")
    overlay = page.get_by_test_id("stImage").filter(has_text="Grad-CAM").locator("img")
    expect(overlay).to_be_visible()
    assert overlay.evaluate("image => image.complete && image.naturalWidth > 0")
    expect(page.get_by_text(path.name).first).to_be_visible()  # the uploaded image stayed chosen


def worklist_files(folder: Path) -> tuple[list[Path], list[str]]:
    """95 readable images (copies of the samples, some re-encoded as 8- and 16-bit PNG) and 5 bad files."""
    samples = sorted(SAMPLES_DIR.glob("*.jpeg"))
    files = []
    for index in range(95):
        sample = samples[index % len(samples)]
        if index % 10 == 3:
            pixels = np.asarray(Image.open(sample).convert("L"))
            path = folder / f"case{index:03d}_{sample.stem}.png"
            path.write_bytes(encode(pixels.astype(np.uint16) * 257 if index % 20 == 3 else pixels))
        else:
            path = folder / f"case{index:03d}_{sample.name}"
            shutil.copy(sample, path)
        files.append(path)
    jpeg = samples[0].read_bytes()
    bad = {
        "bad_empty.png": b"",
        "bad_text.png": b"a text file with an image's name",
        "bad_truncated.jpeg": jpeg[: len(jpeg) // 3],
        "bad_thumbnail.png": encode(np.zeros((16, 16), np.uint8)),
        "bad_random.jpg": np.random.default_rng(0).bytes(4096),
    }
    for name, data in bad.items():
        (folder / name).write_bytes(data)
        files.append(folder / name)
    return files, sorted(bad)


def shipped_operating_point() -> str:
    """The id of the operating point the server calls with: the one shipped in the model's metadata."""
    from pneumo_model.artifacts import DEFAULT_MODEL_PATH, read_metadata
    from pneumo_model.operating_point import OperatingPoint

    return OperatingPoint.shipped(read_metadata(DEFAULT_MODEL_PATH)).id


def test_worklist_scores_100_files_and_lists_the_bad_ones(page, tmp_path):
    from playwright.sync_api import expect

    files, bad = worklist_files(tmp_path)
    assert len(files) == 100
    open_page(page, "Worklist")
    page.locator("input[type=file][multiple]").set_input_files([str(path) for path in files])

    expect(page.get_by_text("Download CSV")).to_be_visible()
    for label, count in (("Scored", "95"), ("Unreadable", "5")):
        metric = page.get_by_test_id("stMetric").filter(has_text=label)
        expect(metric.get_by_test_id("stMetricValue")).to_have_text(count)
    errors = page.get_by_test_id("stAlertContentError").inner_text()
    assert all(name in errors for name in bad), errors
    # A page of 10 rows, every one drawn: the data grid's accessible table counts the header row too.
    expect(page.locator("[data-testid=stDataFrame] table[role=grid]")).to_have_attribute("aria-rowcount", "11")
    expect(page.get_by_text("Page 1 of 10: rows 1–10 of 100")).to_be_visible()
    assert_grid_fits(page.locator("[data-testid=stDataFrame]"))

    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert len(rows) == 100
    assert sorted(row["file"] for row in rows if row["error"]) == bad
    probabilities = [float(row["probability"]) for row in rows if not row["error"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert {row["operating_point"] for row in rows if not row["error"]} == {shipped_operating_point()}
    assert {row["operating_point"] for row in rows if row["error"]} == {""}


def test_a_dicom_goes_through_review_verdict_and_trail_without_leaking_identifiers(page, tmp_path, server_files):
    from playwright.sync_api import expect

    from test_inputs import dicom_file

    sentinels = ("ZZBROWSER^SENTINEL", "ZZBROWSER-ID-1234")
    path = tmp_path / "ZZBROWSER-ID-1234.dcm"  # some PACS exports name files by patient id
    path.write_bytes(dicom_file(PatientName=sentinels[0], PatientID=sentinels[1]))
    page.locator("input[type=file]").first.set_input_files(str(path))
    expect(page.get_by_test_id("stMetric").filter(has_text="Probability of pneumonia")).to_be_visible()

    page.get_by_text("disagree", exact=True).click()
    page.locator("textarea").first.fill("second read: clear")
    page.get_by_role("button", name="Record verdict").click()
    expect(page.get_by_text("Verdict disagree recorded")).to_be_visible()

    open_page(page, "Audit trail")
    expect(page.get_by_text("Download CSV")).to_be_visible()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    mine = [row for row in rows if row["verdict"] == "disagree" and row["note"] == "second read: clear"]
    assert len(mine) == 1 and mine[0]["source"] == "app" and len(mine[0]["image_sha256"]) == 64
    assert mine[0]["operating_point"] == shipped_operating_point()  # the whole id, not the screen's 8 digits

    stored = b"".join(p.read_bytes() for p in server_files["audit"].parent.glob("audit.sqlite3*"))
    log = server_files["log"].read_bytes()
    for sentinel in sentinels:
        assert sentinel.encode() not in stored and sentinel.encode() not in log


HOSTILE_NAME = "**ZZ** [link](https:evil.example) ![x](https:127.0.0.1:9) www.evil.example"


def shown(locator) -> str:
    """The text a reader sees (``ui.markup.plain`` breaks bare links with invisible word joiners)."""
    return locator.inner_text().replace("\u2060", "")


def markup_from_names(page) -> list[str]:
    """Links and images in the page that a file name could have made."""
    links = page.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href') || '')")
    images = page.locator("img").evaluate_all("images => images.map(i => i.getAttribute('src') || '')")
    return [url for url in links + images if "evil" in url or "127.0.0.1:9" in url]


def test_file_names_are_shown_as_text_and_make_no_link_image_or_request(page, tmp_path):
    from playwright.sync_api import expect

    good = tmp_path / (HOSTILE_NAME + ".jpeg")
    shutil.copy(GREY_ZONE_SAMPLE, good)
    page.locator("input[type=file]").first.set_input_files(str(good))
    expect(page.get_by_test_id("stMetric").filter(has_text="Probability of pneumonia")).to_be_visible()
    assert good.name in shown(page.get_by_test_id("stSidebar"))  # shown as typed
    assert markup_from_names(page) == []
    open_page(page, "Explain")
    expect(page.get_by_test_id("stImage").filter(has_text="Grad-CAM").locator("img")).to_be_visible()
    expect(page.get_by_test_id("stImage").filter(has_text="Original:")).to_be_visible()
    assert f"Original: {good.name}" in shown(page.get_by_test_id("stMain"))
    assert markup_from_names(page) == []

    bad = tmp_path / (HOSTILE_NAME + ".png")
    bad.write_bytes(b"not an image")
    open_page(page, "Worklist")
    page.locator("input[type=file][multiple]").set_input_files([str(good), str(bad)])
    errors = page.get_by_test_id("stAlertContentError").filter(has_text="could not be read")
    expect(errors).to_be_visible()
    assert bad.name in shown(errors)
    assert markup_from_names(page) == []  # and the page fixture checks that no request left localhost


@pytest.mark.data
@pytest.mark.parametrize(
    "name", ["NORMAL/IM-0272-0001.jpeg", "NORMAL/IM-0523-0001-0002.jpeg", "PNEUMONIA/person940_virus_1605.jpeg"]
)
def test_full_size_films_that_once_crashed_the_display_show_on_every_page(page, name):
    from playwright.sync_api import expect

    path = DEFAULT_DATA_DIR.parent / "chest_xray_fullres_sample" / "train" / name
    page.locator("input[type=file]").first.set_input_files(str(path))
    picture = page.get_by_test_id("stImage").filter(has_text=path.name).locator("img")
    expect(picture).to_be_visible()
    assert picture.evaluate("image => image.complete && image.naturalWidth > 0")
    for title, caption in (("Explain", "Grad-CAM"), ("Crop & rescore", "the image as rescored")):
        open_page(page, title)
        overlay = page.get_by_test_id("stImage").filter(has_text=caption).locator("img").first
        expect(overlay).to_be_visible()
        assert overlay.evaluate("image => image.complete && image.naturalWidth > 0")
        expect(page.get_by_test_id("stException")).to_have_count(0)


def test_crop_sliders_dragged_to_the_end_stop_at_the_smallest_crop_and_keep_the_page(page):
    # The real slider: its bottom edge pushed to 0 with the keyboard, as a hand dragging it would.
    from playwright.sync_api import expect

    page.get_by_role("button", name=re.compile("person153_bacteria_726")).click()
    open_page(page, "Crop & rescore")
    expect(page.get_by_text("stays indeterminate")).to_be_visible()  # the suggested crop crosses inside the zone
    expect(page.get_by_text("The call changes")).to_have_count(0)
    bottom = page.get_by_role("slider").nth(1)
    bottom.focus()
    page.keyboard.press("Home")
    expect(page.get_by_text("grown back to the smallest crop accepted")).to_be_visible()
    expect(bottom).to_have_attribute("aria-valuetext", "56")  # 56 of 224 rows: a quarter of the image
    expect(page.get_by_text("edges at 0 and 56 px from the top")).to_be_visible()
    expect(page.get_by_text("does not fit")).to_have_count(0)
    # A quarter strip squashed to a square is a picture the model never saw: refused in words,
    # with no call after and never "The call changes" (docs/crop_rule.md).
    expect(page.get_by_text("This box is not rescored.")).to_be_visible()
    expect(page.get_by_text("squashed into the model's square input")).to_be_visible()
    expect(page.get_by_text("The whole image's call stands")).to_be_visible()
    expect(page.get_by_text("The call changes")).to_have_count(0)
    expect(page.get_by_test_id("stMetric").filter(has_text="After")).to_have_count(0)
    page.get_by_role("button", name="Suggested").click()
    expect(bottom).to_have_attribute("aria-valuetext", "193")
    expect(page.get_by_text("Probability of pneumonia")).to_be_visible()
    expect(page.get_by_text("This box is not rescored.")).to_have_count(0)


def test_a_restarted_server_tells_the_worklist_tab_its_files_are_gone(browser, tmp_path):
    from playwright.sync_api import expect

    from tools.app_server import free_port, streamlit_app

    port = free_port()
    context = browser.new_context(viewport=WINDOW)
    tab = context.new_page()
    tab.set_default_timeout(SLOW_MS)
    try:
        with streamlit_app(tmp_path / "first.log", audit_db=tmp_path / "audit.sqlite3", port=port) as url:
            tab.goto(url)
            open_page(tab, "Worklist")
            tab.locator("input[type=file][multiple]").set_input_files([str(GREY_ZONE_SAMPLE)])
            expect(tab.get_by_text("Download CSV")).to_be_visible()
            assert "uploads=" in tab.url
        download = tab.get_by_role("button", name="Download CSV")
        expect(download).to_be_disabled()  # the tab noticed that the server is gone
        with streamlit_app(tmp_path / "second.log", audit_db=tmp_path / "audit.sqlite3", port=port):
            # The tab reconnects by itself to a new session that holds none of its files; the old
            # page stays on screen until the user does something: here, a click in the menu.
            expect(download).to_be_enabled()  # connected again
            open_page(tab, "Explain")
            expect(tab.get_by_text("The server was restarted, so the files uploaded earlier in this tab are gone")).to_be_visible()
            open_page(tab, "Worklist")  # the note stays until something is uploaded again...
            expect(tab.get_by_text("The server was restarted, so the files uploaded earlier in this tab are gone")).to_be_visible()
            tab.locator("input[type=file][multiple]").set_input_files([str(SAMPLES_DIR / "person100_bacteria_475.jpeg")])
            expect(tab.get_by_test_id("stMetric").filter(has_text="Scored").get_by_test_id("stMetricValue")).to_have_text("1")
    finally:
        context.close()


@pytest.mark.parametrize("script", [page.script for page in frame.PAGES])
def test_every_page_by_its_own_url_as_a_fresh_servers_first_request_shows_the_frame(browser, tmp_path, script):
    # With st.navigation beside a pages/ folder, Streamlit once served such a first request without
    # the frame, so a bookmarked deep link showed a page without the disclaimer.
    from playwright.sync_api import expect

    from ui.frame import DISCLAIMER, PAGES

    path = "" if script == "app.py" else Path(script).stem
    context = browser.new_context(viewport=WINDOW)
    tab = context.new_page()
    tab.set_default_timeout(SLOW_MS)
    try:
        with streamlit_app(tmp_path / "streamlit.log", audit_db=tmp_path / "audit.sqlite3") as url:
            tab.goto(f"{url}/{path}")
            expect(tab.get_by_text(DISCLAIMER).first).to_be_visible()
            links = tab.get_by_test_id("stSidebar").get_by_role("link")
            expect(links).to_have_count(len(PAGES))
            assert [text.split("\n")[-1].strip() for text in links.all_inner_texts()] == [page.title for page in PAGES]  # after the icon
    finally:
        context.close()


def test_site_calibration_fits_a_profile_from_a_zip_shows_the_explorer_and_downloads_it(page, tmp_path):
    from playwright.sync_api import expect

    from pneumo_model.site import SiteProfile
    from test_site_page import folder_zip, labelled_images

    archive = tmp_path / "local_sample.zip"
    archive.write_bytes(folder_zip(labelled_images(normal=24, pneumonia=26)))
    open_page(page, "Site calibration")
    expect(page.get_by_text("Nothing on this page changes how the app calls films")).to_be_visible()
    page.get_by_test_id("stMain").locator("input[type=file]").set_input_files(str(archive))

    expect(page.get_by_text("3 · Threshold explorer (in sample)")).to_be_visible()
    for label, count in (("Normal images used", "24"), ("Pneumonia images used", "26")):
        expect(page.get_by_test_id("stMetric").filter(has_text=label).get_by_test_id("stMetricValue")).to_have_text(count)
    expect(page.get_by_text("out of fold").first).to_be_visible()
    pictures = page.get_by_test_id("stImage").locator("img")
    expect(pictures).to_have_count(2)  # the ROC and the explorer's curves
    # Both drawn, not only placed: the count is reached before the browser has the bytes.
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=stImage] img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    expect(page.locator("[data-testid=stDataFrame]")).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)

    with page.expect_download() as download:
        page.get_by_role("button", name="Download the site profile (JSON)").click()
    profile = SiteProfile.from_dict(json.loads(Path(download.value.path()).read_text()))
    assert download.value.suggested_filename == f"site_profile_{profile.id[:8]}.json"
    assert profile.n_normal == 24 and profile.n_pneumonia == 26 and profile.target_sensitivity == 0.97
    expect(page.get_by_text(f"PNEUMO_SITE=/path/to/site_profile_{profile.id[:8]}.json")).to_be_visible()


# --- Model card and offline by construction (issue 14) ---------------------------------------------


def test_the_model_cards_first_screen_shows_the_intended_use_the_headline_table_and_the_limitations(page):
    from playwright.sync_api import expect

    open_page(page, "Model card")
    main = page.get_by_test_id("stMain")
    intended = main.get_by_text("Intended use.", exact=False).first
    headline = main.get_by_test_id("stTable")
    expect(headline).to_be_visible()
    expect(headline).to_contain_text("Kermany 2018")
    expect(headline).to_contain_text("What a site can expect")
    limits = main.get_by_role("heading", name="Limitations and shortcuts")
    for locator in (intended, headline, limits, main.get_by_text("Over-calls normals.").first):
        assert_in_first_screen(locator)  # at 1366 x 768, without scrolling
    expect(page.get_by_test_id("stException")).to_have_count(0)


def wait_for_the_run(page) -> None:
    """Until the page's script run has finished (Streamlit's running indicator is gone)."""
    from playwright.sync_api import expect

    page.wait_for_timeout(300)
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)


def pictures_drawn(page) -> list[str]:
    """Waits until every picture on the page has its bytes and is drawn; returns their addresses."""
    wait_for_the_run(page)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=stImage] img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    return page.locator("[data-testid=stImage] img").evaluate_all("images => images.map(i => i.currentSrc)")


def test_a_tour_of_every_page_and_its_main_actions_sends_every_request_to_the_app_itself(browser, app_url, tmp_path):
    """Offline by construction: every request of a full tour (the page, its scripts, fonts, icons,
    favicon, pictures, uploads and the websocket) goes to the app's own localhost server."""
    from urllib.parse import urlsplit

    from playwright.sync_api import expect

    from test_site_page import folder_zip, labelled_images

    archive = tmp_path / "local_sample.zip"
    archive.write_bytes(folder_zip(labelled_images(normal=24, pneumonia=26)))
    demos = sorted(SAMPLES_DIR.glob("*.jpeg"))[:3]

    context = browser.new_context(viewport=WINDOW, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(SLOW_MS)
    requests: list[tuple[str, str]] = []  # (url, resource type), from the very first request on
    sockets: list[str] = []
    images: list[str] = []  # pictures the browser received
    tab.on("request", lambda request: requests.append((request.url, request.resource_type)))
    tab.on("websocket", lambda socket: sockets.append(socket.url))
    tab.on("response", lambda response: images.append(response.url) if response.request.resource_type == "image" and response.ok else None)
    drawn: dict[str, list[str]] = {}
    try:
        tab.goto(app_url)
        expect(tab.get_by_text(frame.DISCLAIMER).first).to_be_visible()
        # Review: pick a demo image from the sidebar.
        tab.get_by_test_id("stSidebar").get_by_role("button", name=re.compile(re.escape(GREY_ZONE_SAMPLE.stem))).click()
        expect(tab.get_by_test_id("stMetric").filter(has_text="Probability of pneumonia")).to_be_visible()
        drawn["Review"] = pictures_drawn(tab)
        # Explain: Grad-CAM, then LIME.
        open_page(tab, "Explain")
        expect(tab.get_by_test_id("stImage").filter(has_text="Grad-CAM").first).to_be_visible()
        tab.get_by_role("button", name=re.compile("Run LIME")).click()
        expect(tab.get_by_test_id("stImage").filter(has_text="LIME").first).to_be_visible()
        drawn["Explain"] = pictures_drawn(tab)
        # Crop & rescore: the suggested crop and its rescored call.
        open_page(tab, "Crop & rescore")
        expect(tab.get_by_test_id("stImage").first).to_be_visible()
        drawn["Crop & rescore"] = pictures_drawn(tab)
        # Worklist: a few files scored at once.
        open_page(tab, "Worklist")
        tab.locator("input[type=file][multiple]").set_input_files([str(path) for path in demos])
        expect(tab.get_by_text("Download CSV")).to_be_visible()
        wait_for_the_run(tab)
        # Audit trail: the records this tour made.
        open_page(tab, "Audit trail")
        wait_for_the_run(tab)
        # Model card: its plots, and a figure inside the collapsed detail.
        open_page(tab, "Model card")
        expect(tab.get_by_test_id("stTable")).to_be_visible()
        tab.get_by_test_id("stExpander").filter(has_text="How the site calibration was measured").locator("summary").click()
        drawn["Model card"] = pictures_drawn(tab)
        # Site calibration: fit a profile on a labelled zip.
        open_page(tab, "Site calibration")
        tab.get_by_test_id("stMain").locator("input[type=file]").set_input_files(str(archive))
        expect(tab.get_by_role("button", name="Download the site profile (JSON)")).to_be_visible()
        drawn["Site calibration"] = pictures_drawn(tab)
        expect(tab.get_by_test_id("stException")).to_have_count(0)
        favicon = tab.locator("link[rel*=icon]").first.get_attribute("href")
    finally:
        context.close()

    local = urlsplit(app_url).netloc
    hosts = {urlsplit(url).netloc for url, _ in requests} | {urlsplit(url).netloc for url in sockets}
    assert hosts == {local}, sorted(url for url, _ in requests if urlsplit(url).netloc != local) + sockets
    assert sockets and all(url.startswith(f"ws://{local}/") for url in sockets)
    fonts = [url for url, kind in requests if kind == "font"]
    assert any("SourceSans" in url for url in fonts), fonts  # the text's font, from the app
    assert any("MaterialSymbols" in url for url in fonts), fonts  # the menu's and messages' icons, from the app
    assert urlsplit(favicon).netloc in ("", local), favicon
    assert all(drawn.values()), drawn  # every page with pictures drew some
    assert len(drawn["Model card"]) >= 4  # confusion matrix, ROC, reliability and the site-calibration figure
    assert {url for urls in drawn.values() for url in urls} <= set(images)  # each one fetched from the app


# --- Worklist to case, and the audit trail for a doctor ---------------------------------------------


def assert_grid_fits(grid) -> None:
    """The data grid scrolls neither way inside the page, and lies within the window's width."""
    sizes = grid.evaluate(
        "grid => { const s = grid.querySelector('.dvn-scroller');"
        " return [s.scrollHeight, s.clientHeight, s.scrollWidth, s.clientWidth] }"
    )
    assert sizes[0] <= sizes[1] + 1 and sizes[2] <= sizes[3] + 1, sizes  # no scrollbar inside it
    box = grid.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= WINDOW["width"], box


def click_worklist_row(page, name: str) -> None:
    """Ticks the box at the left of the row that shows ``name`` (the grid is drawn on a canvas; its
    accessible table says which row is where)."""
    grid = page.locator("[data-testid=stDataFrame]")
    row = int(grid.locator("table[role=grid] tr", has_text=name).get_attribute("aria-rowindex"))  # the header is 1
    rows = int(grid.locator("table[role=grid]").get_attribute("aria-rowcount")) - 1
    height = grid.evaluate("grid => grid.querySelector('.dvn-scroller').clientHeight")
    header = height - 50 * rows  # the page draws rows 50 px high
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 16, box["y"] + header + 50 * (row - 2) + 25)


BROWSER_WORKLIST = ("person10_virus_35.jpeg", "person153_bacteria_726.jpeg", "IM-0001-0001.jpeg")


def test_a_worklist_row_opens_its_image_on_review(page):
    from playwright.sync_api import expect

    paths = [SAMPLES_DIR / name for name in BROWSER_WORKLIST]
    expected = {path.name: cli_prediction(path) for path in paths}
    (borderline,) = [name for name, result in expected.items() if result["grey_zone"]]
    open_page(page, "Worklist")
    page.locator("input[type=file][multiple]").set_input_files([str(path) for path in paths])
    grid = page.locator("[data-testid=stDataFrame]")
    expect(grid.locator("table[role=grid]")).to_have_attribute("aria-rowcount", "4")
    assert_grid_fits(grid)

    click_worklist_row(page, borderline)
    expect(page.get_by_text("Indeterminate: needs a careful read")).to_be_visible()
    expect(page.get_by_test_id("stSidebar").get_by_text(borderline)).to_be_visible()  # now the chosen image
    page.get_by_role("button", name="Review", exact=True).click()
    expect(page).to_have_url(re.compile(r"^[^#]*:\d+/?(\?.*)?$"))  # the app's root: Review
    expect(page.get_by_test_id("stImage").filter(has_text=borderline)).to_be_visible()
    main = page.get_by_test_id("stMain")
    expect(main).to_contain_text(f"{expected[borderline]['probability']:.3f}")
    expect(main).to_contain_text(expected[borderline]["label"].capitalize())
    expect(page.get_by_test_id("stException")).to_have_count(0)


def test_the_trail_shows_a_worklist_verdict_note_and_reviewer_inside_the_window_in_the_readers_zone(browser, app_url):
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    from playwright.sync_api import expect

    context = browser.new_context(viewport=WINDOW, timezone_id="Europe/Berlin")
    tab = context.new_page()
    tab.set_default_timeout(SLOW_MS)
    outside: list[str] = []
    tab.on("request", lambda request: None if request.url.startswith(app_url) else outside.append(request.url))
    try:
        tab.goto(app_url)
        open_page(tab, "Worklist")
        tab.locator("input[type=file][multiple]").set_input_files([str(SAMPLES_DIR / BROWSER_WORKLIST[1])])
        click_worklist_row(tab, BROWSER_WORKLIST[1])
        tab.get_by_test_id("stRadioGroup").get_by_text("disagree", exact=True).click()
        tab.get_by_role("textbox", name="Note (optional)").fill("ZZNOTE right lower lobe")
        tab.get_by_role("textbox", name="Reviewer (optional)").fill("Dr ZZ Berlin")
        tab.get_by_role("button", name="Record verdict").click()
        expect(tab.get_by_text("Verdict disagree recorded")).to_be_visible()
        now = datetime.now(ZoneInfo("Europe/Berlin"))

        open_page(tab, "Audit trail")
        expect(tab.get_by_text("your browser's time zone (Europe/Berlin)")).to_be_visible()
        grid = tab.locator("[data-testid=stDataFrame]")
        expect(grid).to_be_visible()
        expect(grid.locator("table[role=grid] th", has_text="reviewer")).to_have_count(1)
        headers = grid.locator("table[role=grid] th").evaluate_all("cells => cells.map(cell => cell.textContent.trim())")
        assert [name for name in headers if name in ("verdict", "note", "reviewer")] == ["verdict", "note", "reviewer"]
        assert "time (Europe/Berlin)" in headers
        assert_grid_fits(grid)  # every column, verdict, note and reviewer too, inside the window's width
        first = grid.locator("table[role=grid] tr").nth(1).evaluate("row => row.textContent")  # newest first
        assert "ZZNOTE right lower lobe" in first and "Dr ZZ Berlin" in first and "disagree" in first
        minutes = {(now + timedelta(minutes=step)).strftime("%Y-%m-%d %H:%M") for step in (-1, 0, 1)}
        assert any(minute in first for minute in minutes), (first, minutes)
        assert not re.search(r"\d\d:\d\d:\d\d", first)  # to the minute
        assert "audit.sqlite3" not in tab.get_by_test_id("stMain").inner_text()  # no server path
    finally:
        context.close()
    assert outside == [], f"requests that left the app's localhost server: {outside}"


def test_review_draws_the_bar_says_indeterminate_in_amber_and_downloads_a_one_page_report(browser, tmp_path):
    # A server of its own: nothing is cached yet, so both slow steps must show their busy notes.
    from playwright.sync_api import expect

    from test_review import GREY_ABOVE, pdf_pages, pdf_text
    from pneumo_model.case_report import SHA_PREFIX_DIGITS
    from pneumo_model.paths import bytes_sha256
    from pneumo_model.presentation import BAR_AXIS_NOTE, INDETERMINATE
    from ui.call_view import REPORT_BUSY, REPORT_LABEL

    busy_notes = ("Reading and scoring the image", REPORT_BUSY)
    context = browser.new_context(viewport=WINDOW, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(SLOW_MS)
    try:
        with streamlit_app(tmp_path / "streamlit.log", audit_db=tmp_path / "audit.sqlite3") as url:
            tab.goto(url)
            expect(tab.get_by_role("button", name=f"data set label: bacterial pneumonia · {Path(GREY_ABOVE).stem}")).to_be_visible()
            # Every text that is ever on the page, however briefly: a note shown for a second is seen.
            tab.evaluate(
                """notes => { window.seenNotes = new Set();
                   new MutationObserver(() => { for (const note of notes)
                       if (document.body.innerText.includes(note)) window.seenNotes.add(note); })
                   .observe(document.body, {childList: true, subtree: true, characterData: true}); }""",
                list(busy_notes),
            )
            tab.get_by_role("button", name=f"data set label: bacterial pneumonia · {Path(GREY_ABOVE).stem}").click()

            heading = tab.get_by_role("heading", name="Call: Pneumonia · indeterminate")
            expect(heading).to_be_visible()
            bar = tab.locator(".st-key-probability_bar img")
            expect(bar).to_be_visible()
            tab.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=bar.element_handle())
            amber = tab.get_by_test_id("stAlertContentWarning").filter(has_text=INDETERMINATE)
            expect(amber).to_be_visible()
            expect(amber).to_contain_text("read this film carefully")
            expect(tab.get_by_test_id("stCaptionContainer").filter(has_text=BAR_AXIS_NOTE[:40])).to_be_visible()
            expect(tab.get_by_test_id("stAlertContentSuccess")).to_have_count(0)  # no green for any call
            for locator in (heading, bar, amber):
                assert_in_first_screen(locator)  # at 1366 x 768, without scrolling

            button = tab.get_by_role("button", name=REPORT_LABEL)
            expect(button).to_be_visible()
            seen = set(tab.evaluate("() => [...window.seenNotes]"))
            # The report's note always shows; scoring a demo film on ONNX Runtime can end before
            # Streamlit's spinner delay, so its note shows only when the scoring is slow.
            assert REPORT_BUSY in seen and seen <= set(busy_notes)
            with tab.expect_download() as download:
                button.click()
            report = Path(download.value.path()).read_bytes()
            digest = bytes_sha256((SAMPLES_DIR / GREY_ABOVE).read_bytes())
            assert download.value.suggested_filename == f"case_report_{digest[:SHA_PREFIX_DIGITS]}.pdf"
            assert report.startswith(b"%PDF") and pdf_pages(report) == 1
            assert digest[:SHA_PREFIX_DIGITS] in pdf_text(report)
            assert Path(GREY_ABOVE).stem.encode() not in report and Path(GREY_ABOVE).stem not in pdf_text(report)
    finally:
        context.close()


def test_explain_draws_the_grad_cam_colour_bar_on_the_fixed_scale(page):
    """The heat map's colour bar is drawn in the real browser under the Grad-CAM of a pneumonia demo
    (its map is strong enough to be drawn), with the scale's meaning beside it."""
    from playwright.sync_api import expect

    from pneumo_model.explain import GRADCAM_BAR_WORDS

    page.get_by_test_id("stSidebar").get_by_role("button", name=re.compile("person10_virus_35")).click()
    open_page(page, "Explain")
    caption = page.get_by_text(GRADCAM_BAR_WORDS.split(":")[0]).first
    expect(caption).to_be_visible()
    pictures = page.get_by_test_id("stImage").locator("img")
    expect(pictures.first).to_be_visible()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=stImage] img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    # The Grad-CAM picture carries its bar below the map: taller than the original film's picture.
    heights = [box["height"] / box["width"] for box in (picture.bounding_box() for picture in pictures.all()) if box]
    assert len(heights) >= 2 and max(heights) > min(heights) * 1.1, heights
