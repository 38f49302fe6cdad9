"""The Review page and what it shares: the call at a glance (the probability bar, the sentence
under it, neutral colours, amber for indeterminate), the case report PDF, the demo images, the
page titles, and the verdict form only for a call that is shown.

The first tests need neither Streamlit nor the shipped model: they draw the bar and the report
for an operating point made here.
"""

from __future__ import annotations

import dataclasses
import re
import zlib

import numpy as np
import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from pneumo_model import presentation
from pneumo_model.calibration import GreyZone
from pneumo_model.case_report import SHA_PREFIX_DIGITS, case_report_pdf
from pneumo_model.operating_point import SITE, OperatingPoint, logit
from pneumo_model.paths import REPO_ROOT, bytes_sha256
from pneumo_model.prediction import Prediction
from pneumo_model.preprocessing import ImageInfo

APP = REPO_ROOT / "app.py"
TIMEOUT = 180
SAMPLES = REPO_ROOT / "assets" / "samples"
# Demo images by where the shipped model puts them (reports/predictions_test.csv; the tests below
# check each against the model itself).
GREY_ABOVE = "person153_bacteria_726.jpeg"  # 0.256: pneumonia, just above the threshold, in the band
GREY_BELOW = "NORMAL2-IM-0019-0001.jpeg"  # 0.134: normal, below the threshold, in the band
CONFIDENT_NORMAL = "IM-0003-0001.jpeg"  # 0.004
CONFIDENT_PNEUMONIA = "person10_virus_35.jpeg"  # 0.994


# ----------------------------------------------------------------------------- PDF reading
def pdf_pages(pdf: bytes) -> int:
    """How many page objects the PDF has (``/Type /Page``, not the ``/Pages`` tree)."""
    return len(re.findall(rb"/Type\s*/Page(?![A-Za-z])", pdf))


def _unescape(piece: bytes) -> bytes:
    piece = re.sub(rb"\\([0-7]{1,3})", lambda match: bytes([int(match.group(1), 8) & 0xFF]), piece)
    return re.sub(rb"\\(.)", rb"\1", piece, flags=re.S)


def pdf_text(pdf: bytes) -> str:
    """The text a PDF shows, as matplotlib writes it: every string of every Tj and TJ operator of
    the (Flate-compressed) content streams, in order, joined without spaces (TJ splits words at
    kerning and ligatures, so substrings of a line are found, not word boundaries)."""
    shown = []
    # Up to "endstream", the line break before it included: a compressed stream whose last byte is
    # \r would lose that byte to a pattern that takes "\r\n" as the break (about 1 PDF in 256 failed
    # so); the decompressor stops at the stream's own end and leaves the break as unused data.
    for stream in re.findall(rb"stream\r?\n(.*?)endstream", pdf, re.S):
        try:
            content = zlib.decompressobj().decompress(stream)
        except zlib.error:
            continue
        for operator in re.finditer(rb"\[((?:\\.|[^\]\\])*)\]\s*TJ|(\((?:\\.|[^\\)])*\))\s*Tj", content, re.S):
            pieces = re.findall(rb"\(((?:\\.|[^\\)])*)\)", operator.group(0))
            shown.append(b"".join(_unescape(piece) for piece in pieces))
    return b"".join(shown).decode("latin-1")


def pdf_says(pdf: bytes, phrase: str) -> bool:
    """Whether the PDF shows ``phrase``, line breaks and spaces aside (a phrase may wrap). Phrases
    with fi, fl or ff do not match: matplotlib draws those pairs as one ligature glyph."""
    return re.sub(r"\s+", "", phrase) in re.sub(r"\s+", "", pdf_text(pdf))


# ----------------------------------------------------------------------------- no model needed
def point(threshold: float = 0.241, low: float = 0.057, high: float = 0.625, kind: str = "shipped") -> OperatingPoint:
    return OperatingPoint(
        id="0123456789abcdef", kind=kind, model_sha256="f" * 64, scale=1.0, offset=0.0, threshold=threshold,
        grey_zone=GreyZone(low, high), description="made in a test",
    )


