"""The diaphragm crop: detection on synthetic and real chests, fail-soft, box checks, rescoring, markers."""

import csv

import cv2
import numpy as np
import pytest

from helpers import FULLRES_DIR, encode, same_report
from pneumo_model.artifacts import DEFAULT_MODEL_PATH, REPO_ROOT
from pneumo_model.crop import (
    CropLimits,
    DiaphragmSettings,
    MarkerSettings,
    apply_crop,
    edit_pixels,
    find_diaphragm,
    find_markers,
    fit_box,
    validate_box,
)
from pneumo_model.data import DEFAULT_DATA_DIR
from pneumo_model.errors import ConfigError, InvalidImageError
from pneumo_model.preprocessing import load_image, preprocess

ANNOTATIONS = REPO_ROOT / "assets" / "annotations" / "diaphragm.csv"
DATA_ROOT = DEFAULT_DATA_DIR.parent


def synthetic_chest(height: int, width: int, dome: float = 0.7, seed: int = 0) -> np.ndarray:
    """A uint8 chest: dark air, a trunk with ribs, a bright mediastinum and abdomen, and two dark
    lungs whose lower edges rise from the costophrenic angles to dome tops at row ``dome * height``
    next to the mediastinum (as the right hemidiaphragm does)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    y, x = (y + 0.5) / height, (x + 0.5) / width
    image = np.full((height, width), 0.08)
    trunk = np.abs(x - 0.5) < 0.42
    image[trunk] = 0.6
    image[trunk & (y > dome)] = 0.7
    lateral = (np.abs(x - 0.5) - 0.08) / 0.26  # 0 at the mediastinum, 1 at the chest wall
    lungs = (lateral > 0) & (lateral < 1) & (y > 0.15) & (y < dome + 0.12 * lateral**2)
    image[lungs] = 0.2
    image[trunk & (np.mod(y, 0.08) < 0.02) & (y < dome)] += 0.15  # ribs
    image[np.abs(x - 0.5) < 0.08] = 0.8
    image += rng.normal(0.0, 0.02, image.shape)
    return (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- detection, synthetic


@pytest.mark.parametrize("shape", [(224, 224), (1200, 1500), (700, 500)])
def test_finds_the_dome_of_a_synthetic_chest_in_image_pixels(shape):
    height, width = shape
    pixels = synthetic_chest(height, width, dome=0.7)
    result = find_diaphragm(pixels)
    assert result.found, result.reason
    assert (result.width, result.height, result.lung_count) == (width, height, 2)
    assert abs(result.diaphragm_y / height - 0.7) <= 0.03, result.diaphragm_y
    margin_rows = round(DiaphragmSettings().margin * height)
    assert result.box == (0, 0, width, min(height, result.diaphragm_y + 1 + margin_rows))
    for x0, y0, x1, y1 in (result.box, *result.lung_boxes):
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    left, right = sorted(result.lung_boxes)
    assert left[2] <= width / 2 <= right[0]  # one lung on each side of the midline


def test_the_dome_moves_with_the_diaphragm():
    high = find_diaphragm(synthetic_chest(224, 224, dome=0.6))
    low = find_diaphragm(synthetic_chest(224, 224, dome=0.78))
    assert high.found and low.found
    assert low.diaphragm_y - high.diaphragm_y == pytest.approx(0.18 * 224, abs=0.04 * 224)


def test_uint16_and_channel_axis_inputs_give_the_same_line():
    pixels = synthetic_chest(400, 480)
    reference = find_diaphragm(pixels)
    as_uint16 = find_diaphragm(pixels.astype(np.uint16) * 257)
    with_channel = find_diaphragm(pixels[:, :, np.newaxis])
    assert reference.found and as_uint16.found and with_channel.found
    assert abs(as_uint16.diaphragm_y - reference.diaphragm_y) <= 2
    assert with_channel == reference


def test_margin_setting_moves_only_the_box_edge():
    pixels = synthetic_chest(500, 500)
    tight = find_diaphragm(pixels, DiaphragmSettings(margin=0.0))
    loose = find_diaphragm(pixels, DiaphragmSettings(margin=0.1))
    assert tight.diaphragm_y == loose.diaphragm_y
    assert tight.box[3] == tight.diaphragm_y + 1
    assert loose.box[3] == tight.diaphragm_y + 1 + 50


@pytest.mark.parametrize(
    "pixels",
    [
        np.full((224, 224), 128, dtype=np.uint8),
        np.zeros((300, 400), dtype=np.uint8),
        np.full((256, 256), 40000, dtype=np.uint16),
        np.random.default_rng(0).integers(0, 256, (224, 224), dtype=np.uint8),
        np.random.default_rng(1).integers(0, 65536, (640, 512), dtype=np.uint16),
        np.random.default_rng(2).random((64, 80)),
    ],
    ids=["grey", "black", "grey16", "noise", "noise16", "noise-float"],
)
def test_fails_soft_when_there_is_no_chest(pixels):
    result = find_diaphragm(pixels)
    assert not result.found
    assert result.box is None and result.diaphragm_y is None
    assert result.reason.endswith(".") and "by hand" in result.reason


def test_refuses_a_line_too_high_to_be_a_diaphragm():
    result = find_diaphragm(synthetic_chest(300, 300, dome=0.7), DiaphragmSettings(dome_rows=(0.8, 0.97)))
    assert not result.found and result.box is None
    assert "too high" in result.reason
    assert result.lung_count == 2 and len(result.lung_boxes) == 2  # still shown, for drawing


def test_detection_does_not_change_its_input():
    pixels = synthetic_chest(300, 360)
    before = pixels.copy()
    find_diaphragm(pixels)
    np.testing.assert_array_equal(pixels, before)


def test_not_an_image_is_refused():
    with pytest.raises(InvalidImageError):
        find_diaphragm(np.zeros((10, 10, 3), dtype=np.uint8))
    with pytest.raises(InvalidImageError):
        find_diaphragm([[0, 1], [1, 0]])
    with pytest.raises(InvalidImageError):
        find_diaphragm(np.full((100, 100), 2.0))  # float outside [0, 1]


def test_settings_refuse_values_that_cannot_work():
    with pytest.raises(ConfigError, match="margin"):
        DiaphragmSettings(margin=-0.1)
    with pytest.raises(ConfigError, match="work_size"):
        DiaphragmSettings(work_size=16)
    with pytest.raises(ConfigError, match="min_area_fraction"):
        CropLimits(min_area_fraction=0.0)


# ----------------------------------------------------------------------------- apply_crop and boxes


def test_apply_crop_returns_a_new_array_with_the_box():
    pixels = np.arange(200 * 300, dtype=np.uint16).reshape(200, 300)
    before = pixels.copy()
    cropped = apply_crop(pixels, (10, 0, 300, 150))
    np.testing.assert_array_equal(cropped, pixels[0:150, 10:300])
    assert cropped.dtype == np.uint16 and cropped.shape == (150, 290)
    cropped[:] = 0
    np.testing.assert_array_equal(pixels, before)
    assert apply_crop(pixels[:, :, np.newaxis], (0, 0, 300, 150)).shape == (150, 300, 1)


def test_box_accepts_numpy_and_whole_float_numbers():
    assert validate_box(np.array([0, 0, 100, 80]), 100, 100) == (0, 0, 100, 80)
    assert validate_box([0.0, 10.0, 90.0, 100.0], 100, 100) == (0, 10, 90, 100)


@pytest.mark.parametrize(
    "box, words",
    [
        ((0, 0, 301, 150), "does not fit inside the 300 x 200 image"),
        ((-1, 0, 300, 150), "does not fit"),
        ((100, 0, 100, 150), "does not fit"),
        ((0, 150, 300, 100), "does not fit"),
        ((0, 0, 300, 20), "each side needs at least 32 pixels"),
        ((0, 0, 100, 100), "keep at least 25 %"),
        ((0, 0, 300), "four numbers"),
        ((0, 0, 300.5, 150), "whole numbers"),
        ((0, 0, float("nan"), 150), "whole numbers"),
        ((0, 0, True, 150), "whole numbers"),
        ("0,0,300,150", "four numbers"),
    ],
)
def test_bad_boxes_are_refused_with_a_reason(box, words):
    pixels = np.zeros((200, 300), dtype=np.uint8)
    with pytest.raises(ConfigError, match=words):
        apply_crop(pixels, box)


def test_limits_are_settings():
    pixels = np.zeros((200, 300), dtype=np.uint8)
    assert apply_crop(pixels, (0, 0, 100, 100), CropLimits(min_area_fraction=0.1)).shape == (100, 100)
    with pytest.raises(ConfigError, match="at least 120 pixels"):
        apply_crop(pixels, (0, 0, 300, 100), CropLimits(min_side=120))


def test_the_suggested_box_is_accepted_by_apply_crop():
    pixels = synthetic_chest(360, 420)
    result = find_diaphragm(pixels)
    cropped = apply_crop(pixels, result.box)
    assert cropped.shape == (result.box[3], 420)


# ----------------------------------------------------------------------------- rescore


def test_rescore_calls_the_whole_image_and_the_crop_through_the_one_pipeline(tiny_model):
    from pneumo_model.pipeline import DecodedImage
    from pneumo_model.prediction import Predictor

    pixels = np.zeros((200, 100), dtype=np.uint8)
    pixels[100:] = 255  # bright 'abdomen' in the lower half
    image = DecodedImage.decode(encode(pixels))
    predictor = Predictor.from_file(tiny_model)
    result = predictor.rescore(image, (0, 0, 100, 140))  # the top 70 %: a crop the rescore rule allows
    np.testing.assert_array_equal(image.pixels, pixels)  # the decoded image is not changed
    assert result.probability_before == predictor.call(image).probability
    size = predictor.input_size
    after = float(predictor.probabilities(preprocess(pixels[:140], size)[np.newaxis])[0])
    assert result.probability_after == pytest.approx(after, abs=1e-6)
    assert result.delta == result.probability_after - result.probability_before
    assert result.label_after == predictor.label_for(result.probability_after)
    assert result.grey_zone_after == bool(predictor.grey_zone.contains(result.probability_after))
    assert result.box == (0, 0, 100, 140) and result.threshold == predictor.threshold
    assert result.to_dict()["box"] == [0, 0, 100, 140]


def test_rescore_refuses_a_bad_box(tiny_model):
    from pneumo_model.pipeline import DecodedImage
    from pneumo_model.prediction import Predictor

    image = DecodedImage.decode(encode(np.zeros((200, 100), dtype=np.uint8)))
    with pytest.raises(ConfigError):
        Predictor.from_file(tiny_model).rescore(image, (0, 0, 100, 10))


@pytest.mark.shipped_model
def test_rescore_with_the_shipped_model_on_a_sample():
    from pneumo_model.pipeline import DecodedImage
    from pneumo_model.prediction import Predictor

    predictor = Predictor.from_file(DEFAULT_MODEL_PATH)
    sample = REPO_ROOT / "assets" / "samples" / "person100_bacteria_475.jpeg"
    image = DecodedImage.decode(sample)
    found = find_diaphragm(image.pixels)
    box = found.box if found.found else (0, 0, image.pixels.shape[1], int(0.75 * image.pixels.shape[0]))
    result = predictor.rescore(image, box)
    assert np.isfinite([result.probability_before, result.probability_after]).all()
    assert 0.0 <= result.probability_before <= 1.0 and 0.0 <= result.probability_after <= 1.0
    assert result.delta == result.probability_after - result.probability_before
    assert result.probability_before == predictor.predict_source(sample).probability
    assert result.label_after == predictor.label_for(result.probability_after)
    assert result.ood_before is False and result.ood_score_after is not None  # the gate on both calls


# ----------------------------------------------------------------------------- markers


def smooth_background(height: int = 256, width: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = 0.35 + 0.2 * y / height + 0.05 * np.sin(x / 40.0) + rng.normal(0.0, 0.01, (height, width))
    return (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def draw_letter(image: np.ndarray, value: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws an 'R' near the top-left corner; returns the new image and the letter's mask."""
    letter = np.zeros(image.shape, dtype=np.uint8)
    cv2.putText(letter, "R", (20, 45), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 255, 3)
    drawn = image.copy()
    drawn[letter > 0] = value
    return drawn, letter > 0


