"""The image contract: load_image and preprocess on every input kind, and refusals with reasons."""

import numpy as np
import pytest
from PIL import Image

from helpers import encode, synthetic_xray
from pneumo_model.errors import InvalidImageError
from pneumo_model.preprocessing import ImageLimits, load_image, preprocess, to_unit_range


def assert_model_input(array, size=128):
    assert array.dtype == np.float32
    assert array.shape == (size, size, 1)
    assert array.min() >= 0.0 and array.max() <= 1.0
    assert np.isfinite(array).all()


@pytest.fixture
def grey(rng):
    return synthetic_xray(rng, size=200)


def test_grey_png_gives_uint8_and_contract(grey, tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(encode(grey))
    pixels, info = load_image(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (200, 200)
    np.testing.assert_array_equal(pixels, grey)
    assert (info.width, info.height, info.bit_depth, info.format, info.warnings) == (200, 200, 8, "PNG", ())
    assert_model_input(preprocess(pixels))


def test_path_and_bytes_give_the_same_pixels(grey, tmp_path):
    data = encode(grey, "JPEG", quality=90)
    (tmp_path / "x.jpeg").write_bytes(data)
    np.testing.assert_array_equal(load_image(data)[0], load_image(tmp_path / "x.jpeg")[0])


def test_rgb_with_equal_channels_is_the_same_as_grey(grey):
    from_rgb, info = load_image(encode(grey, "PNG", "RGB"))
    np.testing.assert_array_equal(from_rgb, grey)
    assert info.warnings == ()


def test_colour_image_is_converted_with_a_warning(rng):
    colour = rng.integers(0, 255, (100, 120, 3), dtype=np.uint8)
    pixels, info = load_image(encode(colour))
    assert pixels.shape == (100, 120) and pixels.dtype == np.uint8
    assert any("colour" in w for w in info.warnings)


def test_16_bit_png_is_stretched_from_its_own_range(rng):
    twelve_bit = (rng.random((100, 100)) * 4095).astype(np.uint16)
    image = Image.fromarray(twelve_bit)
    pixels, info = load_image(encode(np.asarray(image)))
    assert pixels.dtype == np.uint16 and info.bit_depth == 16
    unit = to_unit_range(pixels)
    assert unit.min() == 0.0 and unit.max() == pytest.approx(1.0)
    assert_model_input(preprocess(pixels))


def test_rgba_is_composited_on_black(grey):
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    rgba[:50, :, 3] = 0  # transparent top rows
    pixels, info = load_image(encode(rgba))
    assert (pixels[:50] == 0).all()
    np.testing.assert_array_equal(pixels[60:], grey[60:])
    assert any("transparen" in w for w in info.warnings)


def test_palette_png_is_accepted(grey):
    palette = encode(grey, "PNG", "P")
    pixels, _ = load_image(palette)
    assert pixels.shape == grey.shape and pixels.dtype == np.uint8


def test_exif_rotation_is_applied_with_a_warning(rng):
    tall = synthetic_xray(rng, size=120)[:, :90]  # 120 high, 90 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    pixels, info = load_image(encode(tall, "JPEG", exif=exif))
    assert pixels.shape == (90, 120)
    assert any("EXIF" in w for w in info.warnings)


def test_preprocess_never_modifies_its_input(grey):
    for array in (grey, grey.astype(np.uint16) * 200, grey.astype(np.float32) / 255):
        before = array.copy()
        preprocess(array, size=64)
        np.testing.assert_array_equal(array, before)


def test_preprocess_squashes_the_whole_image(rng):
    wide = np.zeros((100, 300), dtype=np.uint8)
    wide[:, 200:] = 255  # right third bright
    out = preprocess(wide, size=30)[:, :, 0]
    assert out[:, 21:].min() > 0.99 and out[:, :19].max() < 0.01


def test_preprocess_accepts_a_trailing_channel_axis(grey):
    np.testing.assert_array_equal(preprocess(grey[:, :, None], 32), preprocess(grey, 32))


@pytest.mark.parametrize(
    "array, reason",
    [
        (np.zeros((0, 10), np.uint8), "non-empty grey image"),
        (np.zeros((10, 10, 3), np.uint8), "non-empty grey image"),
        (np.full((10, 10), 2.0, np.float32), "[0, 1]"),
        (np.full((10, 10), np.nan, np.float32), "[0, 1]"),
        (np.zeros((10, 10), np.int64), "not supported"),
    ],
)
def test_preprocess_refuses_arrays_that_break_the_contract(array, reason):
    with pytest.raises(InvalidImageError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        preprocess(array)


def test_bad_files_are_refused_with_a_specific_reason(tmp_path, grey):
    png = encode(grey)
    cases = {
        "empty": (b"", "empty"),
        "random bytes": (np.random.default_rng(0).bytes(2000), "not a readable image"),
        "html named png": (b"<html><body>not an image</body></html>", "not a readable image"),
        "truncated png": (png[: len(png) // 2], "damaged or incomplete"),
        "truncated jpeg": (encode(grey, "JPEG")[:300], "damaged or incomplete"),
        "gif": (encode(grey, "GIF"), "GIF files are not supported"),
        "tiny": (encode(np.zeros((1, 1), np.uint8)), "at least 64 pixels"),
        "strip": (encode(np.zeros((5, 6000), np.uint8)), "no chest radiograph has"),  # shape is checked first
        "extreme aspect": (encode(np.zeros((100, 1000), np.uint8)), "no chest radiograph has"),
    }
    for name, (data, reason) in cases.items():
        with pytest.raises(InvalidImageError, match=reason):
            load_image(data)
    with pytest.raises(InvalidImageError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InvalidImageError, match="is a folder"):
        load_image(tmp_path)


def test_limits_are_settings(grey):
    with pytest.raises(InvalidImageError, match="pixel limit"):
        load_image(encode(grey), ImageLimits(max_pixels=1000))
    with pytest.raises(InvalidImageError, match="MB limit"):
        load_image(encode(grey), ImageLimits(max_bytes=100))
