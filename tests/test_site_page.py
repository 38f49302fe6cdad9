"""The Site calibration page run headless with AppTest: the layouts it accepts, each refusal as a
plain message, the fitted profile's out-of-fold figures, a download that is a valid profile, a
labelled sample scored once whatever the sliders do, decodes within the app's slots; and the
upload limit (a zip may be large, a single image still may not)."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import threading
import tomllib
import zipfile

import numpy as np
import pytest
from helpers import encode
from PIL import Image
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from pneumo_model import site
from pneumo_model.artifacts import REPO_ROOT
from pneumo_model.data import DEFAULT_DATA_DIR
from pneumo_model.preprocessing import ImageLimits
from ui import reports, resources, site_page, state

pytestmark = pytest.mark.shipped_model

APP = REPO_ROOT / "app.py"
PAGE = "pages/site.py"
TIMEOUT = 180
NORMAL_SAMPLES = ("IM-0001-0001", "IM-0003-0001", "NORMAL2-IM-0012-0001", "NORMAL2-IM-0019-0001")
PNEUMONIA_SAMPLES = ("person100_bacteria_475", "person100_bacteria_478", "person10_virus_35", "person11_virus_38", "person153_bacteria_726")
# The shipped model scores these two near each other (about 0.13 and 0.25); a few variants of each
# under the other label make the classes overlap, as at a real site, so the fit is not degenerate.
LOOKS_PNEUMONIA, LOOKS_NORMAL = "person153_bacteria_726", "NORMAL2-IM-0019-0001"


def variant(stem: str, index: int) -> bytes:
    """A demo image with seeded noise of a few grey levels: another file, the same film to the model."""
    grey = np.asarray(Image.open(state.SAMPLES_DIR / f"{stem}.jpeg").convert("L"), dtype=np.int16)  # (224, 224)
    noise = np.random.default_rng([index, len(stem)]).integers(-3, 4, grey.shape)
    return encode(np.clip(grey + noise, 0, 255).astype(np.uint8))


def labelled_images(normal: int = 24, pneumonia: int = 26) -> list[tuple[str, str, bytes]]:
    """``(label, file name, bytes)``: distinct variants of the demo images, every sixth of the other class's look."""
    images = []
    for label, count, stems, other in (
        ("normal", normal, NORMAL_SAMPLES, LOOKS_PNEUMONIA),
        ("pneumonia", pneumonia, PNEUMONIA_SAMPLES, LOOKS_NORMAL),
    ):
        for index in range(count):
            stem = other if index % 6 == 5 else stems[index % len(stems)]
            images.append((label, f"{label}_{index:03d}_{stem}.png", variant(stem, index + (1000 if label == "pneumonia" else 0))))
    return images


def folder_zip(images, root: str = "site") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, name, data in images:
            archive.writestr(f"{root}/{label.upper()}/{name}", data)
    return buffer.getvalue()


def labels_csv(rows) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["file", "label"])
    writer.writerows(rows)
    return text.getvalue().encode()


def csv_zip(images) -> bytes:
    """A zip with ``export/labels.csv`` naming ``export/films/<name>``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("export/labels.csv", labels_csv([(f"films/{name}", label) for label, name, _ in images]))
        for _, name, data in images:
            archive.writestr(f"export/films/{name}", data)
    return buffer.getvalue()


def texts(elements) -> str:
    """What the elements show, Markdown escapes and ``ui.markup.plain``'s word joiners removed."""
    import re

    return re.sub(r"\\(.)", r"\1", "\n".join(str(element.value) for element in elements).replace("\u2060", ""))


def open_site() -> AppTest:
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    app.switch_page(PAGE).run()
    assert not app.exception, app.exception
    return app


def upload_zip(app: AppTest, data: bytes, name: str = "sample.zip") -> AppTest:
    app.file_uploader(key="site_zip").set_value((name, data, "application/zip"))
    app.run()
    assert not app.exception, app.exception
    return app


