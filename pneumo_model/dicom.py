"""Reading a DICOM file into the package's grey pixel array, and the header facts that matter.

``preprocessing.load_image`` calls these in the same order it reads any other format: read the
header, check the size against the limits, then decode the pixels. pydicom does the work
(transfer syntaxes through the decoder plugins in requirements.txt, the modality LUT, the VOI
LUT or window); this module only chooses what to apply and how to map it to uint8 / uint16.

Privacy: only the non-identifying tags in ``DicomTags`` are kept. The patient's age is read to
tell the reader when the film is from outside the trained population (docs/ood_grades.md): it is
kept in years only (``DicomTags.age_years``, 90 and over said as "90 years or more"), and the
dates it may be computed from (birth date, study date...) are read, used and dropped: they never
appear in a warning, an error, the returned facts or a log. No error message quotes pydicom's
own text, which could echo header values.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from .errors import InvalidImageError, UnsupportedDicomError

DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
# The trained population: children aged 1 to 5 years; more completed years than this gets the population note.
TRAINED_MAX_AGE_YEARS = 5
# Ages from this up are kept and said as "90 years or more": ages over 89 identify (HIPAA Safe Harbor).
AGE_CAP_YEARS = 90
# An age past this, or a birth after the study, is a malformed header, not an age.
_OLDEST_AGE_YEARS = 150
# The dates an age is counted to when the header gives a birth date but no age, in order of preference.
AGE_REFERENCE_DATES = ("StudyDate", "AcquisitionDate", "ContentDate", "SeriesDate")
POPULATION_NOTE_START = "This film's header gives an age of"
AGE_UNREADABLE_NOTE = (
    "The DICOM header's patient age (or birth date) is not in a form this package reads, so the film could not "
    "be checked against the trained population (children aged 1-5)."
)

_RADIOGRAPH_MODALITIES = {"CR", "DX", "DR", "RG", "OT"}  # OT: secondary captures, often of film
_MODALITY_NAMES = {
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "US": "ultrasound",
    "NM": "nuclear medicine",
    "PT": "PET",
    "MG": "mammography",
    "XA": "angiography",
    "RF": "fluoroscopy",
    "SEG": "a segmentation",
    "SR": "a structured report",
}
_CHEST_BODY_PARTS = {"CHEST", "THORAX", "LUNG", "LUNGS"}
_FRONTAL_VIEWS = {"AP", "PA"}
_LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}
_AGE_UNITS_PER_YEAR = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}
# The only elements read from a file: what decoding needs, and the facts we warn on. Names, IDs,
# dates and the rest are skipped unparsed, so they cannot reach memory we keep or a log.
_READ_TAGS = [
    "SpecificCharacterSet",
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "PatientAge",
    "PatientBirthDate",  # only to count an age from when PatientAge is absent; dropped at once
    *AGE_REFERENCE_DATES,
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "PixelData",
]


@dataclass(frozen=True)
class DicomTags:
    """Non-identifying header facts of a DICOM image (``None`` where the tag is absent).

    Attributes:
        modality: (0008,0060), e.g. "DX", "CR", "CT".
        body_part: (0018,0015) Body Part Examined, e.g. "CHEST".
        view_position: (0018,5101), e.g. "AP", "PA", "LL".
        photometric_interpretation: (0028,0004), e.g. "MONOCHROME1".
        transfer_syntax: the transfer syntax's name, e.g. "JPEG 2000 Image Compression".
        age_years: the patient's age in years (two decimals, at most ``AGE_CAP_YEARS``), from
            Patient's Age or counted from the birth date to the study date (``age_in_years``);
            None where the header gives none or a malformed one.
    """

    modality: str | None
    body_part: str | None
    view_position: str | None
    photometric_interpretation: str | None
    transfer_syntax: str | None
    age_years: float | None = None


@dataclass(frozen=True)
class AgeReading:
    """What a header says about the patient's age.

    Attributes:
        years: the age in years (rounded down to two decimals, capped at ``AGE_CAP_YEARS``), or None.
        unreadable: an age or birth date is there but malformed (so the age could not be checked).
    """

    years: float | None
    unreadable: bool = False


def age_in_years(patient_age: str | None, birth_date: str | None = None, reference_dates=()) -> AgeReading:
    """The patient's age from the header's texts; malformed values give no age, never an error.

    Args:
        patient_age: Patient's Age (AS): three digits and a unit letter ("081Y", "006M", "010W",
            "003D"), or, as many exporters write it, digits alone ("81", read as years). Spaces and
            NULs around it are ignored.
        birth_date: Patient's Birth Date (DA: "YYYYMMDD", or the old "YYYY.MM.DD"), used only
            when ``patient_age`` is absent or empty.
        reference_dates: the dates to count the age to (``AGE_REFERENCE_DATES``' values, in
            order); the first valid one is used.
    """
    text = (patient_age or "").strip(" \x00").upper()
    if text:
        match = re.fullmatch(r"(\d{1,3}) ?([DWMY]?)", text)
        if match is None:
            return AgeReading(None, unreadable=True)
        return _reading(int(match.group(1)) / _AGE_UNITS_PER_YEAR[match.group(2) or "Y"])
    birth_text = (birth_date or "").strip(" \x00")
    if not birth_text:
        return AgeReading(None)
    birth = _date(birth_text)
    reference = next((day for day in (_date(text) for text in reference_dates if text) if day is not None), None)
    if birth is None or reference is None or reference < birth:
        return AgeReading(None, unreadable=True)
    # Completed years, counted as a birthday is: 29 February counts from 1 March in other years.
    years = reference.year - birth.year - ((reference.month, reference.day) < (birth.month, birth.day))
    last_birthday = _anniversary(birth, birth.year + years)
    return _reading(years + (reference - last_birthday).days / 365.25)


def _reading(years: float) -> AgeReading:
    if not math.isfinite(years) or years < 0 or years > _OLDEST_AGE_YEARS:
        return AgeReading(None, unreadable=True)
    # Rounded down, so that the completed years are never overstated (7.997 years is 7.99, aged 7).
    return AgeReading(min(math.floor(years * 100 + 1e-9) / 100, float(AGE_CAP_YEARS)))


def _date(text: str) -> dt.date | None:
    match = re.fullmatch(r"(\d{4})\.?(\d{2})\.?(\d{2})", text.strip(" \x00"))
    if match is None:
        return None
    try:
        return dt.date(*(int(part) for part in match.groups()))
    except ValueError:
        return None


def _anniversary(birth: dt.date, year: int) -> dt.date:
    try:
        return birth.replace(year=year)
    except ValueError:  # 29 February in a year without one
        return dt.date(year, 3, 1)


def population_note(age_years: float | None, max_age_years: int = TRAINED_MAX_AGE_YEARS) -> str | None:
    """The note for a film whose header gives an age over the trained population's (more than
    ``max_age_years`` completed years), None otherwise. It names the completed years only."""
    if age_years is None or math.floor(age_years) <= max_age_years:
        return None
    said = f"{AGE_CAP_YEARS} years or more" if age_years >= AGE_CAP_YEARS else f"{math.floor(age_years)} years"
    return (
        f"{POPULATION_NOTE_START} {said}; the model was trained on children aged 1-5: its output is from outside "
        "the trained population."
    )


def is_population_note(warning: str) -> bool:
    """Whether one of an image's warnings is the population note (pages draw it beside the call)."""
    return warning.startswith(POPULATION_NOTE_START)