def test_a_burned_in_letter_is_found_and_painted_out():
    image, letter = draw_letter(smooth_background(), 255)
    before = image.copy()
    result = find_markers(image)
    np.testing.assert_array_equal(image, before)
    assert result.count == 1
    assert result.mask[letter].mean() >= 0.95  # the letter is covered
    assert result.mask.mean() <= 0.02  # and little else
    assert result.masked.dtype == np.uint8 and result.masked.shape == image.shape
    assert result.masked[letter].max() < 200  # no saturated pixel left where the letter was
    assert result.masked.max() < 250
    np.testing.assert_array_equal(result.masked[~result.mask], image[~result.mask])
    x0, y0, x1, y1 = result.boxes[0]
    rows, cols = np.nonzero(letter)
    assert x0 <= cols.min() and cols.max() < x1 and y0 <= rows.min() and rows.max() < y1


def test_a_letter_in_a_16_bit_image_is_painted_out_in_16_bits():
    image, letter = draw_letter(smooth_background().astype(np.uint16) * 200, 65535)
    result = find_markers(image)
    assert result.count == 1 and result.masked.dtype == np.uint16
    assert result.masked[letter].max() < 40000


@pytest.mark.parametrize(
    "image",
    [smooth_background(), synthetic_chest(300, 300), np.full((128, 128), 255, dtype=np.uint8)],
    ids=["smooth", "chest", "white"],
)
def test_no_markers_no_mask(image):
    result = find_markers(image)
    assert result.count == 0 and not result.mask.any()
    np.testing.assert_array_equal(result.masked, image)
    assert result.masked is not image


