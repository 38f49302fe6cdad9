"""The images that the out-of-distribution gate must flag, generated in code (no downloads).

Seven categories, each at least 10 files, as the bytes a user would upload. They were fixed
before the gate was tuned; changing them to flatter the gate would defeat ``reports/ood.json``.

* ``natural_and_documents``: scikit-image's and scikit-learn's bundled sample pictures
  (photos, text pages, textures).
* ``synthetic``: noise, gradients, shapes, stripes, blank images.
* ``inverted_xray``, ``rotated_xray``, ``tight_crop``, ``screen_photo``: made from the given
  chest X-rays (the validation split in the report): negated, turned 90 degrees either way,
  a small window (15-35 % of the side) enlarged, and a simulated phone photo of a monitor
  showing the X-ray (bezel, perspective, moiré, colour cast, glare, blur, JPEG).
* ``other_modality``: CT, MR, ultrasound, nuclear medicine and segmentation DICOMs shipped with
  pydicom, a CT phantom and retina images from scikit-image.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

CATEGORIES = (
    "natural_and_documents",
    "synthetic",
    "inverted_xray",
    "rotated_xray",
    "screen_photo",
    "tight_crop",
    "other_modality",
)

# (scikit-image's "cat" is the same picture as "chelsea", so it is left out.)
_SKIMAGE_PICTURES = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass",
    "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "rocket", "text",
)  # fmt: skip
_PYDICOM_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "examples_overlay.dcm",
    "examples_rgb_color.dcm",
    "examples_palette.dcm",
    "examples_jpeg2k.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "693_J2KI.dcm",
    "JPGExtended.dcm",
    "liver_1frame.dcm",
)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(pixels: np.ndarray, quality: int = 88) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)


def natural_pictures() -> list[tuple[str, bytes]]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    pictures = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-image's notes about optional downloaders
        for name in _SKIMAGE_PICTURES:
            pictures.append((f"skimage_{name}.png", _png(np.asarray(getattr(skimage.data, name)()))))
    for index, image in enumerate(load_sample_images().images):
        pictures.append((f"sklearn_sample_{index}.jpeg", _jpeg(np.asarray(image))))
    return pictures


def synthetic_images(rng: np.random.Generator, size: int = 512) -> list[tuple[str, bytes]]:
    y, x = np.mgrid[0:size, 0:size] / size
    images = {
        "uniform_noise": rng.random((size, size)),
        "gaussian_noise": np.clip(0.5 + 0.2 * rng.standard_normal((size, size)), 0, 1),
        "salt_and_pepper": (rng.random((size, size)) > 0.5).astype(float),
        "smooth_noise": cv2.GaussianBlur(rng.random((size, size)), (0, 0), 12) * 4 - 1.5,
        "gradient_horizontal": x,
        "gradient_vertical": 1 - y,
        "gradient_radial": 1 - np.hypot(x - 0.5, y - 0.5) * 1.4,
        "checkerboard": ((np.floor(x * 8) + np.floor(y * 8)) % 2).astype(float),
        "stripes": 0.5 + 0.5 * np.sin(2 * np.pi * 12 * x),
        "black": np.zeros((size, size)),
        "white": np.ones((size, size)),
        "mid_grey": np.full((size, size), 0.5),
    }
    rectangles = np.full((size, size), 0.2)
    for _ in range(12):
        x0, y0 = rng.integers(0, size - 60, 2)
        w, h = rng.integers(30, 200, 2)
        rectangles[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0.3, 1.0)
    images["rectangles"] = rectangles
    circles = np.zeros((size, size), dtype=np.float32)
    for _ in range(10):
        centre = tuple(int(v) for v in rng.integers(40, size - 40, 2))
        cv2.circle(circles, centre, int(rng.integers(15, 90)), float(rng.uniform(0.3, 1.0)), -1)
    images["circles"] = circles
    return [(f"{name}.png", _png(_to_uint8(np.clip(pixels, 0, 1)))) for name, pixels in images.items()]


def inverted(xrays: Sequence[np.ndarray]) -> list[tuple[str, bytes]]:
    return [(f"inverted_{index}.png", _png(255 - xray)) for index, xray in enumerate(xrays)]


def rotated(xrays: Sequence[np.ndarray]) -> list[tuple[str, bytes]]:
    turns = (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return [(f"rotated_{index}.png", _png(cv2.rotate(xray, turns[index % 2]))) for index, xray in enumerate(xrays)]


def tight_crops(xrays: Sequence[np.ndarray], rng: np.random.Generator) -> list[tuple[str, bytes]]:
    crops = []
    for index, xray in enumerate(xrays):
        height, width = xray.shape
        side = int(min(height, width) * rng.uniform(0.15, 0.35))
        top = int(rng.integers(0, height - side))
        left = int(rng.integers(0, width - side))
        window = xray[top : top + side, left : left + side]
        crops.append((f"crop_{index}.png", _png(cv2.resize(window, (512, 512), interpolation=cv2.INTER_CUBIC))))
    return crops


def screen_photo(xray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A simulated phone photo of a monitor showing ``xray``: (h, w, 3) uint8 RGB."""
    screen_h, screen_w = 600, 800
    screen = np.full((screen_h, screen_w), 0.08, dtype=np.float32)  # dark viewer background
    side = int(screen_h * rng.uniform(0.8, 0.95))
    resized = cv2.resize(xray, (int(side * xray.shape[1] / xray.shape[0]), side)).astype(np.float32) / 255.0
    resized = resized[:, : screen_w - 20]
    top, left = (screen_h - resized.shape[0]) // 2, (screen_w - resized.shape[1]) // 2
    screen[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
    # Moiré: interference of the screen's pixel grid with the camera's sensor.
    y, x = np.mgrid[0:screen_h, 0:screen_w]
    angle = rng.uniform(0, np.pi)
    frequency = rng.uniform(0.05, 0.15)
    moire = np.sin(2 * np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle)))
    screen = screen * (1 + rng.uniform(0.08, 0.2) * moire)
    cast = np.array([rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0), rng.uniform(0.85, 1.15)], dtype=np.float32)
    colour = np.clip(screen[..., None] * cast * 0.9 + 0.05, 0, 1)  # (600, 800, 3)
    # The monitor with a bezel, on a desk, seen at an angle.
    photo_h, photo_w = 900, 1200
    desk = np.empty((photo_h, photo_w, 3), dtype=np.float32)
    desk[:] = rng.uniform(0.25, 0.7, 3)
    desk += 0.08 * cv2.GaussianBlur(rng.standard_normal((photo_h, photo_w)), (0, 0), 25)[..., None]
    bezel = 30
    monitor = np.full((screen_h + 2 * bezel, screen_w + 2 * bezel, 3), 0.05, dtype=np.float32)
    monitor[bezel:-bezel, bezel:-bezel] = colour
    mh, mw = monitor.shape[:2]
    source = np.float32([[0, 0], [mw, 0], [mw, mh], [0, mh]])
    jitter = rng.uniform(-90, 90, (4, 2)).astype(np.float32)
    target = np.float32([[150, 100], [1050, 130], [1030, 800], [170, 780]]) + jitter
    warp = cv2.getPerspectiveTransform(source, target)
    warped = cv2.warpPerspective(monitor, warp, (photo_w, photo_h), flags=cv2.INTER_LINEAR, borderValue=(-1, -1, -1))
    mask = warped[..., :1] >= 0
    photo = np.where(mask, warped, desk)
    gy, gx = rng.uniform(0.2, 0.8) * photo_h, rng.uniform(0.2, 0.8) * photo_w
    yy, xx = np.mgrid[0:photo_h, 0:photo_w]
    photo += 0.25 * np.exp(-((yy - gy) ** 2 + (xx - gx) ** 2) / (2 * 120.0**2))[..., None]  # glare
    photo = cv2.GaussianBlur(photo, (0, 0), rng.uniform(0.6, 1.6))
    photo += 0.02 * rng.standard_normal(photo.shape)
    return _to_uint8(np.clip(photo, 0, 1))


