"""The one image contract shared by training, evaluation, the CLI and the app.

``load_image`` turns a file (path or bytes) into a 2-D grey pixel array plus facts about it;
``preprocess`` turns that array into the model's input. Nothing else in the package decodes
or resizes an image for the model, so what the model saw in training is what it sees in use.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidImageError

DEFAULT_INPUT_SIZE = 128
SUPPORTED_FORMATS = ("PNG", "JPEG")


@dataclass(frozen=True)
class ImageLimits:
    """What an input may be before it is refused.

    Attributes:
        max_bytes: largest file accepted, in bytes.
        max_pixels: largest width x height accepted (guards against decompression bombs).
        min_side: smallest width or height accepted, in pixels.
        max_aspect: largest ratio of the long side to the short side.
    """

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 60_000_000
    min_side: int = 64
    max_aspect: float = 4.0


@dataclass(frozen=True)
class ImageInfo:
    """Facts about a decoded image that the caller may want to show or record.

    Attributes:
        width: original width in pixels (after EXIF rotation).
        height: original height in pixels (after EXIF rotation).
        bit_depth: 8 or 16, the depth of the returned grey array.
        format: the container format as Pillow names it ("PNG", "JPEG").
        warnings: plain sentences about anything that was changed or looks unusual.
    """

    width: int
    height: int
    bit_depth: int
    format: str
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "bit_depth": self.bit_depth,
            "format": self.format,
            "warnings": list(self.warnings),
        }


def _read_bytes(source: str | Path | bytes, limits: ImageLimits) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.exists():
            raise InvalidImageError(f"The file '{path}' does not exist. Check the path and try again.")
        if path.is_dir():
            raise InvalidImageError(f"'{path}' is a folder, not an image file. Choose an image file.")
        if path.stat().st_size > limits.max_bytes:
            raise InvalidImageError(_too_big_message(path.stat().st_size, limits))
        data = path.read_bytes()
    if not data:
        raise InvalidImageError("The file is empty (0 bytes). Upload the image again.")
    if len(data) > limits.max_bytes:
        raise InvalidImageError(_too_big_message(len(data), limits))
    return data


def _too_big_message(size: int, limits: ImageLimits) -> str:
    return (
        f"The file is {size / 1e6:.1f} MB, larger than the {limits.max_bytes / 1e6:.0f} MB limit. "
        "Export the image at a smaller size or as a compressed PNG/JPEG."
    )


def _check_geometry(width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise InvalidImageError(
            f"The image is {width} x {height} pixels, more than the {limits.max_pixels:,} pixel limit. "
            "Export it at a lower resolution."
        )
    if min(width, height) < limits.min_side:
        raise InvalidImageError(
            f"The image is only {width} x {height} pixels; at least {limits.min_side} pixels per side "
            "are needed. Upload the original radiograph, not a thumbnail."
        )
    if max(width, height) / min(width, height) > limits.max_aspect:
        raise InvalidImageError(
            f"The image is {width} x {height} pixels, a shape no chest radiograph has "
            f"(sides differ by more than {limits.max_aspect:g} times). Upload the whole radiograph."
        )


def _to_grey(image: Image.Image, warnings: list[str]) -> np.ndarray:
    """Returns a 2-D uint8 or uint16 array from any Pillow mode we accept."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.uint16).copy()
    if mode == "I":
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
            raise InvalidImageError(
                "The image holds pixel values outside the 16-bit range. Export it as an 8- or 16-bit PNG."
            )
        return values.astype(np.uint16)
    if mode == "F":
        raise InvalidImageError("Floating-point images are not supported. Export the image as an 8- or 16-bit PNG.")
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        # X-rays have a dark background, so transparent pixels become black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
        warnings.append("The image had transparency; transparent parts were filled with black.")
        mode = "RGB"
    if mode == "CMYK":
        image = image.convert("RGB")
        mode = "RGB"
    if mode == "RGB":
        rgb = np.asarray(image, dtype=np.int16)
        spread = np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean()
        if spread > 2.0:
            warnings.append("The image is in colour; it was converted to grey. X-rays are normally grey.")
        return np.asarray(image.convert("L"), dtype=np.uint8).copy()
    if mode in ("L", "1"):
        return np.asarray(image.convert("L"), dtype=np.uint8).copy()
    raise InvalidImageError(f"Images of pixel type '{mode}' are not supported. Export the image as PNG or JPEG.")