def upload_csv_and_images(app: AppTest, csv_data: bytes, images) -> AppTest:
    app.radio(key="site_packing").set_value("Images plus a labels CSV").run()
    app.file_uploader(key="site_csv").set_value(("labels.csv", csv_data, "text/csv"))
    app.file_uploader(key="site_images").set_value([(name, data, "image/png") for _, name, data in images])
    app.run()
    assert not app.exception, app.exception
    return app


def metrics(app: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in app.metric}


@pytest.fixture
def downloads(monkeypatch) -> dict[str, bytes]:
    """What each download button of a run would hand the browser, by file name."""
    saved: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def keep(self, path_or_data, mimetype, kind, filename=None):
        if filename is not None:
            saved[filename] = path_or_data
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", keep)
    return saved


@pytest.fixture
def scorings(monkeypatch) -> list[int]:
    """The size of each labelled sample the page has scored."""
    calls: list[int] = []
    original = site.score_sample

    def counted(predictor, files, *args, **kwargs):
        calls.append(len(files))
        return original(predictor, files, *args, **kwargs)

    monkeypatch.setattr(site, "score_sample", counted)
    return calls


@pytest.fixture(scope="module")
def images():
    return labelled_images()


def test_the_page_says_what_it_accepts_and_what_is_active_before_any_upload():
    app = open_site()
    shown = texts(app.markdown)
    for layout in ("NORMAL/", "PNEUMONIA/", "labels.csv", "file,label", "the images themselves plus a", "50 MB", "At least 20"):
        assert layout in shown, layout
    active = resources.predictor().operating_point
    assert "Nothing on this page changes how the app calls films" in texts(app.info)
    assert active.description in texts(app.info) and active.short_id in texts(app.info)
    assert "Upload a labelled sample" in texts(app.info)
    assert not app.error and not app.get("download_button")


def test_a_zip_of_folders_gives_the_profile_the_package_fits_with_out_of_fold_figures(images, downloads):
    data = folder_zip(images)
    app = upload_zip(open_site(), data)
    assert not app.error, texts(app.error)
    predictor = resources.predictor()
    # One file a batch, as the page scores (batches change the logits by float32 round-off, and a
    # profile's id is a hash of exact numbers).
    expected = site.fit_profile(site.score_sample(predictor, site.read_labelled_zip(data)), 0.97)  # as site fit scores

    numbers = metrics(app)
    assert numbers["Normal images used"] == "24" and numbers["Pneumonia images used"] == "26"
    assert numbers["Threshold"] == site_page.probability(expected.threshold)
    low, high = (site_page.probability(edge) for edge in expected.grey_zone)
    assert numbers["Grey zone"] == f"[{low}, {high})"
    shown = texts(app.markdown)
    assert "out of fold" in shown
    for line in site_page.uncertainty_lines(expected):
        assert line in shown, line
    assert "24 local normal images: specificity known to about ±" in shown
    from ui import reports

    coverage = reports.stated_coverage_line(reports.read_json("site_calibration"))
    assert coverage is not None and "held the figure" in coverage and coverage in texts(app.caption)
    figures = app.table[0].value
    stated = figures["Fitted profile, out of fold"]
    assert list(stated) == [site_page.stated(expected.figures[key]) for key in site_page.FIGURE_NAMES]
    assert "26/26" in stated.iloc[0] or f"/{expected.n_pneumonia}" in stated.iloc[0]
    # Few images of each class: the package's warnings, shown.
    assert "Only 24 normal images" in texts(app.warning) and "Only 26 pneumonia images" in texts(app.warning)
    assert len(app.image) >= 2  # the ROC and the explorer's curves

    (name,) = [name for name in downloads if name.startswith("site_profile_")]
    profile = site.SiteProfile.from_dict(json.loads(downloads[name]))  # refuses an altered or foreign file
    assert name == f"site_profile_{profile.id[:8]}.json"
    assert profile.model_sha256 == predictor.metadata.model_sha256
    assert profile.id == expected.id and profile.threshold == expected.threshold
    assert profile.operating_point().threshold == profile.threshold
    assert predictor.operating_point.id != profile.id  # downloading activated nothing
    assert "PNEUMO_SITE=/path/to/" + name in texts(app.info)


