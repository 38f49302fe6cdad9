"""Deliberate shifts of model inputs: the anatomy narrowed or widened, the lower part cropped off,
the resolution lowered.

They mimic the known shortcuts of this data set (see ``stress``) and what a diaphragm crop does
to an image. The stress report scores validation images under them; fitting the
out-of-distribution gate uses ``keep_top`` so that a diaphragm-cropped X-ray is in distribution.
Each takes one model input, (size, size) or (size, size, 1) float32 in [0, 1], leaves it
unchanged and returns a float32 array of the same shape.

Benign shifts sit beside them: brightness, contrast, gamma, rotation, zoom and JPEG re-encoding
(with ``lower_resolution``), the changes any acquisition varies by and which carry no diagnostic
information. The grey-zone rule (``grey_zone``, docs/grey_zone_rule.md) measures how far they move
a model's calibrated logit on validation.
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


def _plane(image: np.ndarray) -> np.ndarray:
    """The input as a (size, size) float32 plane (a view or a copy; never written to)."""
    return np.asarray(image, dtype=np.float32).reshape(image.shape[0], image.shape[1])


def _as_input(plane: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A float32 copy clipped to [0, 1], in the shape of ``like``."""
    return np.clip(plane, 0.0, 1.0).astype(np.float32).reshape(like.shape)


def add_brightness(image: np.ndarray, offset: float) -> np.ndarray:
    """Adds ``offset`` to every pixel, clipped to [0, 1] (float32 copy)."""
    return _as_input(_plane(image) + np.float32(offset), image)


def scale_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Scales the deviations from the image's own mean by ``factor``, clipped to [0, 1] (float32
    copy); as the training augmentation does."""
    plane = _plane(image)
    mean = plane.mean(dtype=np.float64)
    return _as_input((plane - mean) * factor + mean, image)


def apply_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """Raises every pixel to the power ``gamma`` (positive), a float32 copy in [0, 1]."""
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    return _as_input(np.power(_plane(image), np.float32(gamma)), image)


def rotate_and_zoom(image: np.ndarray, degrees: float = 0.0, zoom: float = 1.0) -> np.ndarray:
    """Rotates by ``degrees`` (anticlockwise) and scales by ``zoom`` (above 1 zooms in) about the
    centre: bilinear, edges filled by reflection as in training, so no black bands (float32 copy)."""
    if zoom <= 0:
        raise ValueError(f"zoom must be positive, got {zoom}")
    plane = _plane(image)
    height, width = plane.shape
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), degrees, zoom)
    warped = cv2.warpAffine(plane, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return _as_input(warped, image)


def jpeg_reencode(image: np.ndarray, quality: int) -> np.ndarray:
    """Rounds the input to 8 bits, encodes it as a JPEG of ``quality`` (OpenCV) and decodes it
    again: float32 copy in [0, 1]."""
    grey = np.round(np.clip(_plane(image), 0.0, 1.0) * 255.0).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode a JPEG of quality {quality}")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)  # (size, size) uint8
    return _as_input(decoded.astype(np.float32) / 255.0, image)
