"""Screenshots of every app page at 1366 x 768 into docs/screenshots/ (needs /usr/bin/chromium and playwright).

Usage: ``.venv/bin/python -m tools.screenshots [--only NAME...]``. It starts the app on a free port,
shows the borderline demo image on Review, loads another demo image, runs LIME once, records a
verdict, rescores a full-size original on the Crop page with the crop and its burned-in markers
painted out, uploads an inverted X-ray (the out-of-distribution message), fills the worklist with the demo images, that inverted X-ray and one unreadable file,
fits a site profile on a zip of test-split films (when ../shared/data is there), and saves one
PNG per page (the Site calibration page whole, not only its first screen). With a subtype pattern
model beside the shipped one, a second server (PNEUMO_SUBTYPE=1) shows Review with a viral-like,
a bacterial-like and an undetermined film and a normal call (``--only review_pattern_viral ...``
runs that part alone).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from playwright.sync_api import Page, expect, sync_playwright

from pneumo_model.data import DEFAULT_DATA_DIR
from tools.app_server import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, WINDOW, streamlit_app

SCREENSHOTS_DIR = REPO_ROOT / "docs" / "screenshots"
SAMPLES_DIR = REPO_ROOT / "assets" / "samples"
SLOW_MS = 180_000


def open_page(page: Page, title: str) -> None:
    """Clicks a page in the sidebar navigation (a full reload would start a new session), once the
    current run is over (a click during a run's last rerun can be lost), and waits for its title."""
    wait_until_idle(page)
    page.get_by_test_id("stSidebar").get_by_role("link", name=title, exact=True).click()
    expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible(timeout=SLOW_MS)


def wait_until_idle(page: Page) -> None:
    """Waits for the script run to finish (the 'running' status widget disappears)."""
    page.wait_for_timeout(300)
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=SLOW_MS)


# Review with the subtype pattern on (PNEUMO_SUBTYPE=1), one film per pattern and a normal call.
PATTERN_SHOTS = {
    "viral-like": "review_pattern_viral",
    "bacterial-like": "review_pattern_bacterial",
    "undetermined": "review_pattern_undetermined",
    "normal": "review_pattern_normal",
}
SHOTS = (
    "review", "explain", "crop", "review_ood", "worklist", "trail", "model_card", "site_calibration", "site_label_free",
    *PATTERN_SHOTS.values(),
)
# The screenshots this run saves (``--only``); the others are left as they are in docs/screenshots.
WANTED: set[str] = set(SHOTS)


def take(page: Page, name: str, folder: Path, full_page: bool = False) -> None:
    """A screenshot of the first screen, or with ``full_page`` of the whole page at the same width."""
    if name not in WANTED:
        return
    wait_until_idle(page)
    page.mouse.move(0, 0)
    if full_page:
        # Streamlit scrolls its main section, not the document, so the window is made as tall as it.
        height = page.get_by_test_id("stMain").evaluate("main => main.scrollHeight")
        page.set_viewport_size({"width": WINDOW["width"], "height": max(WINDOW["height"], height)})
    page.wait_for_timeout(2500)  # let images and the data grid finish drawing
    page.screenshot(path=str(folder / f"{name}.png"))
    page.set_viewport_size(WINDOW)


def site_sample(scratch: Path, data_dir: Path = DEFAULT_DATA_DIR) -> Path | None:
    """A labelled zip of every third test-split film of each class (78 normal, 130 pneumonia: the
    split's prevalence), or None without the data. The test split may play a new site
    (../shared/data/README.md), and each such use is logged in reports/test_evaluations.jsonl."""
    folders = [data_dir / "test" / label for label in ("NORMAL", "PNEUMONIA")]
    if not all(folder.is_dir() for folder in folders):
        return None
    from pneumo_model.artifacts import read_metadata
    from pneumo_model.lab.evaluation import DEFAULT_REPORTS_DIR, record_test_use
    from pneumo_model.paths import DEFAULT_MODEL_PATH

    record_test_use(DEFAULT_REPORTS_DIR, read_metadata(DEFAULT_MODEL_PATH).model_sha256, "test")
    path = scratch / "local_sample.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for folder in folders:
            for image in sorted(folder.glob("*.jpeg"))[::3]:
                archive.write(image, f"local_sample/{folder.name}/{image.name}")
    return path


