"""The app's display helpers, safe text, CSV and caches, and the demo-image list (no model, no
Streamlit session needed)."""

import csv
import io

import numpy as np
import pandas as pd
import pytest

from pneumo_model.audit import trail_csv
from pneumo_model.display import screen_grey, unit_to_uint8
from pneumo_model.errors import InvalidImageError
from pneumo_model.explain import VERMILLION, overlay_heatmap
from ui import drawing, state, worklist
from ui.cache import ByteBudgetCache, held_bytes
from ui.markup import plain


def test_screen_grey_keeps_the_aspect_ratio_and_the_input():
    pixels = np.tile(np.arange(3000, dtype=np.uint16), (2000, 1))  # (2000, 3000)
    before = pixels.copy()
    display = screen_grey(pixels, max_side=600)
    assert display.shape == (400, 600) and display.dtype == np.uint8
    assert display.min() == 0 and display.max() == 255  # stretched by the full image's own range
    np.testing.assert_array_equal(pixels, before)
    small = np.full((100, 80), 128, np.uint8)
    assert screen_grey(small, max_side=600).shape == (100, 80)  # never enlarged
    assert screen_grey(small, max_side=600) is not small


def _edge_cases() -> dict[str, np.ndarray]:
    cases = {}
    for side in (300, 1500):  # shown as it is, and resized for the screen
        shape = (side, side * 4 // 3)
        ramp = np.tile(np.linspace(0.0, 1.0, shape[1]), (shape[0], 1))  # dark left edge, bright right edge
        cases[f"uint8 {side}"] = np.rint(ramp * 255).astype(np.uint8)
        cases[f"uint8 white {side}"] = np.full(shape, 255, np.uint8)
        for bits in (10, 12, 16):
            cases[f"uint16 {bits}-bit {side}"] = np.rint(ramp * (2**bits - 1)).astype(np.uint16)
        cases[f"uint16 constant {side}"] = np.full(shape, 3000, np.uint16)
        cases[f"float zero {side}"] = np.zeros(shape, np.float32)
        cases[f"float one {side}"] = np.ones(shape, np.float32)
        cases[f"float64 ramp {side}"] = np.linspace(0.0, 1.0, shape[0] * shape[1]).reshape(shape)
    # The size of IM-0272-0001, the film that crashed the display: INTER_AREA from 1582 to 1024 px
    # turns white (1.0) into 1.0000001, which st.image refused.
    cases["float white 1582 x 1155"] = np.ones((1155, 1582), np.float32)
    cases["uint8 white 1582 x 1155"] = np.full((1155, 1582), 255, np.uint8)
    return cases


@pytest.mark.parametrize("name", sorted(_edge_cases()))
def test_screen_grey_is_uint8_in_range_for_every_dtype_edge_case(name):
    pixels = _edge_cases()[name]
    picture = screen_grey(pixels, max_side=1024)
    assert picture.dtype == np.uint8 and picture.ndim == 2
    assert max(picture.shape) == min(1024, max(pixels.shape))
    if np.ptp(pixels) == 0 and pixels.dtype == np.uint16:
        assert picture.max() == 0  # a constant 16-bit image has no contrast to stretch
    elif np.ptp(pixels) == 0:
        expected = 255 if float(pixels.flat[0]) in (1.0, 255.0) else 0
        assert np.all(picture == expected)
    else:
        assert picture.max() >= 250 and picture.min() <= 5
    # Every overlay the pages draw takes the screen copy and stays in range too.
    overlay = overlay_heatmap(picture, np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64), alpha=0.4)
    assert overlay.dtype == np.uint8 and overlay.shape == picture.shape + (3,)
    crop = drawing.draw_crop(picture, (0, 0, pixels.shape[1] // 2, pixels.shape[0]), pixels.shape)
    assert crop.dtype == np.uint8 and crop.shape == picture.shape + (3,)


def test_screen_pictures_refuse_what_cannot_be_shown():
    with pytest.raises(InvalidImageError):
        screen_grey(np.full((100, 100), np.nan, np.float32))
    with pytest.raises(InvalidImageError):
        screen_grey(np.full((100, 100), 1.5, np.float32))
    with pytest.raises(InvalidImageError):
        screen_grey(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(InvalidImageError):
        unit_to_uint8(np.array([0.5, np.inf]))
    np.testing.assert_array_equal(unit_to_uint8(np.array([-1e-7, 0.5, 1.0000001])), [0, 128, 255])


def test_pages_show_only_uint8_pictures():
    with pytest.raises(TypeError):
        drawing.show(np.ones((10, 10), np.float32))
    with pytest.raises(TypeError):
        drawing.show(np.ones((10, 10, 4), np.uint8))
    with pytest.raises(TypeError):
        drawing.show("reports/figure.png")


def test_draw_crop_dims_the_removed_part_and_outlines_the_box():
    display = np.full((100, 200), 204, np.uint8)
    image = drawing.draw_crop(display, box=(0, 0, 400, 100), original_shape=(200, 400))  # top half kept
    assert image.shape == (100, 200, 3) and image.dtype == np.uint8
    assert tuple(image[25, 100]) == (204, 204, 204)  # inside: unchanged
    assert image[75, 100].max() < 100  # below the box: dimmed
    assert tuple(image[49, 100]) == VERMILLION  # the box's lower edge
    assert display.max() == 204  # input untouched
    with pytest.raises(TypeError):
        drawing.draw_crop(display / 255.0, (0, 0, 10, 10), (100, 200))


HOSTILE_NAMES = [
    "**ZZ** [link](https:evil.example).png",
    "![x](https:127.0.0.1:9).png",
    "<img src=x onerror=alert(1)>.png",
    ":smile: :material/home: $x^2$ `code` ~~struck~~ # heading.png",
    "www.evil.example and https://evil.example/a.png and someone@evil.example.png",
    "line one\nline two\t| table |.png",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_plain_text_escapes_every_markdown_character_and_breaks_bare_links(name):
    text = plain(name)
    unescaped = text.replace("\u2060", "")
    # Every ASCII punctuation character is backslash-escaped, and nothing else changes.
    shown = "".join(unescaped[i + 1] if unescaped[i] == "\\" else "" for i in range(len(unescaped) - 1))
    for char in set(name) - set(" \n\t"):
        if not char.isalnum() and char.isascii():
            assert f"\\{char}" in text, char
    assert "\n" not in text and "\t" not in text
    assert "www." not in unescaped.replace("\\", "") or "www\u2060" in text
    assert "://" not in text.replace("\\", "")
    assert shown  # escapes were made
    strip = text.replace("\u2060", "")
    restored = "".join(c for i, c in enumerate(strip) if not (c == "\\" and i + 1 < len(strip)))
    assert restored == name.replace("\n", " ").replace("\t", " ")


def test_worklist_csv_escapes_formula_prefixes_like_the_audit_csv():
    names = ["=1+1.png", "+1+1ZZ.png", "-2.png", "@SUM(A1).png", "\tx.png", "plain.png"]
    table = pd.DataFrame(
        {
            "file": names, "probability": [0.5] * 6, "call": ["normal"] * 6, "grey_zone": [False] * 6,
            "ood": [False] * 6, "ood_score": [0.1] * 6, "error": [None] * 5 + ["=HYPERLINK(x)"],
            "sha256": ["a" * 64] * 6, "thumbnail": [None] * 6,
        }
    )
    rows = list(csv.DictReader(io.StringIO(worklist.to_csv(table, "m").decode("utf-8"))))
    assert [row["file"] for row in rows] == ["'" + name for name in names[:5]] + ["plain.png"]
    assert rows[-1]["error"] == "'=HYPERLINK(x)" and rows[0]["error"] == ""
    assert rows[0]["probability"] == "0.500000"
    trail = list(csv.DictReader(io.StringIO(trail_csv([{"note": name} for name in names]))))
    assert [row["note"] for row in trail] == [row["file"] for row in rows]  # one rule for both


def test_worklist_csv_has_the_pattern_of_a_pneumonia_call_and_empty_cells_for_a_normal_one(tiny_subtype):
    from helpers import calling_every_film, encode, synthetic_xray
    from pneumo_model.prediction import Predictor
    from pneumo_model.subtype import PATTERNS

    rng = np.random.default_rng(4)
    files = [(f"film{index}.png", encode(synthetic_xray(rng, 96, lesion=index == 0))) for index in range(2)]
    predictor = Predictor.from_file(tiny_subtype, subtype=True)
    called = worklist.score_files(files[:1], calling_every_film(predictor, "pneumonia")).table
    normal = worklist.score_files(files[1:], calling_every_film(predictor, "normal")).table
    table = pd.concat([called, normal], ignore_index=True)
    rows = list(csv.DictReader(io.StringIO(worklist.to_csv(worklist.masked(table, False), "m").decode("utf-8"))))
    pattern = calling_every_film(predictor, "pneumonia").call(worklist.DecodedImage.decode(files[0][1]))  # predict's
    assert rows[0]["call"] == "pneumonia" and rows[0]["subtype"] in PATTERNS
    assert rows[0]["subtype"] == called["subtype"][0]
    assert rows[0]["subtype_probability"] == f"{called['subtype_probability'][0]:.6f}"
    assert float(rows[0]["subtype_probability"]) == pytest.approx(pattern.subtype_probability, abs=1e-6)
    assert rows[1]["call"] == "normal" and rows[1]["subtype"] == "" and rows[1]["subtype_probability"] == ""


def test_byte_budget_cache_holds_at_most_its_budget_and_freezes_values():
    cache = ByteBudgetCache(max_bytes=10_000_000)
    computed = []

    def make(index):
        computed.append(index)
        return np.zeros(3_000_000, np.uint8), index  # 3 MB and a little

    for index in range(5):
        cache.get_or_compute(("image", index), lambda: make(index))
    assert cache.held <= 10_000_000 and len(cache) == 3  # the two oldest were dropped
    assert ("image", 0) not in cache and ("image", 4) in cache
    value = cache.get_or_compute(("image", 4), lambda: make(99))
    assert computed == [0, 1, 2, 3, 4] and value[1] == 4  # a hit computes nothing
    assert not value[0].flags.writeable  # no session can change what another sees
    huge = cache.get_or_compute("huge", lambda: np.zeros(20_000_000, np.uint8))
    assert huge.size == 20_000_000 and "huge" not in cache and cache.held <= 10_000_000
    assert held_bytes((np.zeros(10, np.float64), "abc")) == 1024 + 80 + 3
    with pytest.raises(ZeroDivisionError):
        cache.get_or_compute("fails", lambda: 1 / 0)
    assert "fails" not in cache


def test_samples_are_labelled_from_their_file_names():
    samples = state.samples()
    assert len(samples) == 9
    expected = {"IM": "Normal", "NORMAL2": "Normal", "bacteria": "Bacterial", "virus": "Viral"}
    for sample in samples:
        key = next(k for k in ("bacteria", "virus", "NORMAL2", "IM") if k in sample.path.name)
        assert sample.label == expected[key], sample.path.name
    assert sorted(sample.label for sample in samples) == ["Bacterial"] * 3 + ["Normal"] * 4 + ["Viral"] * 2
    assert all(sample.path.is_file() for sample in samples)
    assert state.UPLOAD_TYPES == ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm", "dicom"]
