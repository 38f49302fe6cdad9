"""The subtype pattern on the pages (docs/app.md): under the call on Review and Crop & rescore, in
words, with its own bar and the caveat one click away; one grey "not applicable" line for a film
called normal or flagged by the gate; nothing when the pattern is off; a pattern column in the
worklist. The first tests draw the block for the tiny subtype model; the ``shipped_model`` ones run
the pages with the shipped subtype model and ``PNEUMO_SUBTYPE=1``; one test drives Chromium.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from pneumo_model import presentation
from pneumo_model.bundle import subtype_model_path
from pneumo_model.operating_point import logit
from pneumo_model.paths import DEFAULT_MODEL_PATH, REPO_ROOT
from pneumo_model.pipeline import DecodedImage
from pneumo_model.prediction import Predictor
from pneumo_model.subtype import PATTERNS, UNDETERMINED

from helpers import encode, synthetic_xray
from test_browser import browser  # noqa: F401  (the fixture)
from test_review import amber_columns, grey_columns, point

# ----------------------------------------------------------------------------- words and bar
CAVEAT_WORDS = ("not a cause", "Virkki", "Thorax 2002", "not from microbiology", "treatment decision")


def test_every_pattern_has_its_words_and_the_caveat_says_what_the_pattern_is_not():
    assert set(presentation.PATTERN_KINDS) | {presentation.UNDETERMINED_BAND} == set(PATTERNS)
    assert presentation.pattern_words("viral-like", "**") == (
        "looks more like the **viral** pneumonia films this model learned from"
    )
    assert "**bacterial**" in presentation.pattern_words("bacterial-like", "**")
    assert presentation.pattern_words(UNDETERMINED) == "undetermined: between the two patterns"
    with pytest.raises(ValueError):
        presentation.pattern_words("viral")  # a cause's name is not a pattern
    assert all(word in presentation.PATTERN_CAVEAT for word in CAVEAT_WORDS)


def test_the_pattern_bar_draws_its_band_where_its_log_odds_are_with_the_legend_inside():
    low, high, threshold = 0.30, 0.56, 0.42
    picture = presentation.pattern_bar(0.81, threshold, (low, high))
    assert picture.dtype == np.uint8 and picture.ndim == 3
    assert picture.shape == presentation.probability_bar(0.5, point()).shape  # the call's bar's size and look
    bar, amber = grey_columns(picture), amber_columns(picture)
    span = logit(presentation.BAR_LIMITS[1]) - logit(presentation.BAR_LIMITS[0])
    expected = (logit(high) - logit(low)) / span * (bar.max() - bar.min())
    assert amber.max() - amber.min() == pytest.approx(expected, rel=0.08)
    # The legend ("undetermined 0.300 to 0.560", "threshold 0.420") is longer than the call's: it
    # is shrunk to fit, so no word is cut at the picture's edges.
    legend = picture[int(picture.shape[0] * 0.8) :]
    ink = np.flatnonzero((legend < 128).all(axis=2).any(axis=0))
    assert ink.min() > 2 and ink.max() < picture.shape[1] - 3


# ----------------------------------------------------------------------------- the block, tiny model
def pattern_block(prediction, subtype):
    from ui import call_view

    call_view.show_pattern(prediction, subtype, "test")


def draw(prediction, subtype) -> AppTest:
    app = AppTest.from_function(pattern_block, args=(prediction, subtype), default_timeout=60).run()
    assert not app.exception, app.exception
    return app


def shown(elements) -> str:
    return "\n".join(str(element.value) for element in elements)


@pytest.fixture(scope="module")
def tiny_calls(tiny_subtype):
    """The tiny subtype model and one real pneumonia call of its predictor with each pattern (its
    probability moved into each region of the band, the pattern read by the model's own rule)."""
    predictor = Predictor.from_file(tiny_subtype, subtype=True)
    film = DecodedImage.decode(encode(synthetic_xray(np.random.default_rng(2), lesion=True), "PNG", "L"))
    call = dataclasses.replace(predictor.call(film), label="pneumonia", ood=False, grey_zone=False)
    model = predictor.subtype
    low, high = model.band
    calls = {}
    for p in (low / 2, (low + high) / 2, (1 + high) / 2):
        calls[model.pattern_for(p)] = dataclasses.replace(call, subtype=model.pattern_for(p), subtype_probability=p)
    assert set(calls) == set(PATTERNS)
    return model, calls


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_pneumonia_call_shows_its_pattern_in_words_with_its_bar_and_the_caveat(tiny_calls, pattern):
    model, calls = tiny_calls
    call = calls[pattern]
    app = draw(call, model)
    assert f"**Pattern:** {presentation.pattern_words(pattern, '**')}." in shown(app.markdown)
    (bar,) = app.image  # its own small bar
    captions = shown(app.caption)
    assert f"probability of the viral pattern (calibrated): {call.subtype_probability:.3f}" in captions.lower()
    assert f"threshold {model.threshold:.3f}" in captions and f"{model.band[0]:.3f}" in captions
    (caveat,) = app.expander
    assert caveat.label.startswith("A pattern, not a cause")
    assert all(word in shown(caveat.markdown) for word in CAVEAT_WORDS)
    assert "indeterminate" not in captions.lower()
    assert not app.get("heading") and not app.metric  # the call above stays the headline


def test_an_indeterminate_pneumonia_call_marks_its_pattern_as_such(tiny_calls):
    model, calls = tiny_calls
    app = draw(dataclasses.replace(calls["viral-like"], grey_zone=True), model)
    assert "The call itself is indeterminate" in shown(app.caption)
    assert "Weigh it only if your own reading finds pneumonia" in shown(app.caption)


@pytest.mark.parametrize(
    ("label", "ood", "reason"),
    [
        ("normal", False, "the call is normal"),
        ("normal", None, "the call is normal"),
        ("pneumonia", True, "the out-of-distribution check flagged this image"),
        ("normal", True, "the out-of-distribution check flagged this image"),
    ],
)
def test_a_normal_call_or_a_flagged_image_gets_one_not_applicable_line(tiny_calls, label, ood, reason):
    model, calls = tiny_calls
    call = dataclasses.replace(calls["viral-like"], label=label, ood=ood, subtype=None, subtype_probability=None)
    app = draw(call, model)
    (line,) = app.caption
    assert line.value.startswith("Pattern: not applicable") and reason in line.value
    assert not app.image and not app.expander and not app.markdown


def test_the_pattern_off_draws_nothing(tiny_calls):
    _, calls = tiny_calls
    for call in (calls["viral-like"], dataclasses.replace(calls["viral-like"], label="normal", subtype=None)):
        app = draw(call, None)
        assert not app.markdown and not app.caption and not app.image and not app.expander


def test_the_worklist_table_carries_each_calls_pattern_and_hides_it_with_a_hidden_call(tiny_subtype):
    from ui import worklist

    predictor = Predictor.from_file(tiny_subtype, subtype=True)
    rng = np.random.default_rng(7)
    files = [(f"film{i}.png", encode(synthetic_xray(rng, lesion=bool(i % 2)), "PNG", "L")) for i in range(6)]
    files.append(("broken.png", b"not an image"))
    table = worklist.score_files(files, predictor).table
    for row in table.itertuples():
        if row.file == "broken.png":
            assert pd.isna(row.subtype) and pd.isna(row.subtype_probability)
            continue
        expected = predictor.predict_source(dict(files)[row.file])
        if expected.subtype is None:
            assert not expected.subtype_applies and pd.isna(row.subtype) and pd.isna(row.subtype_probability)
        else:
            assert row.subtype == expected.subtype
            assert row.subtype_probability == pytest.approx(expected.subtype_probability, abs=1e-6)
    assert table["subtype"].notna().any()  # the checks above met a pattern
    flagged = table.assign(ood_grade=np.where(table["subtype"].notna(), "outside", table["ood_grade"]))
    hidden = worklist.masked(flagged, show_flagged=False)
    assert hidden["subtype"].isna().all() and hidden["subtype_probability"].isna().all()
    assert worklist.masked(flagged, show_flagged=True)["subtype"].notna().any()
    csv = worklist.to_csv(worklist.masked(table, False), "m").decode().splitlines()[0].split(",")
    assert {"subtype", "subtype_probability"} <= set(csv)


# ----------------------------------------------------------------------------- the pages, shipped model
GREY_ABOVE = "person153_bacteria_726.jpeg"  # pneumonia inside the grey zone (test_review.py)
CONFIDENT_NORMAL = "IM-0003-0001.jpeg"
CONFIDENT_PNEUMONIA = "person10_virus_35.jpeg"


@pytest.fixture
def pattern_on(monkeypatch):
    """The app's model with the shipped subtype network (``PNEUMO_SUBTYPE=1``); the process-wide
    model and results are dropped before and after, so no other test meets them."""
    if not subtype_model_path(DEFAULT_MODEL_PATH).is_file():
        if os.environ.get("REQUIRE_DATA") == "1":
            pytest.fail("the shipped subtype model is missing and REQUIRE_DATA=1")
        pytest.skip(f"no {subtype_model_path(DEFAULT_MODEL_PATH).name} beside the shipped model")
    from ui import resources

    monkeypatch.setenv("PNEUMO_SUBTYPE", "1")
    st.cache_resource.clear()
    yield resources.predictor()
    st.cache_resource.clear()


def review(name: str) -> AppTest:
    from test_review import pick, start

    return pick(start(), name)


@pytest.mark.shipped_model
@pytest.mark.parametrize("name", [CONFIDENT_PNEUMONIA, GREY_ABOVE])
def test_review_shows_the_pattern_under_a_pneumonia_call(pattern_on, name):
    from test_review import SAMPLES, texts

    expected = pattern_on.predict_source((SAMPLES / name).read_bytes())
    assert expected.label == "pneumonia" and expected.subtype in PATTERNS
    assert expected.grey_zone is (name == GREY_ABOVE)  # test_review.py's demo films still sit where they did
    app = review(name)
    markdown = [m.value for m in app.markdown]
    call = next(i for i, value in enumerate(markdown) if value.startswith("#### Call:"))
    pattern = markdown.index(f"**Pattern:** {presentation.pattern_words(expected.subtype, '**')}.")
    assert call < pattern  # under the call
    captions = texts(app.caption)
    assert f"(calibrated): {expected.subtype_probability:.3f}" in captions
    assert ("The call itself is indeterminate" in captions) is expected.grey_zone
    (caveat,) = [e for e in app.expander if e.label.startswith("A pattern, not a cause")]
    assert all(word in texts(caveat.markdown) for word in CAVEAT_WORDS)


@pytest.mark.shipped_model
def test_review_says_not_applicable_for_a_normal_call_and_a_flagged_image(pattern_on):
    from test_app import inverted_sample, start, upload
    from test_review import texts

    app = review(CONFIDENT_NORMAL)
    assert "Pattern: not applicable (the call is normal" in texts(app.caption)
    assert not [m for m in app.markdown if m.value.startswith("**Pattern:**")]

    app = upload(start(), "inverted.png", inverted_sample())
    assert "Pattern" not in texts(app.caption)  # the call is hidden, and so is everything under it
    (box,) = [c for c in app.checkbox if c.label == "Show the model's output anyway"]
    box.check().run()
    assert "Pattern: not applicable (the out-of-distribution check flagged this image)" in texts(app.caption)
    assert not [m for m in app.markdown if m.value.startswith("**Pattern:**")]


@pytest.mark.shipped_model
def test_review_shows_no_pattern_when_it_is_off(monkeypatch):
    from test_review import texts

    monkeypatch.setenv("PNEUMO_SUBTYPE", "0")
    st.cache_resource.clear()
    try:
        app = review(CONFIDENT_PNEUMONIA)
        assert "Call:" in texts(app.markdown)
        assert "Pattern" not in texts(app.markdown) + texts(app.caption)
        assert not [e for e in app.expander if e.label.startswith("A pattern")]
    finally:
        st.cache_resource.clear()


@pytest.mark.shipped_model
def test_the_worklist_has_a_pattern_column_while_the_pattern_is_on(pattern_on):
    from test_review import texts
    from test_worklist_page import grid, select, worklist_app

    app = worklist_app()
    table = grid(app)
    assert "subtype" in table.proto.column_order
    for row in table.value.itertuples():
        expected = pattern_on.predict_source((REPO_ROOT / "assets" / "samples" / row.file).read_bytes())
        assert row.subtype == expected.subtype if expected.subtype is not None else pd.isna(row.subtype)
    assert table.value["subtype"].notna().any() and table.value["subtype"].isna().any()  # pneumonia and normal
    name = table.value.dropna(subset=["subtype"])["file"].iloc[0]
    expected = pattern_on.predict_source((REPO_ROOT / "assets" / "samples" / name).read_bytes())
    app = select(app, name)  # the row's panel says its pattern, and where the caveat is
    assert f"Pattern: {expected.subtype}, probability of the viral pattern (calibrated) " in texts(app.caption)
    assert "A pattern, not a cause: open it on Review" in texts(app.caption)


@pytest.mark.shipped_model
def test_crop_and_rescore_shows_the_pattern_of_the_new_call(pattern_on):
    from test_app import open_page
    from test_review import texts
    from ui import resources

    app = open_page(review(CONFIDENT_PNEUMONIA), "pages/crop.py")
    image = app.session_state["chosen_image"]
    after = resources.cropped_prediction(image, app.session_state[f"crop_box_{image.digest[:16]}"], False)
    assert after.subtype in PATTERNS  # the crop keeps this film's pneumonia call
    shown_words = [m.value for m in app.markdown if m.value.startswith("**Pattern after the crop:**")]
    assert shown_words == [f"**Pattern after the crop:** {presentation.pattern_words(after.subtype, '**')}."]
    assert f"(calibrated): {after.subtype_probability:.3f}" in texts(app.caption)


# ----------------------------------------------------------------------------- in a real browser
@pytest.mark.shipped_model
@pytest.mark.browser
def test_a_pneumonia_demo_uploaded_in_chromium_shows_its_pattern_with_its_bar(browser, tmp_path, monkeypatch):  # noqa: F811
    from playwright.sync_api import expect

    from test_browser import SLOW_MS
    from tools.app_server import WINDOW, streamlit_app

    if not subtype_model_path(DEFAULT_MODEL_PATH).is_file():
        pytest.skip(f"no {subtype_model_path(DEFAULT_MODEL_PATH).name} beside the shipped model")
    monkeypatch.setenv("PNEUMO_SUBTYPE", "1")  # the server's environment
    film = REPO_ROOT / "assets" / "samples" / CONFIDENT_PNEUMONIA
    expected = Predictor.from_file(subtype=True).predict_source(film.read_bytes())
    context = browser.new_context(viewport=WINDOW)
    tab = context.new_page()
    tab.set_default_timeout(SLOW_MS)
    try:
        with streamlit_app(tmp_path / "streamlit.log", audit_db=tmp_path / "audit.sqlite3") as url:
            tab.goto(url)
            tab.locator("input[type=file]").first.set_input_files(str(film))
            heading = tab.get_by_role("heading", name="Call: Pneumonia")
            expect(heading).to_be_visible()
            block = tab.locator(".st-key-review_pattern")
            expect(block).to_contain_text(f"Pattern: {presentation.pattern_words(expected.subtype)}.")
            expect(block).to_contain_text(f"(calibrated): {expected.subtype_probability:.3f}")
            bar = block.locator("img")
            expect(bar).to_be_visible()
            tab.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=bar.element_handle())
            call_bar = tab.locator(".st-key-probability_bar img")
            # Under the call, and smaller than the call's own bar: the call stays the headline.
            assert block.bounding_box()["y"] > call_bar.bounding_box()["y"] + call_bar.bounding_box()["height"]
            assert bar.bounding_box()["width"] < 0.9 * call_bar.bounding_box()["width"]
            expect(block.get_by_text("Virkki")).to_be_hidden()  # one click away
            block.get_by_text("A pattern, not a cause").click()
            expect(block.get_by_text("Virkki", exact=False)).to_be_visible()
    finally:
        context.close()