def prediction(probability: float, at: OperatingPoint, ood: bool = False) -> Prediction:
    return Prediction(
        probability=probability, label=at.label(probability), grey_zone=at.in_grey_zone(probability),
        threshold=at.threshold, model_sha="f" * 64, info=ImageInfo(224, 224, 8, "JPEG"), operating_point=at.id,
        logit=logit(probability), ood=ood, ood_score=1.4 if ood else 0.5,
    )


def test_the_call_has_one_spelling():
    assert presentation.call_word("normal") == "Normal" and presentation.call_word("pneumonia") == "Pneumonia"
    with pytest.raises(ValueError):
        presentation.call_word("Pneumonia")


@pytest.mark.parametrize(
    ("probability", "words"),
    [
        (0.30, ("near the operating point", "above the threshold", "read this film carefully")),
        (0.10, ("near the operating point", "below the threshold", "read this film carefully")),
        (0.90, ("above the grey zone", "calls this film pneumonia")),
        (0.01, ("below the grey zone", "calls this film normal", "does not rule pneumonia out")),
    ],
)
def test_the_sentence_says_where_the_probability_lies_and_never_all_clear(probability, words):
    sentence = presentation.call_sentence(probability, point())
    assert all(word in sentence for word in words), sentence
    assert "clear" not in sentence.lower() and "no pneumonia" not in sentence.lower()


def _near(picture: np.ndarray, colour: str, tolerance: int) -> np.ndarray:
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return np.abs(picture.astype(int) - rgb).sum(axis=2) < tolerance  # (h, w)


def bar_rows(picture: np.ndarray) -> np.ndarray:
    """The bar's own rows: where the bar's grey spans most of the picture (not the legend's swatch)."""
    grey = _near(picture, presentation.BAR_GREY, 6)
    return grey.sum(axis=1) > picture.shape[1] / 3


def amber_columns(picture: np.ndarray) -> np.ndarray:
    """The x of every column of the bar with the grey zone's amber in it."""
    return np.flatnonzero(_near(picture, presentation.AMBER, 30)[bar_rows(picture)].any(axis=0))


def grey_columns(picture: np.ndarray) -> np.ndarray:
    return np.flatnonzero(_near(picture, presentation.BAR_GREY, 6)[bar_rows(picture)].any(axis=0))


def test_the_bar_draws_the_grey_zone_where_its_log_odds_are():
    at = point()
    picture = presentation.probability_bar(0.3, at)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    bar = grey_columns(picture)
    amber = amber_columns(picture)
    span = logit(presentation.BAR_LIMITS[1]) - logit(presentation.BAR_LIMITS[0])
    expected = (logit(0.625) - logit(0.057)) / span * (bar.max() - bar.min())
    assert amber.max() - amber.min() == pytest.approx(expected, rel=0.05)
    start = (logit(0.057) - logit(presentation.BAR_LIMITS[0])) / span * (bar.max() - bar.min()) + bar.min()
    assert amber.min() == pytest.approx(start, abs=3)


def test_a_grey_zone_narrow_in_probability_near_0_is_still_plain_to_see():
    at = point(threshold=0.02, low=0.01, high=0.04)
    picture = presentation.probability_bar(0.02, at)
    bar = grey_columns(picture)
    assert amber_columns(picture).size > 0.08 * (bar.max() - bar.min())  # 0.03 of probability: 3 % of a linear bar


