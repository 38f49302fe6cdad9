"""Display copies of an image and a crop box drawn on one; for the screen only, never for the model."""

from __future__ import annotations

import cv2
import numpy as np

from pneumo_model.explain import VERMILLION
from pneumo_model.preprocessing import to_unit_range

DISPLAY_MAX_SIDE = 1024


def display_copy(pixels: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """The grey image for the screen: float32 (h, w) in [0, 1], its longer side at most ``max_side``.

    Full-size radiographs (3000 px and more) would make every overlay and every rerun slow to
    draw and to send; the aspect ratio is kept, so overlays drawn on this copy stay in place.

    Args:
        pixels: 2-D grey image as ``load_image`` returns it (intensities by ``to_unit_range``). Not modified.
        max_side: longest side of the copy, in pixels.
    """
    unit = to_unit_range(pixels)  # (H, W) float32, a new array
    scale = max_side / max(unit.shape)
    if scale >= 1.0:
        return unit
    size = (max(1, round(unit.shape[1] * scale)), max(1, round(unit.shape[0] * scale)))  # (w, h) for OpenCV
    return cv2.resize(unit, size, interpolation=cv2.INTER_AREA)


def draw_crop(
    display: np.ndarray, box: tuple[int, int, int, int], original_shape: tuple[int, int], dim: float = 0.35
) -> np.ndarray:
    """The display copy with what the crop removes dimmed and the box outlined.

    Args:
        display: grey display copy (h, w), float in [0, 1] (``display_copy``). Not modified.
        box: ``(x0, y0, x1, y1)`` in pixels of the original image, x1 and y1 exclusive.
        original_shape: (height, width) of the original image the box refers to.
        dim: brightness kept outside the box, in [0, 1].

    Returns:
        New (h, w, 3) uint8 RGB image.
    """
    height, width = display.shape
    scale_y, scale_x = height / original_shape[0], width / original_shape[1]
    x0, x1 = (min(width, round(x * scale_x)) for x in (box[0], box[2]))
    y0, y1 = (min(height, round(y * scale_y)) for y in (box[1], box[3]))
    rgb = np.repeat(display[:, :, np.newaxis] * dim, 3, axis=2)  # (h, w, 3) float
    rgb[y0:y1, x0:x1] = display[y0:y1, x0:x1, np.newaxis]
    image = np.round(rgb * 255.0).astype(np.uint8)
    line = max(2, round(max(height, width) / 150))
    cv2.rectangle(image, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), VERMILLION, thickness=line)
    return image