def explorer_table_of(app: AppTest):
    (table,) = [frame.value for frame in app.dataframe if "target" in frame.value.columns]
    return table


def test_the_fitted_threshold_and_the_table_s_row_for_its_target_are_one_number_on_one_axis(images):
    app = upload_zip(open_site(), folder_zip(images))
    predictor = resources.predictor()
    sample = site.score_sample(predictor, site.read_labelled_zip(folder_zip(images)))
    profile = site.fit_profile(sample, 0.97)
    table = explorer_table_of(app)
    assert list(table["target"]) == sorted({*site_page.TABLE_TARGETS, 0.97})
    (fitted,) = table[table["fitted"]].itertuples()
    assert fitted.target == 0.97 and fitted.threshold == profile.threshold  # the same rule, the same scale
    assert metrics(app)["Threshold"] == site_page.probability(fitted.threshold)
    assert fitted.grey_zone == metrics(app)["Grey zone"]
    # Target and achieved are two columns: the target is what was asked, the sensitivity what the sample gives.
    p = profile.operating_point().probabilities(sample.raw_logits)
    assert fitted.sensitivity == (p[sample.labels == 1] >= profile.threshold).mean()
    assert not any("≥" in str(value) for value in table.to_numpy().ravel())
    # The page names its axis and converts the active threshold onto it, and the fitted one back.
    shown = texts(app.markdown)
    assert site_page.axis_line(profile, predictor.operating_point) in shown
    assert f"on {site_page.AXIS}" in texts(app.caption)
    on_axis = site.translate(predictor.operating_point.threshold, predictor.operating_point, site_page.calibration_of(profile))
    today = site.translate(profile.threshold, site_page.calibration_of(profile), predictor.operating_point)
    assert f"the active threshold {predictor.operating_point.threshold:.3f} is {on_axis:.3f} on this axis" in shown
    assert f"the fitted threshold {profile.threshold:.3f} stands for the same films as a probability of {today:.3f}" in shown
    # The small sample's cost, in words and numbers from the package.
    cost = site.small_sample_cost(sample.raw_logits, sample.labels, site_page.calibration_of(profile), 0.97)
    assert f"The grey zone and the sample's size ({sample.n_normal + sample.n_pneumonia} films)" in shown
    assert f"From {cost.next_rank_at} pneumonia films it would rest on the 2nd lowest" in shown
    assert f"the rule promises {cost.promised_sensitivity:.3f}" in shown  # 26 films cannot promise 0.97
    simulated = reports.site_grey_zone_by_size(reports.read_json("site_calibration"))
    assert simulated and f"profiles fitted on {simulated[0]['size']} films put a median {site_page.percent(simulated[0]['median'])}" in shown


def test_each_row_of_the_table_counts_the_films_in_its_own_grey_zone(images):
    app = upload_zip(open_site(), folder_zip(images))
    sample = site.score_sample(resources.predictor(), site.read_labelled_zip(folder_zip(images)))
    p = site.fit_profile(sample, 0.97).operating_point().probabilities(sample.raw_logits)
    for row in explorer_table_of(app).itertuples():
        low, high = (float(edge) for edge in row.grey_zone.strip("[)").split(", "))
        # The band is shown to 3 decimals; the share is counted in the exact band.
        assert abs(row.grey_zone_share - ((p >= low) & (p < high)).mean()) <= 2 / p.size, row