def test_a_grey_letter_is_left_alone():
    image, _ = draw_letter(smooth_background(), 170)  # not near-saturated: could be anatomy
    assert find_markers(image).count == 0


def test_marker_settings_refuse_values_that_cannot_work():
    with pytest.raises(ConfigError, match="max_size"):
        MarkerSettings(max_size=0.0)


# ----------------------------------------------------------------------------- real images


def read_annotations():
    with ANNOTATIONS.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_annotation_file_is_well_formed():
    rows = read_annotations()
    assert len(rows) >= 20
    assert set(rows[0]) == {"file", "width", "height", "diaphragm_y", "note"}
    files = [row["file"] for row in rows]
    assert len(set(files)) == len(files)
    assert sum(f.startswith("chest_xray_fullres_sample/") for f in files) >= 10
    assert sum(f.startswith("chest_xray_224/test/") for f in files) >= 12
    for row in rows:
        assert 0 < int(row["diaphragm_y"]) < int(row["height"])


@pytest.mark.data
def test_detector_agrees_with_the_annotations():
    errors, missed = [], []
    for row in read_annotations():
        pixels, info = load_image(DATA_ROOT / row["file"])
        assert (info.width, info.height) == (int(row["width"]), int(row["height"])), row["file"]
        result = find_diaphragm(pixels)
        if not result.found:
            missed.append(row["file"])
            continue
        assert 0 <= result.box[1] < result.box[3] <= info.height
        errors.append(abs(result.diaphragm_y - int(row["diaphragm_y"])) / info.height)
    rows = len(errors) + len(missed)
    assert len(errors) >= 0.8 * rows, f"found on {len(errors)} of {rows}; missed {missed}"
    median = float(np.median(errors))
    assert median <= 0.05, f"median |error| {100 * median:.1f} % of the height (max {100 * max(errors):.1f} %)"