def screen_photos(xrays: Sequence[np.ndarray], rng: np.random.Generator) -> list[tuple[str, bytes]]:
    return [(f"screen_photo_{index}.jpeg", _jpeg(screen_photo(xray, rng))) for index, xray in enumerate(xrays)]


def other_modalities() -> list[tuple[str, bytes]]:
    import pydicom.data
    import skimage.data

    files = [(name, Path(pydicom.data.get_testdata_file(name)).read_bytes()) for name in _PYDICOM_FILES]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files.append(("shepp_logan_phantom.png", _png(_to_uint8(skimage.data.shepp_logan_phantom()))))
        files.append(("retina.png", _png(np.asarray(skimage.data.retina()))))
        files.append(("microaneurysms.png", _png(np.asarray(skimage.data.microaneurysms()))))
        files.append(("cell.png", _png(np.asarray(skimage.data.cell()))))
    return files


def build_corpus(xrays: Sequence[np.ndarray], seed: int = 20261123) -> dict[str, list[tuple[str, bytes]]]:
    """Every category's files.

    Args:
        xrays: grey uint8 chest X-rays (2-D) to derive the X-ray based categories from; at least 10.
        seed: seed of every random choice.

    Returns:
        category -> list of (file name, file bytes), in ``CATEGORIES`` order.
    """
    if len(xrays) < 10:
        raise ValueError(f"at least 10 X-rays are needed, got {len(xrays)}")
    rng = np.random.default_rng(seed)
    return {
        "natural_and_documents": natural_pictures(),
        "synthetic": synthetic_images(rng),
        "inverted_xray": inverted(xrays),
        "rotated_xray": rotated(xrays),
        "screen_photo": screen_photos(xrays, rng),
        "tight_crop": tight_crops(xrays, rng),
        "other_modality": other_modalities(),
    }