def test_moving_the_target_refits_but_never_rescores_and_the_same_upload_again_is_not_rescored(images, scorings, downloads):
    data = folder_zip(images)
    app = upload_zip(open_site(), data)
    assert scorings == [50]
    first = [name for name in downloads if name.startswith("site_profile_")]
    app.select_slider(key="site_target").set_value(0.90).run()
    assert not app.exception and not app.error
    app.run()
    assert scorings == [50]
    profiles = {name for name in downloads if name.startswith("site_profile_")}
    assert len(profiles) == 2 and set(first) < profiles  # another target, another profile
    upload_zip(app, data, "again.zip")  # another upload, the same content
    assert scorings == [50]
    upload_zip(app, folder_zip(images[1:]))
    assert scorings == [50, 49]


def test_images_plus_a_csv_match_on_the_file_name_and_unlisted_images_are_named(images, downloads):
    rows = [(f"{label.upper()}/{name}", label) for label, name, _ in images]  # a folder before the name is ignored
    extra = ("normal", "not_in_the_csv.png", variant("IM-0001-0001", 999))
    app = upload_csv_and_images(open_site(), labels_csv(rows), [*images, extra])
    assert not app.error, texts(app.error)
    assert metrics(app)["Normal images used"] == "24"
    assert "not_in_the_csv.png" in texts(app.warning) and "not named in the CSV" in texts(app.warning)
    (name,) = [name for name in downloads if name.startswith("site_profile_")]
    site.SiteProfile.from_dict(json.loads(downloads[name]))


def test_a_zip_with_a_labels_csv_is_read_by_its_csv(images):
    app = upload_zip(open_site(), csv_zip(images))
    assert not app.error, texts(app.error)
    numbers = metrics(app)
    assert (numbers["Normal images used"], numbers["Pneumonia images used"]) == ("24", "26")


def too_few_normal():
    return folder_zip(labelled_images(normal=5, pneumonia=25))


def no_class_folders():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, name, data in labelled_images(normal=20, pneumonia=20):
            archive.writestr(f"films/{label}s/{name}", data)  # "normals", not NORMAL
    return buffer.getvalue()


def conflicting_duplicate():
    images = labelled_images()
    _, name, data = images[0]
    return folder_zip([*images, ("pneumonia", "copy_of_" + name, data)])


def image_over_the_limit():
    big = b"\x89PNG\r\n\x1a\n" + bytes(51 * 2**20)  # 51 MB: deflates to almost nothing
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for label, name, data in labelled_images():
            archive.writestr(f"{label.upper()}/{name}", data)
        archive.writestr("NORMAL/huge.png", big)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "make, expected",
    [
        pytest.param(too_few_normal, ["5 normal and 25 pneumonia images", "at least 20 of each class"], id="too-few"),
        pytest.param(no_class_folders, ["no files in NORMAL/ or PNEUMONIA/ folders, and no labels.csv"], id="no-folders"),
        pytest.param(
            conflicting_duplicate,
            [
                "cannot be used",
                (
                    "copy_of_normal_000_IM-0001-0001.png is labelled pneumonia but the same image is "
                    "site/NORMAL/normal_000_IM-0001-0001.png, labelled normal"
                ),
            ],
            id="duplicate-two-labels",
        ),
        pytest.param(image_over_the_limit, ["NORMAL/huge.png: The file is 51.0 MB, larger than the 50 MB limit"], id="image-over-50-MB"),
        pytest.param(lambda: b"PK not really a zip", ["not a readable zip archive"], id="not-a-zip"),
    ],
)
def test_a_refused_zip_gets_a_plain_message_and_no_profile(make, expected):
    app = upload_zip(open_site(), make())
    message = texts(app.error)
    for words in expected:
        assert words in message, message
    assert "Traceback" not in message
    assert "Threshold" not in metrics(app) and not app.get("download_button")


def test_a_csv_naming_a_missing_file_lists_every_problem_each_on_its_line(images):
    hostile = "**ZZ** [link](https:evil.example).png"
    rows = [(name, label) for label, name, _ in images] + [("missing.png", "normal"), (hostile, "pneumonia"), ("x.png", "sick")]
    app = upload_csv_and_images(open_site(), labels_csv(rows), images)
    (error,) = app.error
    raw = error.value
    assert "(3 problems)" in texts([error])
    assert f"row {len(images) + 2} (missing.png): no such file" in texts([error])
    assert "unknown label 'sick' (use normal or pneumonia)" in texts([error])
    assert hostile in texts([error]) and "[link](" not in raw  # the name is text, never a link
    assert raw.count("  \n") == 3  # the title, then one problem a line
    assert "Threshold" not in metrics(app)