def site_calibration(page: Page, scratch: Path, folder: Path) -> None:
    """The Site calibration page with a profile fitted on ``site_sample``, the whole page."""
    open_page(page, "Site calibration")
    sample = site_sample(scratch)
    if sample is None:
        print(f"No {DEFAULT_DATA_DIR}: the Site calibration screenshot is left as it is.")
        return
    expect(page.get_by_text("Upload a labelled sample")).to_be_visible(timeout=SLOW_MS)
    page.get_by_test_id("stMain").locator("input[type=file]").set_input_files(str(sample))
    expect(page.get_by_text("Download the site profile")).to_be_visible(timeout=SLOW_MS)
    take(page, "site_calibration", folder, full_page=True)


def site_label_free(page: Page, folder: Path, data_dir: Path = DEFAULT_DATA_DIR) -> None:
    """The Site calibration page's "Without labels" part aligned on 250 unlabelled training films
    (95 normal, 155 pneumonia; a picture only, never a figure), the whole page."""
    films = sorted((data_dir / "train" / "NORMAL").glob("*.jpeg"))[:95] + sorted((data_dir / "train" / "PNEUMONIA").glob("*.jpeg"))[:155]
    if len(films) < 250:
        print(f"No {data_dir}: the label-free screenshot is left as it is.")
        return
    open_page(page, "Site calibration")
    expect(page.get_by_text("Nothing on this page changes how the app calls films")).to_be_visible(timeout=SLOW_MS)
    page.get_by_test_id("stMain").get_by_text("Without labels (provisional)").click()
    expect(page.get_by_text("Upload unlabelled films", exact=True)).to_be_visible(timeout=SLOW_MS)
    page.get_by_test_id("stMain").get_by_text("Upload unlabelled films", exact=True).click()
    expect(page.get_by_text("Unlabelled films (")).to_be_visible(timeout=SLOW_MS)
    page.get_by_test_id("stMain").locator("input[type=file]").set_input_files([str(film) for film in films])
    expect(page.get_by_text("Download the label-free profile (JSON)").or_(page.get_by_text("Not aligned")).first).to_be_visible(timeout=SLOW_MS)
    take(page, "site_label_free", folder, full_page=True)


# A full-size original (a training image: for screenshots only, never for figures) with burned-in
# text and a letter R, whose call is indeterminate whole and moves with the crop and the masking.
CROP_ORIGINAL = DEFAULT_DATA_DIR.parent / "chest_xray_fullres_sample" / "train" / "PNEUMONIA" / "person1227_virus_2078.jpeg"


def crop_page(page: Page, folder: Path) -> None:
    """The Crop & rescore page with the diaphragm crop and the burned-in markers painted out, on
    ``CROP_ORIGINAL`` uploaded on Review (without the data: on the demo image already chosen)."""
    if CROP_ORIGINAL.is_file():
        open_page(page, "Review")
        page.locator("input[type=file]").first.set_input_files(str(CROP_ORIGINAL))
        # The demo's call is still on screen: wait until the sidebar names the upload as the chosen image.
        sidebar = page.get_by_test_id("stSidebar")
        expect(sidebar.get_by_text(CROP_ORIGINAL.name)).to_be_visible(timeout=SLOW_MS)
    else:
        print(f"No {CROP_ORIGINAL}: the Crop & rescore screenshot shows the demo image, which has no marker.")
    open_page(page, "Crop & rescore")
    expect(page.get_by_text("Rescore the image with")).to_be_visible(timeout=SLOW_MS)
    page.get_by_text("Crop and paint out markers", exact=True).click()
    # The page's last words (the status widget is not a sure sign that the numbers are drawn).
    last_words = "found automatically and filled in" if CROP_ORIGINAL.is_file() else "Probability of pneumonia"
    expect(page.get_by_text(last_words).first).to_be_visible(timeout=SLOW_MS)
    take(page, "crop", folder)


# The demo the Review screenshot shows: a borderline one (pneumonia just above the threshold, in
# the grey zone), so the picture shows the bar, the amber message and the case report's button.
REVIEW_DEMO = "data set label: bacterial pneumonia · person153_bacteria_726"


def review(page: Page, folder: Path) -> None:
    """The Review page with ``REVIEW_DEMO``, once its case report can be downloaded."""
    page.get_by_role("button", name=REVIEW_DEMO).click()
    expect(page.get_by_role("button", name="Download the case report (PDF)")).to_be_visible(timeout=SLOW_MS)
    page.get_by_test_id("stSidebarContent").evaluate("sidebar => sidebar.scrollTo(0, 0)")  # the click scrolled it
    take(page, "review", folder)

