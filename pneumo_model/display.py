"""Pictures for a screen: the one place that turns pixels into something a page may show.

Every picture the app shows is an 8-bit array made here (or by the explain module's overlays,
which end in the same conversion), so its range holds by construction: whatever the source
(uint8, uint16 using 10, 12 or 16 of its bits, float in [0, 1], a constant image) and whatever
rounding a resize adds (``cv2.resize`` with INTER_AREA can return 1.0000001 from values in
[0, 1]), the result is uint8. Nothing here is ever given to the model.
"""

from __future__ import annotations

import cv2
import numpy as np

from .errors import InvalidImageError
from .preprocessing import to_unit_range

SCREEN_MAX_SIDE = 1024


def unit_to_uint8(unit: np.ndarray) -> np.ndarray:
    """Float intensities in [0, 1] (up to rounding) as uint8, clipped.

    Args:
        unit: float array of any shape; values a hair outside [0, 1] (resampling round-off) are
            clipped. Not modified.

    Returns:
        New uint8 array of the same shape.

    Raises:
        InvalidImageError: the array holds NaN or infinite values, or is not float.
    """
    if not np.issubdtype(unit.dtype, np.floating):
        raise InvalidImageError(f"Expected float intensities in [0, 1]; got dtype {unit.dtype}.")
    if not np.all(np.isfinite(unit)):
        raise InvalidImageError("The picture holds NaN or infinite values and cannot be shown.")
    return np.clip(np.rint(unit * 255.0), 0.0, 255.0).astype(np.uint8)


def screen_grey(pixels: np.ndarray, max_side: int = SCREEN_MAX_SIDE) -> np.ndarray:
    """The grey picture of an image for the screen: uint8 (h, w), its longer side at most ``max_side``.

    Full-size radiographs (3000 px and more) would make every overlay and every rerun slow to
    draw and to send; the aspect ratio is kept, so overlays drawn on this copy stay in place,
    and a smaller image is never enlarged.

    Args:
        pixels: 2-D grey image as ``load_image`` returns it: uint8, uint16 or float in [0, 1]
            (intensities by ``to_unit_range``). Not modified.
        max_side: longest side of the copy, in pixels (at least 1).

    Returns:
        New uint8 array (h, w) with ``max(h, w) <= max_side``.

    Raises:
        InvalidImageError: not a non-empty 2-D grey image, or its values break the intensity rule.
    """
    if pixels.ndim != 2 or pixels.size == 0:
        raise InvalidImageError(f"Expected a non-empty grey image of shape (height, width); got shape {pixels.shape}.")
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1; got {max_side}.")
    scale = max_side / max(pixels.shape)
    if scale >= 1.0:
        if pixels.dtype == np.uint8:
            return pixels.copy()
        return unit_to_uint8(to_unit_range(pixels))
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))  # (w, h) for OpenCV
    if pixels.dtype == np.uint8:
        # Resampled in 8 bits: no float copy of a full-size film, and the result is uint8 by type.
        return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    if pixels.dtype == np.uint16:
        # Resampled in 16 bits, then stretched by the full image's own range (``to_unit_range``'s
        # rule), so no full-size float copy is made.
        low, high = float(pixels.min()), float(pixels.max())
        small = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA).astype(np.float32)  # (h, w)
        if high <= low:
            return np.zeros(small.shape, dtype=np.uint8)
        return unit_to_uint8((small - low) / (high - low))
    unit = to_unit_range(pixels)  # (H, W) float32 in [0, 1], a new array
    return unit_to_uint8(cv2.resize(unit, size, interpolation=cv2.INTER_AREA))  # (h, w) uint8