def is_dicom(data: bytes) -> bool:
    """True when ``data`` is a DICOM Part 10 file (128-byte preamble, then ``DICM``)."""
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC


def read_dataset(data: bytes, max_unpacked_bytes: int):
    """Parses the DICOM header (pixel data stays encoded).

    Args:
        data: the whole file.
        max_unpacked_bytes: largest size a deflated data set may unpack to (a zip bomb guard;
            pydicom inflates the whole data set in memory).

    Returns:
        The ``pydicom`` data set.

    Raises:
        InvalidImageError: the file is damaged, truncated, or unpacks to more than allowed.
    """
    import pydicom
    from pydicom.filereader import _read_file_meta_info  # the public twin only takes a path
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    # pydicom raises many exception types on malformed input; any of them means a damaged file.
    try:
        stream = io.BytesIO(data)
        stream.seek(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
        syntax = _read_file_meta_info(stream).get("TransferSyntaxUID")
        if syntax == DeflatedExplicitVRLittleEndian:
            _check_inflated_size(data[stream.tell() :], max_unpacked_bytes)
        # Every DICOM file says how it is encoded; without that, reading the rest is guesswork.
        dataset = pydicom.dcmread(io.BytesIO(data), specific_tags=_READ_TAGS) if syntax else None
        if dataset is not None:
            dataset.buffer = None  # pydicom keeps what it read from, for a deflated file the whole inflated copy
    except InvalidImageError:
        raise
    except Exception:  # noqa: BLE001 - pydicom raises many kinds for bytes that are not DICOM; one message
        dataset = None
    if dataset is None:
        raise InvalidImageError(
            "The DICOM file is damaged or incomplete and cannot be read. Export the image again from the PACS."
        )
    return dataset


def _check_inflated_size(deflated: bytes, max_unpacked_bytes: int) -> None:
    # Counted a megabyte at a time, so the check itself holds no inflated copy.
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    unpacked = len(inflater.decompress(deflated, 2**20))
    while unpacked <= max_unpacked_bytes:
        chunk = inflater.decompress(inflater.unconsumed_tail, 2**20)
        if not chunk:
            break
        unpacked += len(chunk)
    if unpacked > max_unpacked_bytes:
        raise InvalidImageError(
            f"The DICOM file unpacks to more than {max_unpacked_bytes / 2**20:.0f} MB, more than any "
            "radiograph needs. Export it uncompressed or with image compression (JPEG, JPEG 2000, RLE)."
        )


def image_size(ds) -> tuple[int, int]:
    """``(width, height)`` of the image from the header, before any pixel is decoded.

    Raises:
        UnsupportedDicomError: the file holds no image, or one this package cannot use.
    """
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedDicomError(
                "The DICOM file holds floating-point pixel data (a parametric map), not a radiograph. "
                "Export the chest radiograph itself."
            )
        raise UnsupportedDicomError(
            "The DICOM file holds no image (no pixel data); it may be a report or a study record. "
            "Export the chest radiograph image itself."
        )
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1))
        bits_allocated = int(ds.BitsAllocated)
        bits_stored = int(ds.get("BitsStored", bits_allocated))
        photometric = str(ds.PhotometricInterpretation).strip().upper()
    except Exception:  # noqa: BLE001 - a missing or malformed tag, in whatever form pydicom meets it
        raise UnsupportedDicomError(
            "The DICOM file lacks the tags that describe its image (rows, columns, bit depth, "
            "photometric interpretation). Export the image again from the PACS."
        ) from None
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if samples != 1 or bits_allocated not in (8, 16) or not 2 <= bits_stored <= 16:
            raise UnsupportedDicomError(
                f"The DICOM image stores {bits_stored}-bit pixels in {bits_allocated}-bit words; "
                "only 8- to 16-bit grey radiographs are supported. Export it as an 8-, 12- or 16-bit image."
            )
    elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"):
        if samples != 3 or bits_allocated != 8:
            raise UnsupportedDicomError(
                f"The DICOM image is {bits_allocated}-bit colour ({photometric}); only 8-bit colour is "
                "supported and radiographs are normally grey. Export it as a grey (MONOCHROME2) image."
            )
    else:
        raise UnsupportedDicomError(
            f"DICOM images with photometric interpretation '{photometric}' are not supported. "
            "Export the radiograph as a grey (MONOCHROME1 or MONOCHROME2) image."
        )
    return columns, rows