@pytest.mark.data
def test_full_size_originals_and_their_224px_copies_give_the_same_line():
    originals = sorted(FULLRES_DIR.glob("train/*/*.jpeg"))
    assert len(originals) == 48
    differences = []
    for original in originals:
        full, _ = load_image(original)
        small, _ = load_image(DEFAULT_DATA_DIR / "train" / original.parent.name / original.name)
        on_full = find_diaphragm(full)
        on_small = find_diaphragm(small)
        if on_full.found:
            x0, y0, x1, y1 = on_full.box
            assert (x0, y0, x1) == (0, 0, full.shape[1]) and 0 < y1 <= full.shape[0]
        if on_full.found and on_small.found:
            differences.append(abs(on_full.diaphragm_y / full.shape[0] - on_small.diaphragm_y / small.shape[0]))
    assert len(differences) >= 0.9 * len(originals)
    assert np.median(differences) <= 0.02
    assert np.mean(np.array(differences) <= 0.05) >= 0.9
    # Its speed (target 200 ms per image) is the bench's to measure: ``diaphragm_s`` in reports/bench.json.


# ----------------------------------------------------------------------------- boxes that cannot break


@pytest.mark.parametrize(
    "box, previous, expected",
    [
        ((0, 0, 300, 150), None, (0, 0, 300, 150)),  # already accepted: unchanged
        ((0, 0, 300, 0), None, (0, 0, 300, 50)),  # an empty box: the bottom edge gives way
        ((0, 100, 300, 100), (0, 0, 300, 100), (0, 50, 300, 100)),  # the top edge was dragged: it stops at the limit
        ((0, 180, 300, 200), (0, 0, 300, 200), (0, 150, 300, 200)),
        ((0, 190, 300, 200), (0, 150, 300, 200), (0, 150, 300, 200)),
        ((0, 0, 300, 10), (0, 0, 300, 150), (0, 0, 300, 50)),  # the bottom edge was dragged up
        ((0, 0, 20, 200), (0, 0, 300, 200), (0, 0, 75, 200)),  # columns: 25 % of the area at full height
        ((250, 0, 300, 200), (0, 0, 300, 200), (225, 0, 300, 200)),
        ((0, 0, 75, 160), (0, 0, 75, 200), (0, 0, 75, 200)),  # at 25 % already: the dragged edge stops
        ((0, 0, 75, 160), None, (0, 0, 75, 200)),
        ((0, 0, 10, 10), None, (0, 0, 75, 200)),  # no previous box: the rows first (to full height), then the columns
        ((300, 200, 0, 0), None, (0, 0, 300, 200)),  # reversed edges are put in order
        ((-50, -10, 900, 700), None, (0, 0, 300, 200)),  # clipped to the image
    ],
)
def test_fit_box_grows_a_box_as_little_as_possible(box, previous, expected):
    fitted = fit_box(box, 300, 200, previous=previous)
    assert fitted == expected
    assert validate_box(fitted, 300, 200) == fitted


