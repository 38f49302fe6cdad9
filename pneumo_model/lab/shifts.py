"""Deliberate shifts of model inputs: the anatomy narrowed or widened, the lower part cropped off,
the resolution lowered.

They mimic the known shortcuts of this data set (see ``stress``) and what a diaphragm crop does
to an image. The stress report scores validation images under them; fitting the
out-of-distribution gate uses ``keep_top`` so that a diaphragm-cropped X-ray is in distribution.
Each takes one model input, (size, size) or (size, size, 1) float32 in [0, 1], leaves it
unchanged and returns a float32 array of the same shape.
"""

from __future__ import annotations

import cv2
import numpy as np


def change_aspect(image: np.ndarray, factor: float) -> np.ndarray:
    """Changes the width / height ratio of the content by ``factor``, keeping the square size.

    Below 1 the central ``factor`` share of the rows is stretched to full height (content looks
    narrower); above 1 the central ``1 / factor`` share of the columns is stretched to full
    width (content looks wider). Cropping instead of padding adds no borders.

    Args:
        image: (size, size) or (size, size, 1) float32 in [0, 1]; not modified.
        factor: positive ratio; 1 returns a copy.

    Returns:
        float32 array of the input's shape.
    """
    if factor <= 0:
        raise ValueError(f"aspect factor must be positive, got {factor}")
    plane = np.asarray(image, dtype=np.float32).reshape(image.shape[0], image.shape[1])
    size = plane.shape[0]
    if factor < 1:
        rows = max(1, int(round(size * factor)))
        top = (size - rows) // 2
        crop = plane[top : top + rows]
    else:
        cols = max(1, int(round(size / factor)))
        left = (size - cols) // 2
        crop = plane[:, left : left + cols]
    resized = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(image.shape).astype(np.float32)


def keep_top(image: np.ndarray, keep: float) -> np.ndarray:
    """Keeps the top ``keep`` share of the rows, stretched back to full height (float32 copy)."""
    plane = np.asarray(image, dtype=np.float32).reshape(image.shape[0], image.shape[1])
    rows = max(1, int(round(plane.shape[0] * keep)))
    resized = cv2.resize(plane[:rows], (plane.shape[1], plane.shape[0]), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(image.shape).astype(np.float32)


def lower_resolution(image: np.ndarray, scale: float) -> np.ndarray:
    """Downsamples to ``scale`` of the side (area) and back up (bilinear); float32 copy."""
    plane = np.asarray(image, dtype=np.float32).reshape(image.shape[0], image.shape[1])
    height, width = plane.shape
    small = cv2.resize(plane, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR).reshape(image.shape).astype(np.float32)