# The demo image the shipped model calls pneumonia inside its grey zone: the worklist's row to open.
WORKLIST_CASE = "person153_bacteria_726.jpeg"


def worklist_case(page: Page, name: str) -> None:
    """Opens the worklist row of ``name`` (ticks its box: the grid is a canvas, its accessible table
    says where the row is) and records a verdict on it with a note and a reviewer, for the trail."""
    grid = page.get_by_test_id("stDataFrame")
    row = int(grid.locator("table[role=grid] tr", has_text=name).get_attribute("aria-rowindex"))  # the header is 1
    rows = int(grid.locator("table[role=grid]").get_attribute("aria-rowcount")) - 1
    header = grid.evaluate("grid => grid.querySelector('.dvn-scroller').clientHeight") - 50 * rows
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 16, box["y"] + header + 50 * (row - 2) + 25)
    expect(page.get_by_role("button", name="Record verdict")).to_be_visible(timeout=SLOW_MS)
    page.get_by_test_id("stRadioGroup").get_by_text("agree", exact=True).click()
    page.get_by_role("textbox", name="Note (optional)").fill("patchy right lower zone; clinical correlation")
    page.get_by_role("textbox", name="Reviewer (optional)").fill("Dr A. Reader")
    page.get_by_role("button", name="Record verdict").click()
    expect(page.get_by_text("Verdict agree recorded")).to_be_visible(timeout=SLOW_MS)


# Explain shows a pneumonia demo: its map on the fixed scale, the colour bar and LIME (a normal demo's
# weak map is not drawn, and the page says so).
EXPLAIN_DEMO = "data set label: viral pneumonia · person10_virus_35"


def explain_page(page: Page, folder: Path) -> None:
    """The Explain page on ``EXPLAIN_DEMO`` with Grad-CAM and LIME at the default settings."""
    open_page(page, "Explain")
    page.get_by_test_id("stSidebar").get_by_role("button", name=EXPLAIN_DEMO).click()
    expect(page.get_by_text("Grad-CAM: shows where the model looked").first).to_be_visible(timeout=SLOW_MS)
    wait_until_idle(page)
    page.get_by_role("button", name="Run LIME").click()
    # The picture's caption, not the busy note "Running LIME (1000 samples)...", which comes first.
    expect(page.get_by_text("LIME (1000 samples, 50 superpixels)").first).to_be_visible(timeout=SLOW_MS)
    take(page, "explain", folder)


def pattern_films(data_dir: Path = DEFAULT_DATA_DIR, searched: int = 80) -> dict[str, Path]:
    """One film per pattern, each called pneumonia outside the grey zone (so the picture shows the
    pattern, not the indeterminate call), and a confident normal call: the demo images first, then
    the training split's first ``searched`` pneumonia films (for screenshots only, never a figure)."""
    from pneumo_model.prediction import Predictor

    predictor = Predictor.from_file(subtype=True)
    candidates = [*sorted(SAMPLES_DIR.glob("*.jpeg")), *sorted((data_dir / "train" / "PNEUMONIA").glob("*.jpeg"))[:searched]]
    found: dict[str, Path] = {}
    for path in candidates:
        call = predictor.predict_source(path.read_bytes())
        kind = call.subtype if call.subtype is not None else "normal" if call.label == "normal" else None
        if kind is not None and not call.grey_zone and not call.ood and kind not in found:
            found[kind] = path
        if len(found) == len(PATTERN_SHOTS):
            break
    return found


