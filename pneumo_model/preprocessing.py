"""The one image contract shared by training, evaluation, the CLI and the app.

``load_image`` turns a file (path or bytes) into a 2-D grey pixel array plus facts about it;
``preprocess`` turns that array into the model's input. Nothing else in the package decodes
or resizes an image for the model, so what the model saw in training is what it sees in use.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import asdict, dataclass, field
from math import isqrt
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from . import dicom
from .dicom import DicomTags
from .errors import InvalidImageError

DEFAULT_INPUT_SIZE = 128
# A JPEG's model input may be made from a draft decode (``load_model_pixels``) whose short side is
# at least this many times the input's side: on the 48 full-size originals, 3 x 128 px kept every
# logit within 0.13 of the full decode's (median 0.013) and every gate flag
# (``python -m pneumo_model bench --only draft``, reports/draft_decode.md); 2 x gave a largest change of 0.31.
DRAFT_RATIO = 3
SUPPORTED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "DICOM")
_FORMAT_NAMES = "PNG, JPEG, BMP, TIFF or DICOM"
# Pillow names a JPEG with a multi-picture extension (phone and camera photos) "MPO".
_PILLOW_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "BMP": "BMP", "TIFF": "TIFF"}
# What Pillow raises on a damaged or malicious file, besides its own UnidentifiedImageError.
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)
# EXIF Orientation (0x0112): 1 is upright; 2-8 ask for a flip and/or a rotation, as ImageOps.exif_transpose does them.
_EXIF_ORIENTATION = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Bytes a pixel takes in Pillow's own storage: one for 8-bit single-band modes, two for 16-bit grey,
# four for every other mode (multi-band and 32-bit images are stored in 32-bit words).
_PILLOW_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# The modes _to_grey accepts, each with the one Image.reduce averages it in: reduce refuses 1-bit,
# palette and 16-bit grey, and would average a PA image's palette indices.
_REDUCE_THROUGH = {"1": "L", "P": "RGB", "PA": "RGBA", "I;16": "I", "I;16B": "I", "I;16L": "I", "I;16N": "I"} | {
    mode: mode for mode in ("L", "I", "LA", "La", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV")
}
_STRIP_PIXELS = 2**20  # a strip converted to 32 bits takes 4 MB


@dataclass(frozen=True)
class FilmAspect:
    """The height / width ratios of the data set's original films, which the model saw squashed to a square.

    Every training image is a whole film squashed to the model's square input, so the model knows
    the squash of films in this range and no other. The range is the smallest and largest height /
    width of the 48 full-size originals in ``chest_xray_fullres_sample`` (809 / 1450 and 1905 /
    1948; checked by ``tests/test_crop_rule.py``); the 224 px copies are all square and say
    nothing about it. Used by the crop rule (``crop.RescoreRule``: a crop's proportions) and by the
    squashed-film warning below (a whole image's; a crop is judged by how much it changes its film's
    proportions, against ``spread``).

    Attributes:
        low: the smallest height / width (the widest film).
        high: the largest height / width (the squarest film).
        squashed: a whole image whose height / width lies more than this factor outside
            ``[low, high]`` is scored with a warning that it was squashed (``aspect_warning``).
    """

    low: float = 0.557
    high: float = 0.978
    squashed: float = 1.5

    @property
    def spread(self) -> float:
        """``high / low``: how much the films' height / width differ among themselves."""
        return self.high / self.low

    def widened(self, factor: float) -> tuple[float, float]:
        """``(low / factor, high * factor)``: the range widened by ``factor`` on both sides (a ratio scale)."""
        return self.low / factor, self.high * factor


ORIGINAL_FILMS = FilmAspect()


def aspect_warning(width: int, height: int, films: FilmAspect = ORIGINAL_FILMS) -> str | None:
    """A plain warning when an image is far narrower or wider than the original films, else None.

    Such an image is squashed into the model's square input further than any training film was,
    so its call rests on a geometry the model never saw. A square image (the data set's own 224 px
    copies) is inside the widened range and gets no warning.
    """
    low, high = films.widened(films.squashed)
    ratio = height / width
    if low <= ratio <= high:
        return None
    shape = "tall and narrow" if ratio > high else "wide and short"
    return (
        f"The image is {shape} (height / width {ratio:.2f}; the original films of the training data run from "
        f"{films.low:.2f} to {films.high:.2f}). It was squashed into the model's square input further than any "
        "training film, so the call may not be meaningful: check that it is the whole film, uncropped."
    )


@dataclass(frozen=True)
class ImageLimits:
    """What an input may be before it is refused, and the size it is worked on at.

    The defaults: 50 MB (2**20 bytes each, Streamlit's unit: ``server.maxUploadSize`` in
    ``.streamlit/config.toml`` is set to match) holds an uncompressed 16-bit 4300 x 3500
    detector image (30 MB); 60 million pixels is four times the largest radiograph detector;
    64 pixels per side refuses icons and thumbnails; 4:1 refuses strips and banners (chest
    radiographs are between about 3:4 and 4:3).

    Memory is bounded by the last two, so that no accepted file can make one request take more
    than about 300 MB above the idle process (``python -m pneumo_model bench --only memory``
    measures the worst candidates). A file's size says little about its pixels: a 7740 x 7740
    16-bit PNG of zeros is 116 kB on disk and 120 MB decoded.

    * ``max_working_pixels``, 16 million: every real detector (4300 x 3500 is 15 million pixels)
      and every full-size film we have (up to 2900 x 2600) stay as they are, so ordinary images
      get exactly the pixels, and probabilities, they always got. A larger image is reduced by
      the smallest integer factor k that brings it under the cap (k = 2 for anything up to the
      pixel limit), as early as the format allows: a JPEG is decoded at 1/2, 1/4 or 1/8 scale
      in the DCT domain (Pillow's ``draft``), the largest of those not past 1/k, then box
      averaged for the rest if still over the cap (with a k that is no power of two, only
      possible with a lower cap, the JPEG ends up reduced a little more than k); other Pillow
      formats are box averaged (``Image.reduce``, a row strip at a time) right after decoding;
      DICOM is mapped through its LUTs in row strips and each strip box averaged. The model sees
      a 128 px square either way; the crop boxes and heat maps refer to the reduced image.
    * ``max_decoded_bytes``, 160 MB: what the decoder itself must hold at full size, computed
      from the header before any pixel is decoded (``decoded_bytes``): Pillow keeps 1 byte a
      pixel for 8-bit grey and palette images, 2 for 16-bit grey, 4 for everything else (RGB,
      RGBA, CMYK, 32-bit), at the JPEG's reduced decoding size, plus a progressive JPEG's
      coefficients (2 bytes a sample at full size); DICOM decoders hold the stored frame and
      what they need beside it (``dicom.decoded_bytes``). It admits a 16-bit grey PNG or TIFF
      at the pixel limit (114 MB), a progressive 8-bit JPEG at the pixel limit (129 MB), and a
      16-bit DICOM of up to 42 million pixels uncompressed, deflated or RLE, 28 million as
      JPEG 2000 or JPEG lossless. It refuses a colour PNG, TIFF or BMP over 42 million pixels
      (a 60 MP RGB PNG takes 229 MB in Pillow): no colour radiograph is that big, and a grey
      export of the same image is accepted.

    Attributes:
        max_bytes: largest file accepted, in bytes.
        max_pixels: largest width x height accepted, checked from the header before any
            pixel is decoded (guards against decompression bombs). Pillow refuses images over
            twice its own ``Image.MAX_IMAGE_PIXELS`` whatever this says.
        min_side: smallest width or height accepted, in pixels.
        max_aspect: largest ratio of the long side to the short side.
        max_working_pixels: largest width x height returned; larger images are reduced.
        max_decoded_bytes: largest memory the decoder may need for one image, in bytes,
            checked from the header before any pixel is decoded.
        draft_side: for the model input only (``load_model_pixels``), a JPEG is decoded at the
            smallest DCT scale (1/2, 1/4 or 1/8) that keeps both sides at least this many pixels;
            0 decodes it whole. The default is ``DRAFT_RATIO`` times the 128 px input.
    """

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 60_000_000
    min_side: int = 64
    max_aspect: float = 4.0
    max_working_pixels: int = 16_000_000
    max_decoded_bytes: int = 160 * 1024 * 1024
    draft_side: int = DRAFT_RATIO * DEFAULT_INPUT_SIZE


@dataclass(frozen=True)
class ImageInfo:
    """Facts about a decoded image that the caller may want to show or record.

    Attributes:
        width: original width in pixels (after EXIF rotation).
        height: original height in pixels (after EXIF rotation).
        bit_depth: 8 or 16, the depth of the returned grey array.
        format: the file format, one of ``SUPPORTED_FORMATS`` ("PNG", "JPEG", "BMP", "TIFF",
            "DICOM").
        warnings: plain sentences about anything that was changed or looks unusual.
        dicom: for a DICOM file, its non-identifying header facts (modality, body part, view,
            photometric interpretation, transfer syntax); None for other formats.
        colour_spread: how far a colour image is from grey: the mean absolute difference between
            each channel and the pixel's channel mean, in 8-bit grey levels (0 for a grey file or
            a colour file whose channels are equal). The out-of-distribution gate uses it.
        reduction: how many original pixels a returned pixel spans along each side: 1 when the
            pixels are the original ones, k when an image over ``ImageLimits.max_working_pixels``
            was reduced (the returned array is then about ``height / k`` x ``width / k``, while
            ``width`` and ``height`` stay the original size). Coordinates on the returned array
            (``crop.apply_crop``, ``crop.validate_box``) times ``reduction`` are original ones.
    """

    width: int
    height: int
    bit_depth: int
    format: str
    warnings: tuple[str, ...] = field(default_factory=tuple)
    dicom: DicomTags | None = None
    colour_spread: float = 0.0
    reduction: int = 1

    @property
    def age_years(self) -> float | None:
        """The patient's age in years that a DICOM header gives (``dicom.DicomTags.age_years``); None
        for other formats and where the header gives no readable age."""
        return None if self.dicom is None else getattr(self.dicom, "age_years", None)

    def to_dict(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "bit_depth": self.bit_depth,
            "format": self.format,
            "warnings": list(self.warnings),
            "dicom": asdict(self.dicom) if self.dicom is not None else None,
            "colour_spread": round(self.colour_spread, 3),
            "reduction": self.reduction,
        }


def read_image_bytes(source: str | Path | bytes, limits: ImageLimits = ImageLimits()) -> bytes:
    """The bytes of an image file (or the bytes given), checked to exist, be a file, be non-empty
    and within ``limits.max_bytes``.

    Raises:
        InvalidImageError: with the reason.
    """
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
    # MB as Streamlit counts them (2**20 bytes), so the limit reads the same in both places.
    return (
        f"The file is {size / 2**20:.1f} MB, larger than the {limits.max_bytes / 2**20:.0f} MB limit. "
        "Export the image at a smaller size or with compression (PNG, JPEG, or a compressed DICOM)."
    )


def _too_many_pixels_message(limits: ImageLimits, width: int | None = None, height: int | None = None) -> str:
    size = f"{width} x {height} pixels" if width is not None else "larger than any radiograph"
    return (
        f"The image is {size}, more than the {limits.max_pixels:,} pixel limit. "
        "Export it at a lower resolution."
    )


def _check_geometry(width: int, height: int, limits: ImageLimits) -> None:
    """Refuses a size no radiograph has; called with the header's size, before decoding pixels."""
    if width * height > limits.max_pixels:
        raise InvalidImageError(_too_many_pixels_message(limits, width, height))
    # Shape before size: a 5 x 60000 strip is refused as a strip, not as a thumbnail.
    if min(width, height) > 0 and max(width, height) / min(width, height) > limits.max_aspect:
        raise InvalidImageError(
            f"The image is {width} x {height} pixels, a shape no chest radiograph has "
            f"(sides differ by more than {limits.max_aspect:g} times). Upload the whole radiograph."
        )
    if min(width, height) < limits.min_side:
        raise InvalidImageError(
            f"The image is only {width} x {height} pixels; at least {limits.min_side} pixels per side "
            "are needed. Upload the original radiograph, not a thumbnail."
        )


def reduction_factor(width: int, height: int, max_working_pixels: int) -> int:
    """The smallest integer k for which the image reduced k times (``ceil(width / k)`` x
    ``ceil(height / k)``, as ``Image.reduce`` makes it) has at most ``max_working_pixels``."""
    factor = max(1, isqrt(width * height // max(1, max_working_pixels)))  # every smaller k is too little
    while -(-width // factor) * -(-height // factor) > max_working_pixels:
        factor += 1
    return factor


def _over_budget_message(needed: int, limits: ImageLimits, width: int, height: int) -> str:
    return (
        f"The image is {width} x {height} pixels and would take {needed / 2**20:.0f} MB to decode, more than "
        f"the {limits.max_decoded_bytes / 2**20:.0f} MB allowed for one image. Export it at a lower "
        "resolution, or as 8- or 16-bit grey."
    )


def _reduced_warning(width: int, height: int, shape: tuple[int, ...]) -> str:
    """The warning of an image reduced to the working size; ``shape`` is the pixels' (rows, columns)."""
    return f"The image is {width} x {height} pixels; it was reduced to {shape[1]} x {shape[0]} for processing."


def _pillow_decoded_bytes(image: Image.Image, full_size: tuple[int, int]) -> int:
    """What Pillow holds to decode ``image`` at its (possibly drafted) size, from the header alone.

    A progressive JPEG also keeps every DCT coefficient of the whole image, at full size whatever
    the draft: 2 bytes a sample of each component at its own sampling.
    """
    needed = image.width * image.height * _PILLOW_PIXEL_BYTES.get(image.mode, 4)
    layers = getattr(image, "layer", None)
    if image.format in ("JPEG", "MPO") and image.info.get("progressive") and layers:
        width, height = full_size
        most_h, most_v = max(layer[1] for layer in layers), max(layer[2] for layer in layers)
        for _, horizontal, vertical, _ in layers:
            blocks_x = -(-(-(-width * horizontal // most_h)) // 8)
            blocks_y = -(-(-(-height * vertical // most_v)) // 8)
            needed += blocks_x * blocks_y * 64 * 2
    return needed


def _draft_scale(factor: int) -> int:
    """The largest JPEG DCT scale (1, 2, 4 or 8) that reduces no more than ``factor``."""
    return next(scale for scale in (8, 4, 2, 1) if scale <= factor)


def _model_draft_scale(width: int, height: int, side: int) -> int:
    """The largest JPEG DCT scale (1, 2, 4 or 8) that keeps both sides at least ``side`` pixels
    (Pillow's ``draft`` rounds a scaled side up, as libjpeg does); 1 when ``side`` is 0."""
    if side <= 0:
        return 1
    return next(scale for scale in (8, 4, 2, 1) if scale == 1 or min(-(-width // scale), -(-height // scale)) >= side)


def _working_shape(width: int, height: int, scale: int, limits: ImageLimits) -> tuple[int, tuple[int, int]]:
    """The reduction and (rows, columns) of the working-size decode (``load_image``) of a JPEG of
    this header size drafted at ``scale``, before any EXIF turn: what the model's draft decode
    reports, from the header alone, so both decodes state the same facts."""
    drafted = (-(-width // scale), -(-height // scale))  # as Pillow's draft sizes it
    step = reduction_factor(*drafted, limits.max_working_pixels)
    return scale * step, (-(-drafted[1] // step), -(-drafted[0] // step))


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    """``image`` box averaged ``factor`` times along each side (``Image.reduce``; a partial block at
    the right or bottom edge is the mean of the pixels it has).

    Done a row strip at a time, each strip holding whole blocks, so the result is what reducing
    the whole image gives, without the full-size copy ``reduce`` makes of an LA or RGBA image
    (it averages them premultiplied) or that converting 1-bit, palette or 16-bit grey to a mode
    it takes would make. 16-bit grey stays 16-bit; a palette becomes RGB (RGBA with a transparent
    entry). A mode ``_to_grey`` refuses is returned as it is, to be refused there.
    """
    through = _REDUCE_THROUGH.get(image.mode)
    if factor == 1 or through is None:
        return image
    if image.mode == "P" and "transparency" in image.info:
        through = "RGBA"
    result_mode = "I;16" if image.mode.startswith("I;16") else through
    width, height = image.size
    rows = max(1, _STRIP_PIXELS // width // factor) * factor  # whole blocks in every strip but the last
    reduced = Image.new(result_mode, (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        strip = image.crop((0, top, width, min(height, top + rows))).convert(through).reduce(factor)
        reduced.paste(strip.convert(result_mode) if result_mode != through else strip, (0, top // factor))
    return reduced


def _colour_spread(image: Image.Image) -> float:
    """``ImageInfo.colour_spread`` of an RGB image (its numpy copy is freed on return)."""
    rgb = np.asarray(image)  # (H, W, 3) uint8
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 1e6)))  # about a million pixels suffice
    sample = rgb[::step, ::step].astype(np.int16)
    return float(np.abs(sample - sample.mean(axis=2, keepdims=True)).mean())


def _on_black(image: Image.Image, warnings: list[str]) -> Image.Image:
    """An image with an alpha channel (or a palette with a transparent entry) as RGB, transparent
    parts composited on black, X-rays' background; a row strip at a time, so no full-size RGBA
    copy is made beside the result."""
    rows = max(1, _STRIP_PIXELS // image.width)
    boxes = [(0, top, image.width, min(image.height, top + rows)) for top in range(0, image.height, rows)]
    extremes = [image.crop(box).convert("RGBA").getchannel("A").getextrema() for box in boxes]
    low, high = min(low for low, _ in extremes), max(high for _, high in extremes)
    if low < 255 and high > 0:
        warnings.append("The image had transparency; transparent parts were filled with black.")
    elif high == 0:
        # Some BMP and TIFF writers store an unused, all-zero alpha channel.
        warnings.append("The image's transparency channel was empty (all transparent) and was ignored.")
    rgb = Image.new("RGB", image.size)
    for box in boxes:
        strip = image.crop(box).convert("RGBA")
        if low < 255 and high > 0:
            strip = Image.alpha_composite(Image.new("RGBA", strip.size, (0, 0, 0, 255)), strip)
        rgb.paste(strip.convert("RGB"), box[:2])
    return rgb


def _to_grey(image: Image.Image, warnings: list[str]) -> tuple[np.ndarray, float]:
    """Returns a 2-D uint8 or uint16 array from any Pillow mode we accept, and its colour spread
    (``ImageInfo.colour_spread``)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.uint16).copy(), 0.0
    if mode == "I":
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
            raise InvalidImageError(
                "The image holds pixel values outside the 16-bit range. Export it as an 8- or 16-bit PNG."
            )
        return values.astype(np.uint16), 0.0
    if mode == "F":
        raise InvalidImageError("Floating-point images are not supported. Export the image as an 8- or 16-bit PNG.")
    if mode == "P" and "transparency" not in image.info:
        image = image.convert("RGB")
        mode = "RGB"
    if mode in ("P", "RGBA", "LA", "PA", "RGBa", "La"):
        image = _on_black(image, warnings)
        mode = "RGB"
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
        mode = "RGB"
    if mode == "RGB":
        spread = _colour_spread(image)
        if spread > 2.0:
            warnings.append("The image is in colour; it was converted to grey. X-rays are normally grey.")
        return np.asarray(image.convert("L"), dtype=np.uint8).copy(), spread
    if mode in ("L", "1"):
        return np.asarray(image.convert("L"), dtype=np.uint8).copy(), 0.0
    raise InvalidImageError(
        f"Images of pixel type '{mode}' are not supported. Export the image as an 8- or 16-bit grey PNG."
    )


def load_image(source: str | Path | bytes, limits: ImageLimits = ImageLimits()) -> tuple[np.ndarray, ImageInfo]:
    """Decodes a chest X-ray file (PNG, JPEG, BMP, TIFF or DICOM) into a grey pixel array.

    The size and the memory decoding needs (``limits.max_decoded_bytes``) are checked against
    ``limits`` from the header, before any pixel is decoded.

    * PNG, JPEG, BMP, TIFF (through Pillow): 8-bit grey as it is; 16-bit grey as uint16;
      colour (RGB, CMYK, palette) converted to grey with the ITU-R 601 luma weights (the data
      set's images are grey stored as three equal channels, which this leaves unchanged);
      transparency composited on black, X-rays' background; EXIF orientation applied. A
      multi-page TIFF (or animated PNG, multi-picture JPEG) gives its first page, with a warning.
    * DICOM (through pydicom, with the decoders in requirements.txt for JPEG, JPEG-LS,
      JPEG 2000 and RLE): the first frame; modality LUT, then VOI LUT or window, MONOCHROME1
      inverted (see ``dicom.decode_pixels`` for how the values map to uint8 / uint16). The
      non-identifying header tags go to ``info.dicom``, and warnings are added when they say
      this is not a frontal chest radiograph or not the trained (paediatric) population.

    Args:
        source: a file path or the file's bytes.
        limits: size limits; inputs outside them are refused.

    Returns:
        ``(pixels, info)``: ``pixels`` is a new 2-D array of shape (height, width), or
        (ceil(height / k), ceil(width / k)) for an image reduced k times to fit
        ``limits.max_working_pixels`` (``info.reduction``; a warning says so), dtype uint8 for
        8-bit sources or uint16 for deeper ones; ``info`` is an ``ImageInfo``.

    Raises:
        InvalidImageError: the source is missing, empty, too large, not a supported format,
            damaged, or has a size or shape no radiograph has; its message says what to do.
            ``UnsupportedDicomError`` (a subclass) for a readable DICOM without a usable image.
    """
    data = read_image_bytes(source, limits)
    if dicom.is_dicom(data):
        return _load_dicom(data, limits)
    pixels, info, _ = _load_with_pillow(data, limits)
    return pixels, info


def load_model_pixels(source: str | Path | bytes, limits: ImageLimits = ImageLimits()) -> tuple[np.ndarray, ImageInfo, bool]:
    """The pixels the model input is made from: ``load_image``'s, except that a JPEG is decoded at
    the smallest DCT scale that keeps both sides at least ``limits.draft_side`` pixels (libjpeg's
    scaled decoding through Pillow's ``draft``, several times faster than a full decode; the
    model sees a 128 px square either way).

    Returns:
        ``(pixels, info, drafted)``: ``pixels`` as ``load_image`` returns them, or smaller when
        ``drafted``; ``info`` states what ``load_image`` states (the original size, the working
        size's ``reduction`` and warnings), except ``colour_spread``, measured on these pixels.

    Raises:
        InvalidImageError: as ``load_image``.
    """
    data = read_image_bytes(source, limits)
    if dicom.is_dicom(data):
        return (*_load_dicom(data, limits), False)
    return _load_with_pillow(data, limits, limits.draft_side)


def _load_with_pillow(data: bytes, limits: ImageLimits, draft_side: int = 0) -> tuple[np.ndarray, ImageInfo, bool]:
    """``load_image`` of a Pillow format, and whether the pixels are a draft below the working size
    (a JPEG, with ``draft_side``; ``info`` still states the working size's reduction and warnings)."""
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise InvalidImageError(
            f"The file is not a readable image. Upload a {_FORMAT_NAMES} chest X-ray."
        ) from None
    except Image.DecompressionBombError:
        raise InvalidImageError(_too_many_pixels_message(limits)) from None
    except _PILLOW_ERRORS as error:
        raise InvalidImageError(f"The image file is damaged or incomplete ({error}). Upload the image again.") from None
    fmt = _PILLOW_FORMATS.get(image.format)
    if fmt is None:
        raise InvalidImageError(
            f"{image.format} files are not supported. Convert the image to {_FORMAT_NAMES}."
        )
    _check_geometry(image.width, image.height, limits)
    width, height = image.size  # the header's, before any reduction
    factor = reduction_factor(width, height, limits.max_working_pixels)
    warnings: list[str] = []
    try:
        frames = getattr(image, "n_frames", 1)
        working_scale = _draft_scale(factor) if fmt == "JPEG" else 1
        scale = max(working_scale, _model_draft_scale(width, height, draft_side)) if fmt == "JPEG" else 1
        if scale > 1:
            image.draft(image.mode, (width // scale, height // scale))  # decoded at 1/scale, in the DCT domain
        needed = _pillow_decoded_bytes(image, (width, height))
        if needed > limits.max_decoded_bytes:
            raise InvalidImageError(_over_budget_message(needed, limits, width, height))
        image.load()
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        step = reduction_factor(image.width, image.height, limits.max_working_pixels)  # what the draft left
        image = _reduce(image, step)
        if orientation in _UPRIGHT:
            image = image.transpose(_UPRIGHT[orientation])  # as ImageOps.exif_transpose does, without its copy
    except Image.DecompressionBombError:
        raise InvalidImageError(_too_many_pixels_message(limits)) from None
    except _PILLOW_ERRORS as error:
        raise InvalidImageError(
            f"The {fmt} file is damaged or incomplete ({error}). Upload the image again."
        ) from None
    if frames > 1:
        kind = "pages" if fmt == "TIFF" else "frames" if fmt == "PNG" else "pictures"
        warnings.append(f"The {fmt} file holds {frames} {kind}; only the first was used.")
    if orientation in range(2, 9):
        warnings.append("The image was turned upright as its EXIF orientation tag asks.")
    drafted = scale > working_scale
    if drafted:  # the working size's facts, from the header: what load_image states for these bytes
        reduction, working = _working_shape(width, height, working_scale, limits)
    else:
        reduction, working = scale * step, None
    if orientation in (5, 6, 7, 8):  # a quarter turn: the upright image's sides are the header's swapped
        width, height = height, width
        working = working and working[::-1]
    pixels, colour_spread = _to_grey(image, warnings)
    if reduction > 1:
        warnings.append(_reduced_warning(width, height, working or pixels.shape))
    squashed = aspect_warning(width, height)
    if squashed is not None:
        warnings.append(squashed)
    info = ImageInfo(
        width=width,
        height=height,
        bit_depth=16 if pixels.dtype == np.uint16 else 8,
        format=fmt,
        warnings=tuple(warnings),
        colour_spread=colour_spread,
        reduction=reduction,
    )
    return pixels, info, drafted


def _load_dicom(data: bytes, limits: ImageLimits) -> tuple[np.ndarray, ImageInfo]:
    # A deflated data set is held whole beside the frame decoded from it, so its pixel data may take
    # half the decoding budget; and no more than the largest allowed image (16-bit RGB: 6 bytes a pixel).
    unpacked = min(6 * limits.max_pixels, limits.max_decoded_bytes // 2) + 2**20  # and the header
    ds = dicom.read_dataset(data, max_unpacked_bytes=unpacked)
    width, height = dicom.image_size(ds)
    _check_geometry(width, height, limits)
    needed = dicom.decoded_bytes(ds)
    if needed > limits.max_decoded_bytes:
        raise InvalidImageError(_over_budget_message(needed, limits, width, height))
    warnings: list[str] = []
    tags = dicom.header_facts(ds, warnings)
    reduction = reduction_factor(width, height, limits.max_working_pixels)
    pixels = dicom.decode_pixels(ds, warnings, reduction)
    del ds  # its pixel data: the full-size encoded frame
    colour_spread = 0.0
    if pixels.ndim == 3:
        pixels, colour_spread = _to_grey(Image.fromarray(pixels), warnings)  # (rows, columns, 3) uint8: RGB
    if reduction > 1:
        warnings.append(_reduced_warning(width, height, pixels.shape))
    squashed = aspect_warning(width, height)
    if squashed is not None:
        warnings.append(squashed)
    info = ImageInfo(
        width=width,
        height=height,
        bit_depth=16 if pixels.dtype == np.uint16 else 8,
        format="DICOM",
        warnings=tuple(warnings),
        dicom=tags,
        colour_spread=colour_spread,
        reduction=reduction,
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
        unit = pixels.astype(np.float32)  # (H, W), the one full-size float copy
        unit -= low
        unit /= high - low
        return unit
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