def load_image(source: str | Path | bytes, limits: ImageLimits = ImageLimits()) -> tuple[np.ndarray, ImageInfo]:
    """Decodes a PNG or JPEG chest X-ray into a grey pixel array.

    Colour images are converted to grey with the ITU-R 601 luma weights (the data set's
    images are grey stored as three equal channels, which this leaves unchanged), EXIF
    rotation is applied, and transparency is composited on black.

    Args:
        source: a file path or the file's bytes.
        limits: size limits; inputs outside them are refused.

    Returns:
        ``(pixels, info)``: ``pixels`` is a new 2-D array of shape (height, width), dtype
        uint8 for 8-bit sources or uint16 for 16-bit sources; ``info`` is an ``ImageInfo``.

    Raises:
        InvalidImageError: the source is missing, empty, too large, not a PNG/JPEG, damaged,
            or has a size or shape no radiograph has.
    """
    data = _read_bytes(source, limits)
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidImageError(
            "The file is not a readable image. Upload a PNG or JPEG chest X-ray."
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(f"The image file is damaged or incomplete ({error}). Upload the image again.") from None
    if image.format not in SUPPORTED_FORMATS:
        raise InvalidImageError(
            f"{image.format} files are not supported yet. Convert the image to PNG or JPEG."
        )
    _check_geometry(image.width, image.height, limits)
    warnings: list[str] = []
    try:
        image.load()
        rotated = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(
            f"The {image.format} file is damaged or incomplete ({error}). Upload the image again."
        ) from None
    if rotated.size != image.size:
        warnings.append("The image was rotated as its EXIF orientation tag asks.")
    pixels = _to_grey(rotated, warnings)
    info = ImageInfo(
        width=pixels.shape[1],
        height=pixels.shape[0],
        bit_depth=16 if pixels.dtype == np.uint16 else 8,
        format=image.format,
        warnings=tuple(warnings),
    )
    return pixels, info


def to_unit_range(pixels: np.ndarray) -> np.ndarray:
    """Scales a grey array to float32 in [0, 1] by the package's intensity rule.

    The rule: uint8 is divided by 255 (how the training JPEGs are read); uint16 is stretched
    linearly from its own minimum to its own maximum, because 16-bit exports often use only
    10-12 of their 16 bits and dividing by 65535 would make them nearly black; float input
    must already lie in [0, 1].

    Raises:
        InvalidImageError: float input outside [0, 1] or not finite, or another dtype.
    """
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    if pixels.dtype == np.uint16:
        low, high = float(pixels.min()), float(pixels.max())
        if high <= low:
            return np.zeros(pixels.shape, dtype=np.float32)
        return ((pixels.astype(np.float32) - low) / (high - low)).astype(np.float32)
    if np.issubdtype(pixels.dtype, np.floating):
        if not np.all(np.isfinite(pixels)) or pixels.min() < 0.0 or pixels.max() > 1.0:
            raise InvalidImageError(
                "Float pixel values must be finite and lie in [0, 1]; scale the image before passing it."
            )
        return pixels.astype(np.float32)
    raise InvalidImageError(f"Pixel arrays of dtype {pixels.dtype} are not supported; use uint8, uint16 or float.")


def preprocess(pixels: np.ndarray, size: int = DEFAULT_INPUT_SIZE) -> np.ndarray:
    """Turns a grey image into the model's input.

    The whole image is resized to a square without keeping the aspect ratio, as the data
    set's images were (they were squashed to 224 x 224), so uploads and training match.

    Args:
        pixels: 2-D array (height, width), or (height, width, 1); uint8, uint16 or float in
            [0, 1] (see ``to_unit_range`` for the intensity rule). It is not modified.
        size: side of the square model input.

    Returns:
        New float32 array of shape (size, size, 1) with values in [0, 1].

    Raises:
        InvalidImageError: the array is not a single-channel image or breaks the intensity rule.
    """
    if not isinstance(pixels, np.ndarray):
        raise InvalidImageError("preprocess expects a numpy array; use load_image to read a file.")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim != 2 or pixels.size == 0:
        raise InvalidImageError(
            f"Expected a non-empty grey image of shape (height, width); got shape {pixels.shape}."
        )
    unit = to_unit_range(pixels)  # (H, W) float32, a new array
    resized = cv2.resize(unit, (size, size), interpolation=cv2.INTER_AREA)  # (size, size)
    return np.clip(resized, 0.0, 1.0).astype(np.float32)[:, :, np.newaxis]  # (size, size, 1)


def load_and_preprocess(
    source: str | Path | bytes, size: int = DEFAULT_INPUT_SIZE, limits: ImageLimits = ImageLimits()
) -> tuple[np.ndarray, ImageInfo]:
    """``load_image`` then ``preprocess``: the model input and the image facts."""
    pixels, info = load_image(source, limits)
    return preprocess(pixels, size), info