def test_a_refusal_is_kept_for_its_upload_and_not_scored_again(scorings):
    app = upload_zip(open_site(), too_few_normal())
    app.run()
    assert scorings == [30]
    assert "at least 20 of each class" in texts(app.error)


def test_the_page_scores_one_decode_at_a_time_within_the_slots_and_gives_the_slot_back_on_an_interruption(images):
    held, most = [], []
    lock = threading.Lock()

    @contextlib.contextmanager
    def slot():
        with lock:
            held.append(1)
            most.append(len(held))
        try:
            yield
        finally:
            held.pop()

    files = site.read_labelled_zip(folder_zip(images))
    reports = []
    sample = site_page.score(resources.predictor(), files, lambda done, total: reports.append((done, total, len(held))), slot)
    assert sample.n_normal + sample.n_pneumonia == len(files)
    assert max(most) == 1 and len(most) == len(files) and held == []
    assert [done for done, _, _ in reports] == list(range(1, len(files) + 1))
    assert all(in_slot == 0 for _, _, in_slot in reports)  # given back before the page draws

    class Rerun(Exception):
        pass

    def interrupted(done, total):
        if done == 3:
            raise Rerun  # what Streamlit raises in a drawing call when the user reruns
    with pytest.raises(Rerun):
        site_page.score(resources.predictor(), files, interrupted, slot)
    assert held == []


def test_a_51_mb_image_is_refused_with_the_package_message_on_review_and_worklist_while_a_zip_may_be_larger():
    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text())
    limit_mb = ImageLimits().max_bytes // 2**20
    assert limit_mb == 50 and config["server"]["maxUploadSize"] >= 1024  # 300 full-size films fit in a zip
    big = b"\x89PNG\r\n\x1a\n" + bytes(51 * 2**20)
    message = "The file is 51.0 MB, larger than the 50 MB limit."

    review = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    review.file_uploader(key="review_upload").set_value(("big.png", big, "image/png"))
    review.run()
    assert not review.exception
    assert "big.png** cannot be used" in texts(review.error) and message in texts(review.error)
    assert not [m for m in review.metric if m.label.startswith("Probability")]

    review.switch_page("pages/worklist.py").run()
    review.file_uploader(key="worklist_upload").set_value([("big.png", big, "image/png")])
    review.run()
    assert not review.exception
    assert message in texts(review.error)
    assert metrics(review)["Unreadable"] == "1"


def test_the_small_sample_cost_reads_each_case_from_the_package_s_numbers():
    profile = site.fit_profile(site.ScoredSample(
        np.r_[np.linspace(-6, 1, 150), np.linspace(-1, 6, 150)], np.r_[np.zeros(150, int), np.ones(150, int)],
        tuple(f"{i:064x}" for i in range(300)), "a" * 64, files_in=300,
    ), 0.97, created_utc="2026-12-01T00:00:00+00:00")
    cost = site.SmallSampleCost(
        n_normal=150, n_pneumonia=150, target=0.97, rank=4, promised_sensitivity=1 - 4 / 151, next_rank_at=166,
        chow_band=(0.1, 0.9), grey_zone=(0.1, 0.93), widened_images=2, platt_targets=(1 / 152, 151 / 152),
    )
    by_size = [{"size": 100, "normal": 37, "pneumonia": 63, "median": 0.185, "p5": 0.137, "p95": 0.37},
               {"size": 300, "normal": 112, "pneumonia": 188, "median": 0.142, "p5": 0.114, "p95": 0.176}]
    lines = site_page.band_cost_lines(cost, profile, by_size)
    assert lines[0].startswith("Out of fold, the band [0.100, 0.930) held ")
    assert "**The threshold rests on your 4th lowest pneumonia film.**" in lines[1]
    assert "the rule then promises 0.974" in lines[1] and "From 166 pneumonia films it would rest on the 5th lowest" in lines[1]
    assert "its upper edge from 0.900 up to 0.930; 2 films of your sample lie in that stretch" in lines[2]
    assert "towards 0.007 and 0.993" in lines[3] and "with 112 normal and 188 pneumonia films it would aim at 0.009 and 0.995" in lines[3]
    assert "profiles fitted on 100 films put a median 18 % of the new films" in lines[4] and "on 300 films 14 % (11 %–18 %)" in lines[4]
    assert len(site_page.band_cost_lines(dataclasses.replace(cost, grey_zone=(0.1, 0.9)), profile, [])) == 4  # not stretched, no report
    assert "not stretched" in site_page.band_cost_lines(dataclasses.replace(cost, grey_zone=(0.1, 0.9)), profile, [])[2]