def decoded_bytes(ds) -> int:
    """The memory, in bytes, that decoding the first frame takes at its peak, from the header alone.

    Measured with pydicom 3.0 and the pylibjpeg decoders on 20 to 60 million pixel frames:

    * uncompressed or deflated: twice the stored frame (the pixel data element and the array
      pydicom copies it into);
    * RLE: twice the stored frame (the decoded frame and the array it is copied into);
    * JPEG, JPEG-LS, JPEG 2000: the stored frame plus 4 bytes a sample, as the codecs work in
      32-bit integers (a 16-bit JPEG 2000 frame: 6 bytes a pixel);
    * YBR_FULL and YBR_FULL_422 colour, which pydicom turns into RGB through float32: 4 more
      bytes a sample.

    ``decode_pixels`` then works in row strips, so what follows adds little.

    Args:
        ds: a data set that passed ``image_size``.
    """
    from pydicom.uid import RLELossless

    samples = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
    stored = samples * (int(ds.BitsAllocated) // 8)
    syntax = ds.file_meta.TransferSyntaxUID
    needed = 2 * stored if not syntax.is_encapsulated or syntax == RLELossless else stored + 4 * samples
    if str(ds.PhotometricInterpretation).strip().upper() in ("YBR_FULL", "YBR_FULL_422"):
        needed += 4 * samples
    return needed


def decode_pixels(ds, warnings: list[str], reduction: int = 1) -> np.ndarray:
    """Decodes the first frame and maps it to the package's grey array.

    The mapping, in the order DICOM displays an image:

    * 8-bit unsigned grey with no rescale, window or VOI LUT: the stored values are returned
      as uint8, as an 8-bit PNG would be (MONOCHROME1: ``255 - value``).
    * Everything else: the modality LUT (Rescale Slope / Intercept or the Modality LUT
      Sequence), then the VOI LUT (the VOI LUT Sequence if present, else the first Window
      Center / Width), through ``pydicom.pixels.apply_modality_lut`` / ``apply_voi_lut``. The
      VOI output range (the window's output range as pydicom defines it, or the LUT's nominal
      depth) is mapped linearly onto 0..65535; with no VOI, the values' own minimum to maximum
      is. MONOCHROME1 is then inverted (``65535 - value``). The result is uint16, which
      ``to_unit_range`` stretches from its own minimum to its own maximum like any 16-bit image.

    The LUTs run in row strips of about a million pixels, so their float64 working copies stay
    near 8 MB whatever the image's size (each value is mapped on its own, so the result is what
    the whole array at once would give). With ``reduction`` k > 1, each strip's result is then
    box averaged over k x k blocks (a partial block at the right or bottom edge is the mean of
    the pixels it has, as ``PIL.Image.reduce`` does): the displayed values are averaged, as
    for the other formats, and no full-size copy of the result is made.

    Colour (RGB / YBR) images are converted by the caller like other colour images.

    Args:
        ds: a data set that passed ``image_size``.
        warnings: list that plain-sentence warnings are appended to.
        reduction: k, the reduction along each side (1: the full size).

    Returns:
        New 2-D uint8 or uint16 array (rows, columns), or (rows, columns, 3) uint8 for colour;
        ``ceil(rows / k)`` x ``ceil(columns / k)`` when reduced.

    Raises:
        UnsupportedDicomError: no decoder for the transfer syntax is installed.
        InvalidImageError: the pixel data is damaged or does not match the header.
    """
    from pydicom.pixels import pixel_array
    from pydicom.pixels.decoders.base import get_decoder

    syntax = ds.file_meta.TransferSyntaxUID  # read_dataset made sure it is there
    try:
        available = get_decoder(syntax).is_available
    except Exception:  # noqa: BLE001 - NotImplementedError for syntaxes pydicom has no decoder for (video, private)
        available = False
    if not available:
        raise UnsupportedDicomError(
            f"The DICOM image is encoded as '{syntax.name}', which this installation cannot decode. "
            "Export it uncompressed or as JPEG, JPEG 2000, JPEG-LS or RLE."
        )
    frames = _number_of_frames(ds)
    damaged = InvalidImageError(
        f"The DICOM pixel data ({syntax.name}) is damaged or does not match its header. "
        "Export the image again from the PACS."
    )
    if syntax.is_encapsulated and not _first_frame_matches(ds, frames):
        raise damaged
    try:
        stored = pixel_array(ds, index=0 if frames > 1 else None)
    except Exception:  # noqa: BLE001 - a damaged pixel stream, in whatever form the decoder meets it
        raise damaged from None
    if frames > 1:
        warnings.append(f"The DICOM file holds {frames} frames; only the first was used.")
    if stored.ndim == 3:  # colour, converted to RGB by pydicom
        return _reduced(_strips(stored, reduction, lambda strip: strip.astype(np.uint8)), stored.shape, reduction, np.uint8)
    inverted = str(ds.PhotometricInterpretation).strip().upper() == "MONOCHROME1"
    if inverted:
        warnings.append("The DICOM image is MONOCHROME1 (bright background); it was inverted so that bone is bright.")
    try:
        plain = _is_plain_8_bit(ds)
    except Exception:  # noqa: BLE001 - a malformed rescale value
        raise _invalid_rescale() from None
    if plain:
        grey = _reduced(_strips(stored, reduction, lambda strip: strip.astype(np.uint8)), stored.shape, reduction, np.uint8)
        return (255 - grey) if inverted else grey
    return _grey_levels(stored, ds, warnings, inverted, reduction)


def _invalid_rescale() -> UnsupportedDicomError:
    return UnsupportedDicomError(
        "The DICOM header's rescale or modality LUT settings are invalid, so the pixel values cannot "
        "be interpreted. Export the image again from the PACS."
    )


_STRIP_PIXELS = 2**20  # a float64 strip takes 8 MB


def _strips(stored: np.ndarray, reduction: int, convert: Callable[[np.ndarray], np.ndarray]) -> Iterator[np.ndarray]:
    """``convert`` of each row strip of ``stored``; every strip but the last holds whole k x k blocks.

    ``convert`` is elementwise (a LUT, a rescale, a window), so for integer pixels of up to 16 bits
    it is computed once for each value between the image's smallest and largest and then looked
    up: the same numbers as converting every pixel, 4 to 8 times faster on a full-size film.
    """
    convert = _tabulated(convert, stored)
    rows = max(1, _STRIP_PIXELS // stored.shape[1] // reduction) * reduction
    for top in range(0, stored.shape[0], rows):
        yield convert(stored[top : top + rows])


_MAX_TABLE = 2**16 + 1


def _tabulated(convert: Callable[[np.ndarray], np.ndarray], stored: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``convert`` as a lookup table over ``stored``'s range of values, where that is exact and smaller."""
    if stored.dtype.kind not in "ui" or stored.dtype.itemsize > 2 or stored.size < 4 * _MAX_TABLE:
        return convert
    low, high = int(stored.min()), int(stored.max())
    values = np.arange(low, high + 1, dtype=np.int64).astype(stored.dtype).reshape(1, -1)  # (1, values)
    table = np.asarray(convert(values))[0]  # (values,)

    def look_up(strip: np.ndarray) -> np.ndarray:
        return table[strip.astype(np.int64) - low] if low else table[strip]

    return look_up


def _reduced(strips: Iterable[np.ndarray], shape: tuple[int, ...], reduction: int, dtype) -> np.ndarray:
    """The strips put together, each box averaged ``reduction`` times along each side first."""
    rows, columns = -(-shape[0] // reduction), -(-shape[1] // reduction)
    result = np.empty((rows, columns, *shape[2:]), dtype=dtype)
    top = 0
    for strip in strips:
        block = strip if reduction == 1 else _block_means(strip, reduction)
        result[top : top + block.shape[0]] = block
        top += block.shape[0]
    return result


def _block_means(values: np.ndarray, reduction: int) -> np.ndarray:
    """Rounded means of the k x k blocks of an unsigned (rows, columns[, samples]) array, in its dtype."""
    starts_y, starts_x = np.arange(0, values.shape[0], reduction), np.arange(0, values.shape[1], reduction)
    sums = np.add.reduceat(np.add.reduceat(values, starts_y, axis=0, dtype=np.uint32), starts_x, axis=1)
    heights = np.diff(np.append(starts_y, values.shape[0]))
    widths = np.diff(np.append(starts_x, values.shape[1]))
    counts = np.outer(heights, widths).astype(np.uint32).reshape(len(heights), len(widths), *([1] * (values.ndim - 2)))
    return ((sums + counts // 2) // counts).astype(values.dtype)


class _VoiFailed(Exception):
    """The VOI LUT or window could not be applied to some strip."""


def _grey_levels(stored: np.ndarray, ds, warnings: list[str], inverted: bool, reduction: int) -> np.ndarray:
    """Modality LUT, then VOI LUT or window, mapped onto 0..65535 (MONOCHROME1 inverted), a row strip at a time.

    Invalid VOI settings, found on whichever strip, fall back to the modality output's own range
    for the whole image, with a warning.
    """
    from pydicom.pixels import apply_modality_lut

    def modality(strip: np.ndarray) -> np.ndarray:
        try:
            return apply_modality_lut(strip, ds)
        except Exception:  # noqa: BLE001 - a malformed rescale value or modality LUT, in whatever form pydicom meets it
            raise _invalid_rescale() from None

    def mapped(values: np.ndarray, low: float, high: float) -> np.ndarray:  # (rows, columns) uint16
        if high <= low:
            unit = np.zeros(values.shape, dtype=np.float64)
        else:
            unit = np.clip((np.asarray(values, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
        if inverted:
            unit = 1.0 - unit
        return np.rint(unit * 65535.0).astype(np.uint16)

    if _has_voi(ds):
        try:
            voi, low, high = _voi(ds)
        except Exception:  # noqa: BLE001 - malformed VOI settings, in whatever form pydicom meets them
            voi = None

        def through_voi(strip: np.ndarray) -> np.ndarray:
            values = modality(strip)
            try:
                values = voi(values)
            except Exception:  # noqa: BLE001 - a VOI LUT that does not fit the values, in whatever form pydicom meets it
                raise _VoiFailed from None
            return mapped(values, low, high)

        if voi is not None:
            try:
                return _reduced(_strips(stored, reduction, through_voi), stored.shape, reduction, np.uint16)
            except _VoiFailed:
                pass
        warnings.append("The DICOM window / VOI LUT settings are invalid; the full range of values was used.")
    extremes = [(float(values.min()), float(values.max())) for values in _strips(stored, 1, modality)]
    low, high = min(low for low, _ in extremes), max(high for _, high in extremes)
    return _reduced(_strips(stored, reduction, lambda strip: mapped(modality(strip), low, high)), stored.shape, reduction, np.uint16)


def _voi(ds) -> tuple[Callable[[np.ndarray], np.ndarray], float, float]:
    """The VOI step (VOI LUT Sequence, else the first window) and its output range."""
    from pydicom.pixels import apply_voi_lut

    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        entries, first_mapped, depth = (int(value) for value in item.LUTDescriptor)
        if depth == 8:
            # pydicom 3.0.2 puts the input values in the LUT's own dtype before indexing,
            # so an 8-bit LUT with more than 256 entries wraps around; read as 16-bit
            # (the entries are the same numbers), it indexes correctly.
            item.LUTDescriptor = [entries, first_mapped, 16]
        return (lambda values: apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0)), 0.0, float(2**depth - 1)
    return (lambda values: apply_voi_lut(values, ds, index=0)), *_window_output_range(ds)


def _first_frame_matches(ds, frames: int) -> bool:
    """Whether the first compressed frame declares the header's size.

    The decoders allocate what the codestream declares, not what the header (already checked
    against the limits) says: a 224 x 224 header over a JPEG declaring 30000 x 30000 would
    take gigabytes and most of a minute before failing.
    """
    from pydicom.encaps import get_frame
    from pydicom.uid import RLELossless

    if ds.file_meta.TransferSyntaxUID == RLELossless:
        return True  # RLE is decoded into the size the header gives
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
    except Exception:  # noqa: BLE001 - a codestream get_frame cannot split: refused as damaged
        return False
    # Every other syntax pydicom decodes is a JPEG, JPEG-LS or JPEG 2000 codestream; one whose
    # size cannot be found is refused, as its decoder might still find one (libjpeg skips junk).
    declared = _codestream_size(frame)
    if declared is None:
        return False
    width, height = declared
    return width == int(ds.Columns) and height in (int(ds.Rows), 0)  # JPEG may defer the height (DNL)


# JPEG start-of-frame markers SOF0-SOF15 (less DHT, JPG, DAC) and JPEG-LS's SOF55.
_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}


def _codestream_size(frame: bytes) -> tuple[int, int] | None:
    """``(width, height)`` that a JPEG, JPEG-LS or JPEG 2000 codestream declares, else None."""
    if frame[:2] == b"\xff\xd8":  # JPEG / JPEG-LS: walk the marker segments to the start of frame
        offset = 2
        while offset + 9 <= len(frame) and frame[offset] == 0xFF:
            marker = frame[offset + 1]
            if marker == 0xFF:  # fill byte
                offset += 1
            elif marker in _SOF_MARKERS:
                height, width = struct.unpack(">HH", frame[offset + 5 : offset + 9])
                return width, height
            else:
                offset += 2 + struct.unpack(">H", frame[offset + 2 : offset + 4])[0]
        return None
    if frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 24:  # JPEG 2000: SOC, then SIZ
        right, bottom, left, top = struct.unpack(">IIII", frame[8:24])
        return right - left, bottom - top
    header = frame.find(b"ihdr", 0, 256)  # JPEG 2000 in a JP2 file: the image header box
    if frame[4:8] == b"jP  " and header > 0 and len(frame) >= header + 12:
        height, width = struct.unpack(">II", frame[header + 4 : header + 12])
        return width, height
    return None


def _number_of_frames(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _is_plain_8_bit(ds) -> bool:
    slope, intercept = ds.get("RescaleSlope", 1), ds.get("RescaleIntercept", 0)
    return (
        int(ds.BitsAllocated) == 8
        and int(ds.get("BitsStored", 8)) == 8
        and int(ds.get("PixelRepresentation", 0)) == 0
        and float(slope) == 1.0
        and float(intercept) == 0.0
        and not ds.get("ModalityLUTSequence")
        and not _has_voi(ds)
    )


def _has_voi(ds) -> bool:
    return bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)


def _window_output_range(ds) -> tuple[float, float]:
    """The range ``apply_windowing`` maps a window onto: the modality output's nominal range."""
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    return low, high


def header_facts(ds, warnings: list[str], max_age_years: int = TRAINED_MAX_AGE_YEARS) -> DicomTags:
    """The non-identifying tags, and warnings when they say this is not what the model was trained on.

    Warns for a modality other than a radiograph (CT, MR, US...), a body part other than the
    chest, a view other than frontal (AP/PA), and a patient older than ``max_age_years``
    completed years (``population_note``); notes an age or birth date that cannot be read. The
    age is returned in years only; the dates it may come from are not.

    Args:
        ds: the data set.
        warnings: list that plain-sentence warnings are appended to.
        max_age_years: oldest age of the trained population, in completed years.
    """
    age = age_in_years(
        _raw_text(ds, "PatientAge"),
        _raw_text(ds, "PatientBirthDate"),
        [_raw_text(ds, keyword) for keyword in AGE_REFERENCE_DATES],
    )
    tags = DicomTags(
        modality=_code(ds, "Modality"),
        body_part=_code(ds, "BodyPartExamined"),
        view_position=_code(ds, "ViewPosition"),
        photometric_interpretation=_code(ds, "PhotometricInterpretation"),
        transfer_syntax=_syntax_name(ds),
        age_years=age.years,
    )
    if tags.modality and tags.modality not in _RADIOGRAPH_MODALITIES:
        name = _MODALITY_NAMES.get(tags.modality)
        described = f"{tags.modality} ({name})" if name else tags.modality
        warnings.append(
            f"The DICOM header says the modality is {described}, not a radiograph; the model was trained "
            "on chest radiographs only, so its output does not apply."
        )
    if tags.body_part and tags.body_part not in _CHEST_BODY_PARTS:
        warnings.append(
            f"The DICOM header says the body part is {tags.body_part}, not the chest; the model was "
            "trained on chest radiographs only, so its output does not apply."
        )
    if tags.view_position and tags.view_position not in _FRONTAL_VIEWS:
        kind = "a lateral view" if tags.view_position in _LATERAL_VIEWS else "not a frontal view"
        warnings.append(
            f"The DICOM header says the view is {tags.view_position} ({kind}); the model was trained on "
            "frontal (AP or PA) chest radiographs only."
        )
    note = population_note(age.years, max_age_years)
    if note is not None:
        warnings.append(note)
    elif age.unreadable:
        warnings.append(AGE_UNREADABLE_NOTE)
    return tags


def _raw_text(ds, keyword: str) -> str:
    """A short text element's value, read raw: converting it may run pydicom's validation,
    which (depending on pydicom's settings) warns quoting the value, and that may be the age."""
    try:
        element = ds.get_item(keyword)
    except Exception:  # noqa: BLE001 - an element pydicom cannot read: no text
        return ""
    value = getattr(element, "value", None)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("ascii", errors="ignore")
    return "" if value is None else str(value)


def _code(ds, keyword: str) -> str | None:
    """A code-string tag, upper-case, printable, at most 16 characters (the CS limit), or None."""
    text = re.sub(r"[^0-9A-Z _-]", "", _raw_text(ds, keyword).strip().upper())[:16].strip()
    return text or None


def _syntax_name(ds) -> str | None:
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    return getattr(syntax, "name", None) if syntax else None
