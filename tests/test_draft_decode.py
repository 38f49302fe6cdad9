"""The model input of a large JPEG comes from a reduced-scale (draft) decode, the same for every face;
the whole-size pixels stay what ``load_image`` returns, and everything else is decoded as before."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helpers import FULLRES_DIR, encode, synthetic_xray
from pneumo_model.lab.draft_check import measure_agreement
from pneumo_model.pipeline import DecodedImage
from pneumo_model.pipeline import load_and_preprocess
from pneumo_model.preprocessing import DRAFT_RATIO, ImageLimits, load_image, preprocess


def film(rng, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(synthetic_xray(rng, 256, lesion=True)).resize((width, height)))


def test_a_large_jpeg_is_scored_from_a_draft_and_shows_its_whole_pixels(rng):
    data = encode(film(rng, 1600, 1200), "JPEG", quality=90)
    image = DecodedImage.decode(data)
    assert image.draft is not None and min(image.draft.shape) >= DRAFT_RATIO * 128
    assert image.draft.shape == (300 * 2, 400 * 2)  # 1/2 scale: 1/4 would leave 300 rows, under 384
    whole, info = load_image(data)
    assert image.info == info  # the same facts whichever decode made them
    np.testing.assert_array_equal(image.pixels, whole)
    assert not image.pixels.flags.writeable and not image.draft.flags.writeable
    model_input = image.model_input(128)
    np.testing.assert_array_equal(model_input, preprocess(image.draft, 128))
    # Every face makes the same input from the same bytes: decoded whole first (the app), through
    # load_and_preprocess (training's loader), or a path (predict).
    np.testing.assert_array_equal(DecodedImage.decode(data, whole=True).model_input(128), model_input)
    np.testing.assert_array_equal(load_and_preprocess(data, 128)[0], model_input)
    # The draft is close to the whole decode, not equal to it.
    assert 0 < np.abs(preprocess(whole, 128) - model_input).max() < 0.05
    # A model input larger than a third of the draft's side comes from the whole pixels.
    np.testing.assert_array_equal(image.model_input(256), preprocess(whole, 256))


def test_small_jpegs_other_formats_and_a_zero_draft_side_are_decoded_whole_as_before(rng):
    pixels = film(rng, 224, 224)
    cases = [
        (encode(pixels, "JPEG"), ImageLimits()),  # the data set's 224 px files: never drafted
        (encode(film(rng, 1000, 383), "JPEG"), ImageLimits()),  # a side under 384 at 1/2
        (encode(film(rng, 1600, 1200), "PNG"), ImageLimits()),
        (encode(film(rng, 1600, 1200), "JPEG"), ImageLimits(draft_side=0)),
    ]
    for data, limits in cases:
        image = DecodedImage.decode(data, limits)
        assert image.draft is None
        whole, info = load_image(data, limits)
        assert image.info == info
        np.testing.assert_array_equal(image.model_input(128), preprocess(whole, 128))


def test_a_huge_turned_jpeg_states_the_working_size_reduction_and_warnings_of_the_whole_decode(rng):
    exif = Image.Exif()
    exif[0x0112] = 6  # a quarter turn
    buffer = io.BytesIO()
    Image.fromarray(film(rng, 4400, 4000)).save(buffer, format="JPEG", quality=80, exif=exif)
    data = buffer.getvalue()
    image = DecodedImage.decode(data)
    whole, info = load_image(data)
    assert image.draft is not None and image.draft.shape[0] > image.draft.shape[1]  # turned upright
    assert info.reduction == 2 and image.info.reduction == info.reduction
    assert image.info.warnings == info.warnings and any("reduced to 2000 x 2200" in w for w in info.warnings)
    assert image.pixels.shape == whole.shape == (2200, 2000)


@pytest.mark.data
@pytest.mark.shipped_model
def test_on_the_48_full_size_originals_the_draft_agrees_with_the_whole_decode():
    report = measure_agreement(FULLRES_DIR)
    assert report["files"] == 48 and report["drafted"] > 0
    assert report["median_abs_delta_logit"] <= 0.05 and report["max_abs_delta_logit"] <= 0.3
    assert report["ood_flags_changed"] == 0
