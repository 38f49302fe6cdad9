"""The app's display helpers and demo-image list (no model, no Streamlit session needed)."""

import numpy as np

from pneumo_model.explain import VERMILLION
from ui import drawing, state


def test_display_copy_keeps_the_aspect_ratio_and_the_input():
    pixels = np.tile(np.arange(3000, dtype=np.uint16), (2000, 1))  # (2000, 3000)
    before = pixels.copy()
    display = drawing.display_copy(pixels, max_side=600)
    assert display.shape == (400, 600) and display.dtype == np.float32
    assert 0.0 <= display.min() and display.max() <= 1.0
    np.testing.assert_array_equal(pixels, before)
    small = np.full((100, 80), 128, np.uint8)
    assert drawing.display_copy(small, max_side=600).shape == (100, 80)  # never enlarged


def test_draw_crop_dims_the_removed_part_and_outlines_the_box():
    display = np.full((100, 200), 0.8, np.float32)
    image = drawing.draw_crop(display, box=(0, 0, 400, 100), original_shape=(200, 400))  # top half kept
    assert image.shape == (100, 200, 3) and image.dtype == np.uint8
    assert tuple(image[25, 100]) == (204, 204, 204)  # inside: unchanged
    assert image[75, 100].max() < 100  # below the box: dimmed
    assert tuple(image[49, 100]) == VERMILLION  # the box's lower edge
    assert display.max() == np.float32(0.8)  # input untouched


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