def test_fit_box_never_returns_a_box_validate_box_refuses():
    rng = np.random.default_rng(0)
    for width, height in ((224, 224), (1640, 1304), (64, 256), (2000, 64)):
        previous = (0, 0, width, height)
        for _ in range(300):
            box = tuple(int(v) for v in rng.integers(-5, max(width, height) + 5, 4))
            fitted = fit_box(box, width, height, previous=previous)
            assert validate_box(fitted, width, height) == fitted, (box, previous)
            previous = fitted
    for limits in (CropLimits(min_side=10, min_area_fraction=0.3), CropLimits(min_side=64, min_area_fraction=1.0)):
        assert validate_box(fit_box((3, 3, 3, 3), 97, 131, limits), 97, 131, limits)


def test_fit_box_refuses_what_is_not_a_box_or_an_image_too_small():
    with pytest.raises(ConfigError, match="four whole numbers"):
        fit_box((0, 0, 10.5, 10), 100, 100)
    with pytest.raises(ConfigError, match="smaller than the smallest crop"):
        fit_box((0, 0, 20, 20), 20, 100)


# ----------------------------------------------------------------------------- masking markers, and masking with a crop


def test_edit_pixels_paints_out_the_markers_then_crops_and_changes_nothing():
    image, letter = draw_letter(smooth_background(), 255)
    before = image.copy()
    markers = find_markers(image)
    assert markers.count == 1 and markers.area_fraction == pytest.approx(markers.mask.mean())
    masked = edit_pixels(image, markers=markers)
    np.testing.assert_array_equal(masked, markers.masked)
    assert masked.dtype == image.dtype and masked.shape == image.shape and masked is not markers.masked
    both = edit_pixels(image, (0, 0, 256, 128), markers)
    np.testing.assert_array_equal(both, markers.masked[:128])
    np.testing.assert_array_equal(edit_pixels(image, (0, 0, 256, 128)), image[:128])
    plain_copy = edit_pixels(image)
    np.testing.assert_array_equal(plain_copy, image)
    assert plain_copy is not image
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float64])
def test_masking_keeps_the_shape_and_type(dtype):
    image, letter = draw_letter(smooth_background(), 255)
    if dtype == np.uint16:
        image = image.astype(np.uint16) * 257
    elif dtype == np.float64:
        image = image / 255.0
    markers = find_markers(image[:, :, np.newaxis])
    masked = edit_pixels(image[:, :, np.newaxis], markers=markers)
    assert markers.count == 1 and masked.shape == (256, 256, 1) and masked.dtype == dtype
    assert masked[:, :, 0][letter].max() < 0.8 * (np.iinfo(dtype).max if dtype != np.float64 else 1.0)