def review_patterns(browser, scratch: Path, folder: Path) -> None:
    """Review with the subtype pattern on, the whole page (the pattern is under the call, below the
    first screen): each film of ``pattern_films`` uploaded, on a server of its own started with
    PNEUMO_SUBTYPE=1."""
    import os
    from unittest import mock

    from pneumo_model.bundle import subtype_model_path
    from pneumo_model.paths import DEFAULT_MODEL_PATH

    if not WANTED & set(PATTERN_SHOTS.values()):
        return
    if not subtype_model_path(DEFAULT_MODEL_PATH).is_file():
        print("No subtype pattern model beside the shipped model: the pattern screenshots are left as they are.")
        return
    films = pattern_films()
    logs = (scratch / "streamlit_pattern.log", scratch / "audit_pattern.sqlite3")
    # The server's environment is this process's, copied when it starts.
    with mock.patch.dict(os.environ, {"PNEUMO_SUBTYPE": "1"}), streamlit_app(*logs) as url:
        page = browser.new_page(viewport=WINDOW)
        page.goto(url)
        for kind, name in PATTERN_SHOTS.items():
            if kind not in films:
                print(f"No {kind} film among the demo images and the training films searched: {name} is left as it is.")
                continue
            page.locator("input[type=file]").first.set_input_files(str(films[kind]))
            expect(page.get_by_test_id("stSidebar").get_by_text(films[kind].name)).to_be_visible(timeout=SLOW_MS)
            shown = page.locator(".st-key-review_pattern") if kind != "normal" else page.get_by_text("Pattern: not applicable")
            expect(shown).to_be_visible(timeout=SLOW_MS)
            take(page, name, folder, full_page=True)  # the pattern is under the call, below the first screen
            print(f"{name}: {films[kind].name}")
        page.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SCREENSHOTS_DIR)
    parser.add_argument("--only", nargs="+", choices=SHOTS, help="save only these screenshots")
    args = parser.parse_args()
    if args.only:
        WANTED.intersection_update(args.only)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if WANTED <= set(PATTERN_SHOTS.values()):  # the pattern's alone: its own server, no other page's steps
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
                review_patterns(browser, scratch, args.out)
                browser.close()
            print(f"Screenshots in {args.out}")
            return
        bad_file = scratch / "not-an-xray.png"
        bad_file.write_text("this is a text file, not an image")
        inverted = scratch / "inverted-film.png"
        grey = np.asarray(Image.open(SAMPLES_DIR / "IM-0001-0001.jpeg").convert("L"))
        buffer = io.BytesIO()
        Image.fromarray(255 - grey).save(buffer, format="PNG")
        inverted.write_bytes(buffer.getvalue())
        worklist_files = [*sorted(SAMPLES_DIR.glob("*.jpeg")), inverted, bad_file]
        with streamlit_app(scratch / "streamlit.log", audit_db=scratch / "audit.sqlite3") as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=WINDOW, timezone_id="Europe/Berlin")  # the trail's times are the reader's
            page.goto(url)
            review(page, args.out)
            page.get_by_role("button", name="data set label: normal · IM-0003-0001").click()
            # The previous demo's result stays whole on screen until the new run replaces it: wait for this film's.
            expect(page.get_by_test_id("stImageCaption").get_by_text("IM-0003-0001.jpeg (demo image")).to_be_visible(timeout=SLOW_MS)
            wait_until_idle(page)
            page.get_by_test_id("stRadioGroup").get_by_text("agree", exact=True).click()
            page.get_by_role("button", name="Record verdict").click()
            expect(page.get_by_text("Verdict agree recorded")).to_be_visible(timeout=SLOW_MS)

            explain_page(page, args.out)

            crop_page(page, args.out)

            open_page(page, "Review")
            page.locator("input[type=file]").first.set_input_files(str(inverted))
            expect(page.get_by_text("does not look like a frontal chest X-ray")).to_be_visible(timeout=SLOW_MS)
            take(page, "review_ood", args.out)

            open_page(page, "Worklist")
            page.locator("input[type=file][multiple]").set_input_files([str(path) for path in worklist_files])
            expect(page.get_by_text("could not be read")).to_be_visible(timeout=SLOW_MS)
            worklist_case(page, WORKLIST_CASE)
            take(page, "worklist", args.out, full_page=True)

            open_page(page, "Audit trail")
            expect(page.get_by_text("Results recorded")).to_be_visible(timeout=SLOW_MS)
            take(page, "trail", args.out)

            open_page(page, "Model card")  # its first screen: intended use, headline figures, limitations
            expect(page.get_by_test_id("stTable").filter(has_text="Kermany 2018")).to_be_visible(timeout=SLOW_MS)
            take(page, "model_card", args.out)

            if "site_label_free" in WANTED:
                site_label_free(page, args.out)
            if "site_calibration" in WANTED:  # it logs a test-split use: only when asked for
                site_calibration(page, scratch, args.out)
            review_patterns(browser, scratch, args.out)
            browser.close()
    print(f"Screenshots in {args.out}")


if __name__ == "__main__":
    main()