def test_the_marker_moves_with_the_probability():
    at = point()
    low, high = (presentation.probability_bar(p, at) for p in (0.01, 0.99))
    ink = [np.flatnonzero((picture[: picture.shape[0] // 3] < 60).all(axis=2).any(axis=0)) for picture in (low, high)]
    assert ink[0].mean() < low.shape[1] / 2 < ink[1].mean()  # the triangle and its value sit above the bar


def report_inputs():
    film = np.tile(np.linspace(0, 255, 224, dtype=np.float32), (224, 1)).astype(np.uint8)
    overlay = np.repeat(film[:, :, np.newaxis], 3, axis=2)
    legend = np.full((40, 300, 3), 128, np.uint8)
    return film, overlay, legend


def test_the_report_is_one_page_with_the_sha_prefix_and_the_call(tmp_path):
    from pneumo_model.artifacts import ModelMetadata

    metadata = ModelMetadata(
        architecture="pneumonet", input_size=128, gradcam_layer="features", temperature=1.0, threshold=0.241,
        grey_zone=(0.057, 0.625), protocol="official", keras_version="3", tensorflow_version="2",
        model_sha256="f" * 64, data_fingerprint="d" * 64, seed=1, training_seconds=1.0,
    )
    at = point()
    film, overlay, legend = report_inputs()
    digest = bytes_sha256(b"an image's bytes")
    pdf = case_report_pdf(film, overlay, prediction(0.3, at), metadata, at, digest, "where it looked", "words",
                          legend)
    text = pdf_text(pdf)
    assert pdf.startswith(b"%PDF") and pdf_pages(pdf) == 1
    assert digest[:SHA_PREFIX_DIGITS] in text and digest[SHA_PREFIX_DIGITS:] not in text
    assert "Call: Pneumonia" in text and presentation.INDETERMINATE in text
    assert presentation.DISCLAIMER.split(" — ")[0] in text
    assert at.id in text and "0.241" in text

    # The longest page there is: a flagged image shown anyway, under a site profile.
    site = dataclasses.replace(
        at, id="fedcba9876543210", kind=SITE, description="site profile fedcba98 fitted on 200 local images on 2026-12-02"
    )
    flagged = case_report_pdf(film, overlay, prediction(0.3, site, ood=True), metadata, site, digest, "t", "w" * 400,
                              legend)
    assert pdf_pages(flagged) == 1 and pdf_says(flagged, "The out-of-distribution gate")
    near = dataclasses.replace(prediction(0.3, at, ood=True), ood_score=1.1, ood_grade="unusual")
    unusual = case_report_pdf(film, overlay, near, metadata, at, digest, "t", "w", legend)
    assert pdf_says(unusual, "read with care") and not pdf_says(unusual, "does not look like")
    assert pdf_says(flagged, "does not look like")  # the check above can fail

    with pytest.raises(ValueError, match="64"):
        case_report_pdf(film, overlay, prediction(0.3, at), metadata, at, digest[:12], "t", "w")
    with pytest.raises(ValueError, match="operating point"):
        case_report_pdf(film, overlay, prediction(0.3, site), metadata, at, digest, "t", "w")


# ----------------------------------------------------------------------------- the app
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


def shown_text(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown.replace("\u2060", ""))


def texts(elements) -> str:
    return shown_text("\n".join(str(element.value) for element in elements))


def start(page: str = "app.py") -> AppTest:
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not app.exception, app.exception
    if page != "app.py":
        app.switch_page(page).run()
        assert not app.exception, app.exception
    return app


def pick(app: AppTest, name: str) -> AppTest:
    app.button(key=f"sample-{name}").click().run()
    assert not app.exception, app.exception
    return app


def upload(app: AppTest, name: str, data: bytes) -> AppTest:
    """Uploads into the page's one file uploader (the Review uploader's key changes when it is emptied)."""
    (uploader,) = app.get("file_uploader")
    uploader.set_value((name, data, "image/png" if name.endswith(".png") else "image/jpeg")).run()
    assert not app.exception, app.exception
    return app


def captions(app: AppTest) -> list[str]:
    return [shown_text(caption) for image in app.image for caption in image.captions]


@pytest.mark.shipped_model
@pytest.mark.parametrize("name", [GREY_ABOVE, GREY_BELOW, CONFIDENT_NORMAL, CONFIDENT_PNEUMONIA])
def test_review_draws_the_bar_and_says_the_sentence_the_case_calls_for(name):
    from ui import resources

    app = pick(start(), name)
    model = resources.predictor()
    expected = model.predict_source((SAMPLES / name).read_bytes())
    if name.startswith("person153") or name.startswith("NORMAL2-IM-0019"):
        assert expected.grey_zone, f"{name} left the grey zone ({expected.probability:.3f}): pick another demo"
    else:
        assert not expected.grey_zone
    # The bar is drawn (a picture without a caption; a pneumonia call's pattern has the other one,
    # tests/test_subtype_pages.py), and what its axis means is said under it.
    assert len([image for image in app.image if image.captions == [""]]) == 1 + (expected.subtype is not None)
    assert presentation.BAR_AXIS_NOTE in texts(app.caption)
    sentence = presentation.call_sentence(expected.probability, model.operating_point)
    (heading,) = [m.value for m in app.markdown if m.value.startswith("#### Call:")]
    call = f"#### Call: **{presentation.call_word(expected.label)}**"
    warnings = texts(app.warning)
    if expected.grey_zone:
        assert heading == f"{call} · {presentation.INDETERMINATE_WORD}"
        assert f"**{presentation.INDETERMINATE}.** {sentence}" in warnings  # amber: st.warning
    else:
        assert heading == call
        assert sentence in texts(app.markdown) and presentation.INDETERMINATE not in warnings
    assert not app.success  # no green anywhere on the page, for any call
    assert "What these numbers mean" in [expander.label for expander in app.expander]


@pytest.mark.shipped_model
def test_what_these_numbers_mean_carries_the_operating_points_own_numbers():
    from ui import resources

    app = pick(start(), GREY_ABOVE)
    point_ = resources.predictor().operating_point
    (help_,) = [expander for expander in app.expander if expander.label == "What these numbers mean"]
    words = texts(help_.markdown)
    assert f"Threshold {point_.threshold:.3f}" in words
    assert f"Grey zone [{point_.grey_zone.low:.3f}, {point_.grey_zone.high:.3f})" in words
    share = resources.predictor().metadata.grey_zone_rule["validation_shares"]["in_band"]
    assert f"{share:.1%} of the validation films" in words


@pytest.mark.shipped_model
def test_the_demo_images_keep_a_borderline_case_on_each_side_of_the_threshold():
    from ui import resources, state

    model = resources.predictor()
    calls = [model.predict_source(sample.path.read_bytes()) for sample in state.samples()]
    assert any(c.grey_zone and c.label == "pneumonia" for c in calls)
    assert any(c.grey_zone and c.label == "normal" for c in calls)


@pytest.mark.shipped_model
def test_the_verdict_form_and_the_report_are_offered_only_for_a_call_that_is_shown(monkeypatch):
    from test_app import inverted_sample

    saved = downloads(monkeypatch)
    app = upload(start(), "inverted.png", inverted_sample())
    assert "does not look like a frontal chest X-ray" in texts(app.error)
    assert not [b for b in app.button if (b.key or "").startswith("review_verdict_submission_press_")]
    assert not app.get("download_button") and not [name for name in saved if name.endswith(".pdf")]
    assert "Call:" not in texts(app.markdown)

    (box,) = [c for c in app.checkbox if c.label == "Show the model's output anyway"]
    box.check().run()
    assert [b for b in app.button if (b.key or "").startswith("review_verdict_submission_press_")]  # the call is shown: it may be judged
    (report,) = [data for name, data in saved.items() if name.endswith(".pdf")]
    assert pdf_says(report, "The out-of-distribution gate")


@pytest.mark.shipped_model
def test_a_demo_picked_after_an_upload_empties_the_uploader_and_names_the_demo():
    app = upload(start(), "my-upload.jpeg", (SAMPLES / CONFIDENT_PNEUMONIA).read_bytes())
    assert any(caption.startswith("my-upload.jpeg (upload, ") for caption in captions(app))
    pick(app, CONFIDENT_NORMAL)
    (uploader,) = app.get("file_uploader")
    assert uploader.value is None  # a new, empty uploader: nothing beside the demo's call names the upload
    shown = "\n".join([texts(app.markdown), texts(app.sidebar.markdown), texts(app.caption), *captions(app)])
    assert "my-upload" not in shown
    assert any(caption.startswith(f"{CONFIDENT_NORMAL} (demo image") for caption in captions(app))
    app.switch_page("pages/explain.py").run()  # the chosen image is the demo on every page
    assert CONFIDENT_NORMAL in texts(app.markdown) and "my-upload" not in texts(app.markdown)

    app.switch_page("app.py").run()  # and the new uploader works like the first
    upload(app, "second.jpeg", (SAMPLES / GREY_ABOVE).read_bytes())
    assert any(caption.startswith("second.jpeg (upload, ") for caption in captions(app))


@pytest.mark.shipped_model
def test_the_case_report_is_one_page_with_the_sha_prefix_and_no_file_name(monkeypatch):
    from ui import resources

    saved = downloads(monkeypatch)
    data = (SAMPLES / GREY_ABOVE).read_bytes()
    name = "PATIENT-ZZ98765_2026-12-01.jpeg"  # names carry identifiers: a PACS export's, this data set's
    app = upload(start(), name, data)
    (button,) = app.get("download_button")
    assert "Download the case report (PDF)" in str(button.proto)
    (file_name, report), = [(n, d) for n, d in saved.items() if n.endswith(".pdf")]
    digest = bytes_sha256(data)
    assert file_name == f"case_report_{digest[:SHA_PREFIX_DIGITS]}.pdf"
    text = pdf_text(report)
    assert pdf_pages(report) == 1
    assert digest[:SHA_PREFIX_DIGITS] in text
    for part in ("ZZ98765", "PATIENT", "2026-12-01.jpeg", GREY_ABOVE.split(".")[0]):
        assert part.encode() not in report and part not in text
    expected = resources.predictor().predict_source(data)
    assert f"{expected.probability:.3f}" in text and f"Call: {presentation.call_word(expected.label)}" in text


@pytest.mark.shipped_model
def test_explain_offers_the_same_case_report(monkeypatch):
    saved = downloads(monkeypatch)
    app = pick(start(), GREY_ABOVE)
    on_review = {name: data for name, data in saved.items() if name.endswith(".pdf")}
    saved.clear()
    app.switch_page("pages/explain.py").run()
    assert not app.exception, app.exception
    on_explain = {name: data for name, data in saved.items() if name.endswith(".pdf")}
    assert on_explain == on_review and len(on_explain) == 1  # one report per image, made once


@pytest.mark.shipped_model
@pytest.mark.parametrize("page", ["app.py", "pages/explain.py", "pages/crop.py", "pages/worklist.py",
                                  "pages/trail.py", "pages/model_card.py", "pages/site.py"])
def test_every_page_has_its_title_under_the_banner(page):
    from ui import frame

    app = start(page)
    title = next(p.title for p in frame.PAGES if p.script == page)
    assert title in [subheader.value for subheader in app.subheader]


@pytest.mark.shipped_model
def test_the_demo_list_stays_open_after_a_pick_and_ticks_the_chosen_demo():
    app = pick(start(), GREY_ABOVE)
    (demos,) = [e for e in app.sidebar.expander if e.label.startswith("Demo images")]
    assert demos.proto.expanded
    (chosen,) = [b for b in demos.button if b.key == f"sample-{GREY_ABOVE}"]
    assert chosen.proto.icon == ":material/check:"
    assert all(not b.proto.icon for b in demos.button if b.key != f"sample-{GREY_ABOVE}")


# ----------------------------------------------------------------------------- the subtype pattern
def _metadata():
    from pneumo_model.artifacts import ModelMetadata

    return ModelMetadata(
        architecture="pneumonet", input_size=128, gradcam_layer="features", temperature=1.0, threshold=0.241,
        grey_zone=(0.057, 0.625), protocol="official", keras_version="3", tensorflow_version="2",
        model_sha256="f" * 64, data_fingerprint="d" * 64, seed=1, training_seconds=1.0,
    )


@pytest.mark.parametrize(
    "pattern, words",
    [("viral-like", "looks more like the viral pneumonia"),  # "films": matplotlib draws fi as one glyph
     ("bacterial-like", "looks more like the bacterial pneumonia"),
     ("undetermined", "undetermined, between the two patterns")],
)
def test_the_report_of_a_pneumonia_call_has_the_pattern_its_probability_and_the_caveat_under_the_call(pattern, words):
    from pneumo_model.case_report import pattern_line

    at = point()
    called = dataclasses.replace(prediction(0.9, at), subtype=pattern, subtype_probability=0.7734, subtype_logit=1.2)
    film, overlay, legend = report_inputs()
    pdf = case_report_pdf(film, overlay, called, _metadata(), at, bytes_sha256(b"x"), "t", "w", legend)
    assert pdf_pages(pdf) == 1
    assert pdf_says(pdf, f"Radiographic pattern: {pattern}") and pdf_says(pdf, words)
    assert pdf_says(pdf, "probability of the viral pattern 0.77, calibrated")
    assert pdf_says(pdf, "A radiographic pattern, not a cause. The radiograph alone cannot reliably tell bacterial")
    assert pdf_says(pdf, "(Virkki et al., Thorax 2002)") and "Virkki" in presentation.PATTERN_CAVEAT
    text = re.sub(r"\s+", "", pdf_text(pdf))
    assert text.index("Call:Pneumonia") < text.index("Radiographicpattern:") < text.index("Grad-CAM(right)")
    assert pattern_line(called).startswith(f"Radiographic pattern: {pattern}, ")


def test_the_report_of_a_normal_call_a_flagged_film_or_the_pattern_off_says_nothing_of_a_pattern(tiny_subtype):
    from helpers import calling_every_film, encode, synthetic_xray
    from pneumo_model.case_report import pattern_line
    from pneumo_model.pipeline import DecodedImage
    from pneumo_model.prediction import Predictor

    film_bytes = encode(synthetic_xray(np.random.default_rng(3), 96, lesion=True))
    with_pattern = Predictor.from_file(tiny_subtype, subtype=True)
    called = calling_every_film(with_pattern, "pneumonia")
    normal = calling_every_film(with_pattern, "normal")
    off = calling_every_film(Predictor.from_file(tiny_subtype, subtype=False), "pneumonia")
    film, overlay, legend = report_inputs()
    image = DecodedImage.decode(film_bytes)
    for predictor, has in ((called, True), (normal, False), (off, False)):
        result = predictor.call(image)
        pdf = case_report_pdf(film, overlay, result, predictor.metadata, predictor.operating_point, image.digest,
                              "t", "w", legend)
        assert pdf_says(pdf, "Radiographic pattern") is has and pdf_says(pdf, "Virkki") is has
        assert result.label == ("normal" if predictor is normal else "pneumonia")
    flagged = dataclasses.replace(called.call(image), ood=True, ood_score=1.7, ood_grade="outside", subtype=None,
                                  subtype_probability=None)
    pdf = case_report_pdf(film, overlay, flagged, called.metadata, called.operating_point, image.digest, "t", "w", legend)
    assert not pdf_says(pdf, "Radiographic pattern") and pdf_says(pdf, "The out-of-distribution gate")
    with pytest.raises(ValueError, match="no subtype pattern"):
        pattern_line(flagged)