def test_markers_of_another_image_are_refused():
    image, _ = draw_letter(smooth_background(), 255)
    markers = find_markers(image)
    with pytest.raises(ConfigError, match="another image"):
        edit_pixels(image[:200], markers=markers)
    with pytest.raises(ConfigError, match="another image"):
        edit_pixels(image.astype(np.uint16), markers=markers)


def _marked_image(tiny_model):
    from pneumo_model.pipeline import DecodedImage
    from pneumo_model.prediction import Predictor

    pixels, _ = draw_letter(smooth_background(), 255)
    return DecodedImage.decode(encode(pixels)), Predictor.from_file(tiny_model)


def test_the_masked_call_is_the_call_on_the_masked_pixels(tiny_model):
    image, predictor = _marked_image(tiny_model)
    markers = find_markers(image.pixels)
    assert markers.count == 1
    size = predictor.input_size
    masked = predictor.call_masked(image, markers)
    expected = float(predictor.probabilities(preprocess(markers.masked, size)[np.newaxis])[0])
    assert masked.probability == pytest.approx(expected, abs=1e-6)
    assert predictor.call_masked(image).probability == masked.probability  # finds the same markers itself
    assert masked.label == predictor.label_for(masked.probability) and masked.threshold == predictor.threshold
    assert masked.operating_point == predictor.operating_point.id and masked.info == image.info
    # Masking and a crop: the markers are painted out on the whole image, then it is cropped.
    both = predictor.call_masked(image, markers, (0, 0, 256, 160))
    expected = float(predictor.probabilities(preprocess(markers.masked[:160], size)[np.newaxis])[0])
    assert both.probability == pytest.approx(expected, abs=1e-6)
    cropped = predictor.call_on_crop(image, (0, 0, 256, 160))
    assert cropped.probability == pytest.approx(
        float(predictor.probabilities(preprocess(image.pixels[:160], size)[np.newaxis])[0]), abs=1e-6
    )
    assert not image.pixels.flags.writeable and find_markers(image.pixels).count == 1  # the image is not changed


def test_rescore_with_markers_alone_or_with_a_crop(tiny_model):
    image, predictor = _marked_image(tiny_model)
    markers = find_markers(image.pixels)
    alone = predictor.rescore(image, markers=markers)
    assert alone.box is None and alone.markers_masked and alone.marker_count == 1
    assert alone.marker_area_fraction == markers.area_fraction
    assert alone.probability_before == predictor.call(image).probability
    assert alone.probability_after == predictor.call_masked(image, markers).probability
    record = alone.to_dict()
    assert record["box"] is None and record["marker_count"] == 1 and record["markers_masked"] is True
    assert {"reading_before", "reading_after", "threshold_crossed", "call_changed"} <= set(record)
    both = predictor.rescore(image, (0, 0, 256, 160), markers=markers)
    assert both.box == (0, 0, 256, 160) and both.probability_after == predictor.call_masked(image, markers, (0, 0, 256, 160)).probability
    crop_only = predictor.rescore(image, (0, 0, 256, 160))
    assert not crop_only.markers_masked and crop_only.marker_count is None and crop_only.to_dict()["marker_area_fraction"] is None
    with pytest.raises(ConfigError, match="Nothing to rescore"):
        predictor.rescore(image)


# ----------------------------------------------------------------------------- a change of call


class _Call:
    """What ``RescoreResult.from_calls`` reads from a ``Prediction``, at the shipped model's operating point."""

    def __init__(self, probability: float, threshold: float = 0.241, zone: tuple[float, float] = (0.057, 0.625)):
        self.probability, self.threshold = probability, threshold
        self.label = "pneumonia" if probability >= threshold else "normal"
        self.grey_zone = zone[0] <= probability < zone[1]
        self.ood = self.ood_score = None