def validation_zip(per_class: int = 40) -> bytes:
    """``per_class`` films of each class drawn (seeded) from the shipped model's validation split: films
    the model was not trained on, and no test-split film (each test-split use must be logged)."""
    from pneumo_model.artifacts import DEFAULT_MODEL_PATH, read_metadata
    from pneumo_model.data import model_split

    validation = model_split(read_metadata(DEFAULT_MODEL_PATH), DEFAULT_DATA_DIR).validation
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, folder in ((0, "NORMAL"), (1, "PNEUMONIA")):
            films = [sample for sample in validation if sample.label == label]
            for index in rng.choice(len(films), per_class, replace=False):
                archive.write(films[index].path, f"{folder}/{films[index].path.name}")
    return buffer.getvalue()


@pytest.mark.data
def test_an_80_film_zip_shows_one_axis_and_a_grey_zone_share_per_row():
    """The issue's case: 80 real films, target 0.97. The table's row for the target is the profile's
    threshold, each row has its own band and share, and the shares differ where the bands do."""
    data = validation_zip()
    app = upload_zip(open_site(), data)
    assert not app.error, texts(app.error)
    profile = site.fit_profile(site.score_sample(resources.predictor(), site.read_labelled_zip(data)), 0.97)
    table = explorer_table_of(app)
    (fitted,) = table[table["fitted"]].itertuples()
    assert fitted.threshold == profile.threshold and metrics(app)["Threshold"] == site_page.probability(profile.threshold)
    by_band = table.groupby("grey_zone")["grey_zone_share"].nunique()
    assert len(by_band) >= 2 and (by_band == 1).all()  # one share per band
    assert table["grey_zone_share"].nunique() >= 2  # and the bands differ in the films they hold
    shown = texts(app.markdown)
    assert "**One axis.**" in shown and "The grey zone and the sample's size" in shown


@pytest.mark.data
def test_a_sample_of_real_films_gives_a_usable_profile(downloads):
    """60 + 60 real films from the train split: no figure is judged here, so the test split, whose
    every site-calibration use must be logged, is not touched by the suite."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label in ("NORMAL", "PNEUMONIA"):
            for path in sorted((DEFAULT_DATA_DIR / "train" / label).glob("*.jpeg"))[:60]:
                archive.write(path, f"{label}/{path.name}")
    app = upload_zip(open_site(), buffer.getvalue())
    assert not app.error, texts(app.error)
    numbers = metrics(app)
    assert int(numbers["Normal images used"]) + int(numbers["Excluded by the gate"]) + int(numbers["Duplicates counted once"]) >= 60
    (name,) = [name for name in downloads if name.startswith("site_profile_")]
    profile = site.SiteProfile.from_dict(json.loads(downloads[name]))
    assert 0.0 < profile.threshold < 1.0
    assert profile.grey_zone[0] < profile.threshold < profile.grey_zone[1]
    assert profile.figures["sensitivity"]["n"] == profile.n_pneumonia