@pytest.mark.parametrize(
    "before, after, crossed, changed, readings",
    [
        (0.002, 0.777, True, True, ("normal", "pneumonia")),  # confident normal to confident pneumonia
        (0.983, 0.050, True, True, ("pneumonia", "normal")),
        (0.256, 0.240, True, False, ("indeterminate", "indeterminate")),  # 0.016 across the threshold, in the zone
        (0.040, 0.300, True, False, ("normal", "indeterminate")),  # into the grey zone across the threshold
        (0.300, 0.890, False, False, ("indeterminate", "pneumonia")),  # out of the zone, same side
        (0.990, 0.700, False, False, ("pneumonia", "pneumonia")),
    ],
)
def test_a_change_of_call_is_one_from_a_confident_side_to_the_other(before, after, crossed, changed, readings):
    from pneumo_model.crop import RescoreResult

    result = RescoreResult.from_calls(_Call(before), _Call(after))
    assert result.label_changed is crossed and result.call_changed is changed
    assert (result.reading_before, result.reading_after) == readings
    assert result.box is None and not result.markers_masked


# ----------------------------------------------------------------------------- the marker evaluation report

MARKER_REPORT = REPO_ROOT / "reports" / "marker_evaluation.json"


def test_committed_marker_report_names_the_shipped_model_and_its_columns():
    import json

    from pneumo_model.artifacts import read_metadata
    from pneumo_model.lab.evaluation import MARKER_COLUMNS, MARKER_COMPARISONS, marker_markdown

    report = json.loads(MARKER_REPORT.read_text())
    assert report["model_sha256"] == read_metadata(DEFAULT_MODEL_PATH).model_sha256
    assert report["split"] == "test" and report["images"] == 624 and report["command"] == "python -m pneumo_model evaluate --crop markers"
    assert set(report["metrics"]) == set(MARKER_COLUMNS)
    assert set(report["changes"]) == {name for name, _, _ in MARKER_COMPARISONS}
    for change in report["changes"].values():
        assert 0 <= change["call_changed"] <= change["threshold_crossed"] <= report["images"]
    markers = report["markers"]
    assert markers["found_normal"] + markers["found_pneumonia"] == markers["found_images"]
    assert markers["found_fraction"] == pytest.approx(markers["found_images"] / report["images"])
    assert (REPO_ROOT / "reports" / "marker_evaluation.md").read_text() == marker_markdown(report)


def test_results_doc_marker_evaluation_is_the_generated_report():
    readme = (REPO_ROOT / "docs" / "results.md").read_text()
    block = readme.split("<!-- marker_evaluation:start -->\n", 1)[1].split("<!-- marker_evaluation:end -->", 1)[0]
    assert block == (REPO_ROOT / "reports" / "marker_evaluation.md").read_text()


@pytest.mark.data
@pytest.mark.shipped_model
def test_committed_marker_report_is_what_the_command_gives(tmp_path):
    # About 35 s on the 2-core CPU. It logs its test-split use in tmp_path, not in reports/.
    import json

    from pneumo_model.cli import main

    argv = ["evaluate", "--crop", "markers", "--reports", str(tmp_path)]
    assert main(argv) == 0
    fresh = json.loads((tmp_path / "marker_evaluation.json").read_text())
    same_report(json.loads(MARKER_REPORT.read_text()), fresh)
    assert fresh["fullres_detection"]["images"] == 48


def test_markers_are_outlined_outside_their_box_on_the_screen_copy():
    from ui.drawing import SKY_BLUE, draw_markers

    screen = np.full((200, 400), 90, np.uint8)  # the screen copy of a 400 x 800 image: half size
    before = screen.copy()
    outlined = draw_markers(screen, ((100, 100, 140, 140),), (400, 800))
    np.testing.assert_array_equal(screen, before)
    assert outlined.shape == (200, 400, 3) and outlined.dtype == np.uint8
    blue = np.all(outlined == SKY_BLUE, axis=2)
    rows, columns = np.nonzero(blue)
    assert rows.min() < 50 and rows.max() >= 70 and columns.min() < 50 and columns.max() >= 70  # around 50..70
    assert not blue[52:68, 52:68].any()  # the marker itself stays visible
    with pytest.raises(TypeError):
        draw_markers(screen.astype(np.float32), (), (400, 800))
