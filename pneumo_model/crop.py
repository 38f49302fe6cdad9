"""Removing the region below the lungs, and burned-in markers, so that an image can be rescored without them.

Models trained on the Kermany paediatric data lean on the bright diaphragm and abdomen below the
lungs. This module finds where the lungs end (``find_diaphragm``), crops an image to a box
(``apply_crop``; ``fit_box`` grows a box drawn by hand to the smallest one accepted), finds and
paints out bright burned-in markers such as the letter R (``find_markers``), makes the pixels a
rescore calls (``edit_pixels``: the markers painted out, then the crop), and compares the calls
before and after (``RescoreResult``, made by ``Predictor.rescore``; ``call_changed`` only when
the call leaves the grey zone on the other side of the threshold). A crop that cuts into a lung
field or squashes the film out of the original films' proportions is refused, not rescored
(``RescoreRule``, ``check_rescore``; docs/crop_rule.md), and a call within a hair of the grey
zone's edge is said to be so (``just_past_grey_zone``).

Coordinates: every box is ``(x0, y0, x1, y1)`` in pixels of the image passed in (the full
upload, not the model input), with the origin at the top-left corner, x to the right, y down,
and ``x1``/``y1`` exclusive, so the box's pixels are ``pixels[y0:y1, x0:x1]``. A row ``y`` is
the row index of that image.

Pixels: every function takes the 2-D grey array that ``load_image`` returns (uint8 or uint16),
or (height, width, 1), or float in [0, 1]; intensities follow ``to_unit_range``. No function
changes its input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from .errors import ConfigError, InvalidImageError
from .preprocessing import ORIGINAL_FILMS, FilmAspect, to_unit_range

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class CropLimits:
    """The smallest crop accepted, whoever proposes it (the detector or a user).

    Attributes:
        min_side: smallest width and height of a box, in pixels of the image.
        min_area_fraction: smallest share of the image's area a box may keep, in (0, 1].
    """

    min_side: int = 32
    min_area_fraction: float = 0.25

    def __post_init__(self):
        if self.min_side < 1:
            raise ConfigError(f"min_side must be at least 1 pixel; got {self.min_side}.")
        if not 0.0 < self.min_area_fraction <= 1.0:
            raise ConfigError(f"min_area_fraction must lie in (0, 1]; got {self.min_area_fraction}.")


@dataclass(frozen=True)
class DiaphragmSettings:
    """How ``find_diaphragm`` looks for the lungs and the diaphragm.

    Lengths given as fractions are fractions of the side of the square working copy (the
    image is squashed to ``work_size`` x ``work_size`` like the data set's images, so a
    full-size upload and its 224 px copy are seen the same way).

    Attributes:
        margin: rows kept below the diaphragm dome, as a fraction of the image height.
        work_size: side of the square working copy, in pixels.
        blur: Gaussian blur sigma.
        rib_suppression: height of the vertical grey opening that removes the ribs' bright
            horizontal bands from the lung fields.
        threshold_quantiles: (lowest, highest, count): the dark-pixel thresholds tried, as
            percentiles of the central part of the image.
        opening: radius of the opening that separates touching dark regions.
        lung_area: (smallest, largest) area of one lung, as fractions of the image area.
        min_lung_height: smallest height of one lung.
        lung_centre_rows: (top, bottom) band the centre row of a lung must lie in.
        jump: a step in a lung's lower edge larger than this, from one column to the next,
            ends the diaphragm contour (it is the heart border or the hilum).
        lateral_trim: share of a lung's width, on its outer side (the costophrenic recess),
            left out when looking for the dome top.
        max_rise: the dome top is never placed higher above the lung's lowest point than
            this share of the lung's height.
        dome_rows: (top, bottom) band the dome top must lie in, as fractions of the height;
            outside it the detection is refused as implausible.
        partial_lung: a lung is taken as only partly outlined, and ignored, when its lowest
            point lies above the other lung's dome top and more than this above the other
            lung's lowest point.
        min_structure: smallest ratio of the spread of anatomy-scale brightness to that of
            pixel-scale detail; below it the image is taken as blank or noise (radiographs of
            the data set score 7 or more, random noise under 1).
    """

    margin: float = 0.04
    work_size: int = 224
    blur: float = 0.01
    rib_suppression: float = 0.08
    threshold_quantiles: tuple[float, float, int] = (5.0, 75.0, 24)
    opening: float = 0.012
    lung_area: tuple[float, float] = (0.01, 0.30)
    min_lung_height: float = 0.15
    lung_centre_rows: tuple[float, float] = (0.10, 0.80)
    jump: float = 0.05
    lateral_trim: float = 0.15
    max_rise: float = 0.30
    dome_rows: tuple[float, float] = (0.50, 0.97)
    partial_lung: float = 0.10
    min_structure: float = 2.0

    def __post_init__(self):
        if not 0.0 <= self.margin < 1.0:
            raise ConfigError(f"margin must lie in [0, 1) (a fraction of the image height); got {self.margin}.")
        if self.work_size < 64:
            raise ConfigError(f"work_size must be at least 64 pixels; got {self.work_size}.")
        low, high, count = self.threshold_quantiles
        if not (0.0 <= low < high <= 100.0 and count >= 2):
            raise ConfigError(
                "threshold_quantiles must be (low, high, count) with 0 <= low < high <= 100 and "
                f"count >= 2; got {self.threshold_quantiles}."
            )
        if not 0.0 <= self.dome_rows[0] < self.dome_rows[1] <= 1.0:
            raise ConfigError(
                f"dome_rows must be (top, bottom) with 0 <= top < bottom <= 1; got {self.dome_rows}."
            )


@dataclass(frozen=True)
class DiaphragmResult:
    """Where the lungs end in one image, and the crop that removes what lies below.

    Attributes:
        found: True when plausible lungs and a diaphragm were found.
        diaphragm_y: row of the top of the higher diaphragm dome in the image passed in
            (0 = top row), or None when not found.
        box: suggested crop ``(0, 0, width, diaphragm_y + 1 + margin rows)``, or None.
        reason: a plain sentence saying what was found, or why nothing is suggested.
        lung_count: lungs outlined and used (0, 1 or 2); 1 means the line rests on one lung.
        lung_boxes: bounding box of each lung used, in pixels of the image passed in.
        width: width of the image passed in.
        height: height of the image passed in.
        lung_masks: each outlined lung's mask (as in ``lung_boxes``), bool (work_size, work_size) on
            the square working copy (the whole image squashed), read-only: where the attention check
            places the heat on the anatomy (``thorax.anatomy_map``).
        dome_rows: each lung's diaphragm dome top, in rows of the working copy (float, same order).
    """

    found: bool
    diaphragm_y: int | None
    box: Box | None
    reason: str
    lung_count: int
    lung_boxes: tuple[Box, ...]
    width: int
    height: int
    lung_masks: tuple[np.ndarray, ...] = field(default=(), compare=False, repr=False)
    dome_rows: tuple[float, ...] = ()


# What a call says, read with its grey zone: a confident call on one side, or needs a careful read.
READINGS = ("normal", "indeterminate", "pneumonia")


@dataclass(frozen=True)
class RescoreResult:
    """The model's call on an image before and after an edit: a crop, burned-in markers painted out, or both.

    Attributes:
        probability_before: calibrated probability of pneumonia for the whole image.
        probability_after: the same for the edited image.
        delta: ``probability_after - probability_before``.
        box: the crop used, in pixels of the whole image; None when the image was not cropped.
        label_before, label_after: "pneumonia" or "normal" at the model's threshold.
        grey_zone_before, grey_zone_after: True when the probability needs a careful read.
        threshold: the operating threshold used for the labels.
        ood_before, ood_after: the out-of-distribution gate's verdict on the whole image and on
            the edited one (True: the call is not meaningful); None without a gate.
        ood_score_before, ood_score_after: the gate's scores (above 1 is flagged); None without a gate.
        markers_masked: True when burned-in markers were painted out before the call after.
        marker_count: markers found and painted out (0 when none was found); None when not masked.
        marker_area_fraction: share of the image's pixels painted out; None when not masked.
        refused: True when the edit breaks the rescore rule (``check_rescore``): the edited image
            was not called, and every "after" field (and ``delta``) is None.
        reason: why it was refused, in plain words; None when not refused.
    """

    probability_before: float
    probability_after: float | None
    delta: float | None
    box: Box | None
    label_before: str
    label_after: str | None
    grey_zone_before: bool
    grey_zone_after: bool | None
    threshold: float
    ood_before: bool | None = None
    ood_after: bool | None = None
    ood_score_before: float | None = None
    ood_score_after: float | None = None
    markers_masked: bool = False
    marker_count: int | None = None
    marker_area_fraction: float | None = None
    refused: bool = False
    reason: str | None = None

    @property
    def label_changed(self) -> bool:
        """The probability crossed the threshold (in the grey zone that is not a change of call); never for a refusal."""
        return not self.refused and self.label_before != self.label_after

    @property
    def reading_before(self) -> str:
        """"normal" or "pneumonia" outside the grey zone, "indeterminate" in it (``READINGS``)."""
        return "indeterminate" if self.grey_zone_before else self.label_before

    @property
    def reading_after(self) -> str | None:
        """As ``reading_before``, for the edited image; None when the rescore was refused."""
        if self.refused:
            return None
        return "indeterminate" if self.grey_zone_after else self.label_after

    @property
    def call_changed(self) -> bool:
        """A meaningful change: confident on one side of the threshold before, confident on the other after.

        Crossing the threshold inside the grey zone, or into or out of it, is not one: an
        indeterminate call before or after needs a careful read either way.
        """
        return self.label_changed and not self.grey_zone_before and not self.grey_zone_after

    @classmethod
    def from_calls(cls, before, after, box: Sequence | None = None, markers: "MarkerResult | None" = None) -> "RescoreResult":
        """The comparison of two calls already made: ``Prediction``s of the whole image and of the
        edited one (cropped to ``box`` when given, with ``markers`` painted out when given)."""
        return cls(
            probability_before=before.probability,
            probability_after=after.probability,
            delta=after.probability - before.probability,
            box=None if box is None else tuple(int(v) for v in box),
            label_before=before.label,
            label_after=after.label,
            grey_zone_before=before.grey_zone,
            grey_zone_after=after.grey_zone,
            threshold=before.threshold,
            ood_before=before.ood,
            ood_after=after.ood,
            ood_score_before=before.ood_score,
            ood_score_after=after.ood_score,
            markers_masked=markers is not None,
            marker_count=None if markers is None else markers.count,
            marker_area_fraction=None if markers is None else markers.area_fraction,
        )

    @classmethod
    def refusal(cls, before, box: Sequence | None, reason: str, markers: "MarkerResult | None" = None) -> "RescoreResult":
        """A refused rescore: the whole image's call (a ``Prediction``), the edit asked for, and why
        it was refused (``check_rescore``); nothing after."""
        return cls(
            probability_before=before.probability,
            probability_after=None,
            delta=None,
            box=None if box is None else tuple(int(v) for v in box),
            label_before=before.label,
            label_after=None,
            grey_zone_before=before.grey_zone,
            grey_zone_after=None,
            threshold=before.threshold,
            ood_before=before.ood,
            ood_score_before=before.ood_score,
            markers_masked=markers is not None,
            marker_count=None if markers is None else markers.count,
            marker_area_fraction=None if markers is None else markers.area_fraction,
            refused=True,
            reason=reason,
        )

    def to_dict(self) -> dict:
        """The ``crop`` command's JSON: with ``refused`` and its ``reason``; a refusal's "after" fields are null."""
        return {
            "refused": self.refused,
            "reason": self.reason,
            "probability_before": self.probability_before,
            "probability_after": self.probability_after,
            "delta": self.delta,
            "box": None if self.box is None else list(self.box),
            "label_before": self.label_before,
            "label_after": self.label_after,
            "grey_zone_before": self.grey_zone_before,
            "grey_zone_after": self.grey_zone_after,
            "reading_before": self.reading_before,
            "reading_after": self.reading_after,
            "threshold_crossed": self.label_changed,
            "call_changed": self.call_changed,
            "threshold": self.threshold,
            "ood_before": self.ood_before,
            "ood_after": self.ood_after,
            "ood_score_before": None if self.ood_score_before is None else round(self.ood_score_before, 4),
            "ood_score_after": None if self.ood_score_after is None else round(self.ood_score_after, 4),
            "markers_masked": self.markers_masked,
            "marker_count": self.marker_count,
            "marker_area_fraction": None if self.marker_area_fraction is None else round(self.marker_area_fraction, 6),
        }


@dataclass(frozen=True)
class MarkerSettings:
    """How ``find_markers`` recognises burned-in markers (letters, text, electrodes).

    A marker is a small, compact blob whose pixels are near the image's brightest value and
    much brighter than the ring of pixels around it. Bones are larger, elongated or not as
    bright as their surroundings are dark, and are left alone. Faint (grey) markers are missed
    on purpose: painting out anatomy would be worse than leaving a marker.

    Attributes:
        work_size: the search runs on a copy whose longer side is at most this many pixels.
        max_size: longest side of a marker, as a fraction of the image's shorter side (also
            the window of the white top-hat that isolates small bright things).
        min_level: smallest intensity (in the [0, 1] range of ``to_unit_range``) of a marker pixel.
        min_tophat: smallest brightness above the local background (white top-hat).
        min_contrast: smallest difference between a blob's median and the median of the ring
            around it.
        max_aspect: largest ratio of a blob's longer to its shorter side.
        min_pixels: smallest blob, in pixels of the working copy.
        grow: pixels (of the working copy) added around each blob so that its soft edge is
            painted out too.
        inpaint_radius: radius, in pixels of the image, of the ``cv2.inpaint`` neighbourhood.
    """

    work_size: int = 1024
    max_size: float = 0.12
    min_level: float = 0.85
    min_tophat: float = 0.2
    min_contrast: float = 0.4
    max_aspect: float = 4.0
    min_pixels: int = 6
    grow: int = 2
    inpaint_radius: int = 5

    def __post_init__(self):
        if self.work_size < 64:
            raise ConfigError(f"work_size must be at least 64 pixels; got {self.work_size}.")
        if not 0.0 < self.max_size <= 0.5:
            raise ConfigError(f"max_size must lie in (0, 0.5]; got {self.max_size}.")


@dataclass(frozen=True, eq=False)
class MarkerResult:
    """Burned-in markers found in one image.

    Attributes:
        mask: bool array (height, width) of the image passed in; True on marker pixels.
        masked: a new copy of the image, same shape and dtype (float64 input comes back as
            float64), with the marker pixels painted out by ``cv2.inpaint`` (Telea).
        boxes: bounding box of each marker, in pixels of the image.
    """

    mask: np.ndarray
    masked: np.ndarray
    boxes: tuple[Box, ...]

    @property
    def count(self) -> int:
        return len(self.boxes)

    @property
    def area_fraction(self) -> float:
        """Share of the image's pixels painted out, in [0, 1]."""
        return float(self.mask.mean())


def _grey(pixels: np.ndarray) -> np.ndarray:
    """The 2-D view of a grey image, or InvalidImageError."""
    if not isinstance(pixels, np.ndarray):
        raise InvalidImageError("Expected a numpy array of pixels; use load_image to read a file.")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim != 2 or pixels.size == 0:
        raise InvalidImageError(
            f"Expected a non-empty grey image of shape (height, width); got shape {pixels.shape}."
        )
    return pixels


def _resize(unit: np.ndarray, width: int, height: int) -> np.ndarray:
    shrinking = width * height < unit.shape[0] * unit.shape[1]
    return cv2.resize(unit, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


# ----------------------------------------------------------------------------- diaphragm


def _midline(smooth: np.ndarray) -> int:
    """Column of the mediastinum: the brightest vertical band in the middle of the chest."""
    size = smooth.shape[0]
    profile = smooth[int(0.2 * size) : int(0.7 * size)].mean(axis=0)  # (size,)
    window = max(1, size // 20)
    profile = np.convolve(profile, np.ones(window) / window, mode="same")
    left, right = int(0.3 * size), int(0.7 * size)
    return left + int(np.argmax(profile[left:right]))


def _lung_masks(smooth: np.ndarray, midline: int, settings: DiaphragmSettings) -> list[np.ndarray]:
    """The largest plausible dark region on each side of the midline, over a range of thresholds.

    Raising the threshold grows each lung until it leaks into the air outside the body (it
    then touches the image's side or bottom edge) or into the other lung (it crosses the
    midline); the largest region seen before that is kept.
    """
    size = smooth.shape[0]
    area_min, area_max = (fraction * size * size for fraction in settings.lung_area)
    centre_top, centre_bottom = (fraction * size for fraction in settings.lung_centre_rows)
    radius = max(1, round(settings.opening * size))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    central = smooth[int(0.1 * size) : int(0.9 * size), int(0.1 * size) : int(0.9 * size)]
    low, high, count = settings.threshold_quantiles
    thresholds = np.unique(np.percentile(central, np.linspace(low, high, int(count))))

    best: dict[str, tuple[int, np.ndarray]] = {}  # side -> (area, mask)
    for threshold in thresholds:
        dark = cv2.morphologyEx((smooth < threshold).astype(np.uint8), cv2.MORPH_OPEN, disk)
        n, labels, stats, centroids = cv2.connectedComponentsWithStats(dark, connectivity=4)
        for label in range(1, n):
            x, y, width, height, area = (int(v) for v in stats[label])
            centre_x, centre_y = centroids[label]
            if not (area_min <= area <= area_max and height >= settings.min_lung_height * size):
                continue
            if x == 0 or x + width == size or y + height == size:
                continue  # outside air reaches the side or bottom edge; a lung does not
            if not centre_top <= centre_y <= centre_bottom or x < midline < x + width:
                continue
            side = "left" if centre_x < midline else "right"
            if side not in best or best[side][0] < area:
                best[side] = (area, labels == label)
    return [mask for _, mask in best.values()]


def _dome_row(mask: np.ndarray, midline: int, settings: DiaphragmSettings) -> tuple[float, int]:
    """Row of the top of one lung's diaphragm dome, and the lung's lowest row (work pixels).

    The lung's lower edge is followed, column by column, from its lowest point (near the
    costophrenic angle) as long as it does not jump (a jump is the heart border or the
    hilum); the outer part of the lung is left out; the highest point of what remains is
    the dome top, but never more than ``max_rise`` of the lung's height above its lowest point.
    """
    size = mask.shape[0]
    rows, cols = np.nonzero(mask)
    top, bottom = int(rows.min()), int(rows.max())
    first, last = int(cols.min()), int(cols.max()) + 1
    columns = mask[:, first:last]  # (size, lung width)
    lowest = (size - 1 - np.argmax(columns[::-1], axis=0)).astype(float)  # lowest lung row per column
    lowest[~columns.any(axis=0)] = -1.0
    half = max(1, round(0.015 * size))
    from scipy.ndimage import median_filter  # here: SciPy's import costs predict a third of a second

    lowest = median_filter(lowest, size=2 * half + 1, mode="nearest")

    jumps = np.flatnonzero(np.abs(np.diff(lowest)) > settings.jump * size)
    start_column = int(np.argmax(lowest))
    start = int(jumps[jumps < start_column].max()) + 1 if np.any(jumps < start_column) else 0
    end = int(jumps[jumps >= start_column].min()) + 1 if np.any(jumps >= start_column) else len(lowest)
    contour = np.arange(start, end)
    trim = round(settings.lateral_trim * (last - first))
    lung_is_left_of_midline = (first + last) / 2 < midline
    inner = contour[contour >= trim] if lung_is_left_of_midline else contour[contour < len(lowest) - trim]
    if inner.size == 0:
        inner = np.array([start_column])
    dome = float(lowest[inner].min())
    return max(dome, bottom - settings.max_rise * (bottom - top)), bottom


def _to_image_box(mask: np.ndarray, width: int, height: int) -> Box:
    size = mask.shape[0]
    rows, cols = np.nonzero(mask)
    return (
        int(math.floor(cols.min() * width / size)),
        int(math.floor(rows.min() * height / size)),
        min(width, int(math.ceil((cols.max() + 1) * width / size))),
        min(height, int(math.ceil((rows.max() + 1) * height / size))),
    )


def find_diaphragm(
    pixels: np.ndarray, settings: DiaphragmSettings = DiaphragmSettings(), limits: CropLimits = CropLimits()
) -> DiaphragmResult:
    """Finds the top of the diaphragm and suggests a crop that keeps the chest above it.

    Classical image processing on a square working copy (``settings.work_size``): refuse an
    image with no anatomy-scale structure (blank, noise), blur, remove the ribs with a vertical
    grey opening, find each lung as the largest dark region on its side of the mediastinum that
    stays clear of the image edges over a range of thresholds, follow each lung's lower edge to
    the top of its diaphragm dome, and take the higher dome. A lung whose lowest point lies
    above the other lung's dome is taken as only partly outlined and ignored; a dome outside
    ``settings.dome_rows`` is refused as implausible. Rows are mapped back to the image passed in.

    Measured on 36 images annotated by eye (``assets/annotations/diaphragm.csv``): found on 35,
    median error 1.8 % of the image height. Hazy or consolidated lung bases can make the line
    too high, and bowel gas under a dome can make it too low; the line is a suggestion to check.

    Args:
        pixels: grey image (height, width) or (height, width, 1), uint8, uint16 or float in
            [0, 1]; any size (full-size uploads are squashed to the working copy). Not modified.
        settings: detector settings, including the margin kept below the dome.
        limits: the suggested box must keep at least this much of the image.

    Returns:
        A ``DiaphragmResult``. It never raises for a valid image: when no plausible lungs or
        diaphragm are found, ``found`` is False, ``box`` is None and ``reason`` says why.

    Raises:
        InvalidImageError: ``pixels`` is not a non-empty grey image or breaks the intensity rule.
    """
    pixels = _grey(pixels)
    height, width = pixels.shape
    size = settings.work_size
    unit = _resize(to_unit_range(pixels), size, size)  # (size, size) float32 in [0, 1]

    def not_found(reason: str, lungs: Sequence[np.ndarray] = (), domes: Sequence[tuple[float, int]] = ()) -> DiaphragmResult:
        boxes = tuple(_to_image_box(mask, width, height) for mask in lungs)
        return DiaphragmResult(
            False, None, None, reason, len(lungs), boxes, width, height, _read_only(lungs), tuple(float(d) for d, _ in domes)
        )

    fine = unit - cv2.GaussianBlur(unit, (0, 0), 0.005 * size)  # (size, size) pixel-scale detail and noise
    coarse = cv2.GaussianBlur(unit, (0, 0), 0.02 * size)  # (size, size) anatomy-scale shapes
    if coarse.std() < 1e-3 or coarse.std() < settings.min_structure * max(float(fine.std()), 1e-6):
        return not_found(
            "The image shows no large-scale structure (it looks blank or like noise), so no lungs "
            "were looked for. Draw the crop box by hand."
        )
    smooth = cv2.GaussianBlur(unit, (0, 0), settings.blur * size)  # (size, size)
    rib_free = cv2.morphologyEx(
        smooth, cv2.MORPH_OPEN, np.ones((max(1, round(settings.rib_suppression * size)), 1), np.uint8)
    )  # (size, size): bright bands thinner than the window are gone
    midline = _midline(rib_free)
    lungs = _lung_masks(rib_free, midline, settings)
    if not lungs:
        return not_found(
            "No lung fields could be outlined (the image may not be a frontal chest X-ray, or the "
            "lungs are too opaque). Draw the crop box by hand."
        )
    domes = [_dome_row(mask, midline, settings) for mask in lungs]
    if len(lungs) == 2:
        # A lung that ends above the other lung's dome, and well above the other lung's lowest
        # point, is only partly outlined (a hazy base); its edge is not the diaphragm.
        lower_dome = max(dome for dome, _ in domes)
        lowest = max(bottom for _, bottom in domes)
        keep = [
            i for i, (_, bottom) in enumerate(domes)
            if bottom >= lower_dome or lowest - bottom <= settings.partial_lung * size
        ]
        lungs, domes = [lungs[i] for i in keep], [domes[i] for i in keep]
    dome_work = min(dome for dome, _ in domes)

    fraction = (dome_work + 0.5) / size
    if fraction < settings.dome_rows[0]:
        return not_found(
            f"The lung outline ends at {100 * fraction:.0f} % of the image height, too high for the "
            "diaphragm (the lung bases may be hazy or consolidated). Draw the crop box by hand.",
            lungs, domes,
        )
    if fraction > settings.dome_rows[1]:
        return not_found(
            f"The lung outline reaches {100 * fraction:.0f} % of the image height, so the diaphragm "
            "seems to lie at or below the bottom edge and there is nothing to remove. Draw the crop "
            "box by hand if needed.",
            lungs, domes,
        )
    diaphragm_y = min(height - 1, max(0, int(round(fraction * height - 0.5))))
    box = (0, 0, width, min(height, diaphragm_y + 1 + int(round(settings.margin * height))))
    try:
        validate_box(box, width, height, limits)
    except ConfigError as error:
        return not_found(f"The suggested crop would be too small: {error}", lungs, domes)

    if len(lungs) == 2:
        which = "both lungs. The top of the higher"
    else:
        which = "one lung only; check the line. The top of its"
    reason = (
        f"Outlined {which} diaphragm dome is at row {diaphragm_y} of {height} "
        f"({100 * diaphragm_y / height:.0f} % of the height); the suggested crop's bottom edge is {box[3]} px from "
        f"the top, so it keeps the top {box[3]} of {height} rows."
    )
    boxes = tuple(_to_image_box(mask, width, height) for mask in lungs)
    return DiaphragmResult(
        True, diaphragm_y, box, reason, len(lungs), boxes, width, height, _read_only(lungs), tuple(float(d) for d, _ in domes)
    )


def _read_only(masks: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    for mask in masks:
        mask.setflags(write=False)
    return tuple(masks)


# ----------------------------------------------------------------------------- cropping and rescoring


def _box_numbers(box: Sequence) -> list[int]:
    """The four whole numbers of a box, or ConfigError."""
    values = list(box) if isinstance(box, (tuple, list, np.ndarray)) else None
    if values is None or len(values) != 4:
        raise ConfigError(f"A crop box must be four numbers (x0, y0, x1, y1) in pixels; got {box!r}.")
    numbers = []
    for value in values:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ConfigError(f"A crop box must be four whole numbers (x0, y0, x1, y1); got {box!r}.")
        if not math.isfinite(value) or float(value) != int(value):
            raise ConfigError(f"A crop box must be four whole numbers (x0, y0, x1, y1); got {box!r}.")
        numbers.append(int(value))
    return numbers


def validate_box(box: Sequence, width: int, height: int, limits: CropLimits = CropLimits()) -> Box:
    """Checks a crop box against an image's size and the limits; returns it as four ints.

    Args:
        box: ``(x0, y0, x1, y1)`` in pixels, x1 and y1 exclusive; whole numbers (ints, numpy
            ints or floats with no fractional part).
        width, height: size of the image the box applies to.
        limits: smallest side and smallest share of the image's area.

    Raises:
        ConfigError: with a sentence saying what is wrong with the box.
    """
    numbers = _box_numbers(box)
    x0, y0, x1, y1 = numbers
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ConfigError(
            f"The crop box {tuple(numbers)} does not fit inside the {width} x {height} image; it needs "
            f"0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}."
        )
    if x1 - x0 < limits.min_side or y1 - y0 < limits.min_side:
        raise ConfigError(
            f"The crop box {tuple(numbers)} is {x1 - x0} x {y1 - y0} pixels; each side needs at least "
            f"{limits.min_side} pixels."
        )
    share = (x1 - x0) * (y1 - y0) / (width * height)
    if share < limits.min_area_fraction:
        raise ConfigError(
            f"The crop box {tuple(numbers)} keeps {100 * share:.0f} % of the image; keep at least "
            f"{100 * limits.min_area_fraction:.0f} % so that the chest stays in view."
        )
    return (x0, y0, x1, y1)


def apply_crop(pixels: np.ndarray, box: Sequence, limits: CropLimits = CropLimits()) -> np.ndarray:
    """Returns a new array holding ``pixels[y0:y1, x0:x1]``, after checking the box.

    Args:
        pixels: grey image (height, width) or (height, width, 1), any dtype. Not modified.
        box: ``(x0, y0, x1, y1)`` in pixels of ``pixels``, x1 and y1 exclusive.
        limits: smallest side and smallest share of the image's area.

    Returns:
        A new array (y1 - y0, x1 - x0) (or with the trailing 1 axis), same dtype as ``pixels``.

    Raises:
        InvalidImageError: ``pixels`` is not a non-empty grey image.
        ConfigError: the box is not four whole numbers, leaves the image or is too small.
    """
    grey = _grey(pixels)
    x0, y0, x1, y1 = validate_box(box, grey.shape[1], grey.shape[0], limits)
    return pixels[y0:y1, x0:x1].copy()


def fit_box(
    box: Sequence, width: int, height: int, limits: CropLimits = CropLimits(), previous: Sequence | None = None
) -> Box:
    """The box grown as little as possible into one that ``validate_box`` accepts.

    What crop sliders that cannot break need: each edge is clipped to the image and each pair
    put in order; then the span of rows and the span of columns are each grown, where needed,
    to the smallest that keeps ``limits.min_side`` pixels and, with the other span,
    ``limits.min_area_fraction`` of the image. The span that changed since ``previous`` is
    fitted first, and within it the edge that moved gives way (a dragged edge stops at the
    limit); the other edge moves only when the image's border is reached.

    Args:
        box: ``(x0, y0, x1, y1)`` in pixels, x1 and y1 exclusive, whole numbers; may be empty
            or reversed (a range slider's two handles on one value).
        width, height: size of the image the box applies to.
        limits: smallest side and smallest share of the image's area.
        previous: the box before the user's change (a valid one); None when unknown, and then
            the bottom and right edges give way.

    Returns:
        A box ``validate_box`` accepts: ``box`` itself (as ints) when it already was one.

    Raises:
        ConfigError: ``box`` or ``previous`` is not four whole numbers, or the image is smaller
            than the smallest crop.
    """
    x0, y0, x1, y1 = _box_numbers(box)
    old = None if previous is None else _box_numbers(previous)
    if width < limits.min_side or height < limits.min_side:
        raise ConfigError(
            f"The {width} x {height} image is smaller than the smallest crop ({limits.min_side} pixels a side)."
        )

    def clipped(a: int, b: int, size: int) -> tuple[int, int]:
        low, high = sorted((min(max(a, 0), size), min(max(b, 0), size)))
        return low, high

    def enough(rows: int, columns: int) -> bool:  # the very test validate_box makes
        return rows * columns / (width * height) >= limits.min_area_fraction

    def grown(span: tuple[int, int], size: int, other: int, before: tuple[int, int] | None) -> tuple[int, int]:
        start, end = span
        length = max(limits.min_side, min(size, math.ceil(limits.min_area_fraction * width * height / max(other, 1))))
        while length > limits.min_side and enough(length - 1, other):
            length -= 1
        while length < size and not enough(length, other):
            length += 1
        if end - start >= length:
            return start, end
        if before is not None and start != before[0] and end == before[1]:  # the first edge was dragged
            start = max(0, end - length)
            return start, start + length
        end = min(size, start + length)
        return end - length, end

    rows, columns = clipped(y0, y1, height), clipped(x0, x1, width)
    old_rows = None if old is None else (old[1], old[3])
    old_columns = None if old is None else (old[0], old[2])
    if old_rows is not None and rows == old_rows and columns != old_columns:
        columns = grown(columns, width, rows[1] - rows[0], old_columns)
        rows = grown(rows, height, columns[1] - columns[0], old_rows)
    else:
        rows = grown(rows, height, columns[1] - columns[0], old_rows)
        columns = grown(columns, width, rows[1] - rows[0], old_columns)
    return validate_box((columns[0], rows[0], columns[1], rows[1]), width, height, limits)


def edit_pixels(
    pixels: np.ndarray, box: Sequence | None = None, markers: "MarkerResult | None" = None, limits: CropLimits = CropLimits()
) -> np.ndarray:
    """The pixels a rescore calls: burned-in markers painted out when ``markers`` is given, then
    the crop to ``box`` when it is given.

    Markers are found and painted out on the whole image, before any crop, so that the
    inpainting sees each marker's surroundings and one detection serves every box.

    Args:
        pixels: the image as decoded, (height, width) or (height, width, 1). Not modified.
        box: ``(x0, y0, x1, y1)`` as ``apply_crop`` takes it; None keeps the whole image.
        markers: ``find_markers(pixels)``; None leaves the markers in.

    Returns:
        A new array, same dtype as ``pixels``: (y1 - y0, x1 - x0) with a box, else the image's shape.

    Raises:
        InvalidImageError: ``pixels`` is not a non-empty grey image.
        ConfigError: the box does not fit the image or keeps too little of it, or ``markers``
            were found on an image of another shape or type.
    """
    _grey(pixels)
    if markers is not None:
        if markers.masked.shape != pixels.shape or markers.masked.dtype != pixels.dtype:
            raise ConfigError(
                f"The markers were found on another image ({markers.masked.dtype} {markers.masked.shape}, not "
                f"{pixels.dtype} {pixels.shape}); find them on this one with find_markers."
            )
        pixels = markers.masked
    return pixels.copy() if box is None else apply_crop(pixels, box, limits)


# ----------------------------------------------------------------------------- when a crop may be rescored


@dataclass(frozen=True)
class RescoreRule:
    """When a crop may be rescored: the rule of docs/crop_rule.md, its cut-offs fixed on the validation split.

    A crop is squashed into the model's square input like a whole film. The model has seen whole
    films squashed, no wider than the widest original film and no taller than the squarest, and
    both lungs on every one: a crop that cuts into a lung field, or has proportions no film had,
    is scored on a picture the model never learnt and may come out a confident call either way
    (a 25 % strip of a normal film read as pneumonia). Such a crop is refused, not rescored.

    Attributes:
        lung_width_keep: each lung outlined on the whole film (``find_diaphragm``'s
            ``lung_boxes``; one lung outlined: it and its mirror image about the film's centre
            column) must keep at least this share of its box's width inside the crop.
        lung_height_keep: and at least this share of its box's height (lower than the width's:
            a lung's box reaches below the diaphragm dome into the costophrenic recesses, which
            the automatic crop removes on purpose).
        aspect_margin: the crop may change the film's height / width (``relative_aspect``) by at
            most the original films' spread (``films.spread``: how much their height / width differ
            among themselves) times this factor, either way.
        films: the original films' proportions.

    When no lung is outlined on the whole film, the whole film stands for the lungs' box: the
    crop must keep ``lung_width_keep`` of the film's width and ``lung_height_keep`` of its height.
    """

    lung_width_keep: float = 0.9
    lung_height_keep: float = 0.6
    aspect_margin: float = 1.1
    films: FilmAspect = ORIGINAL_FILMS

    def aspect_range(self) -> tuple[float, float]:
        """The smallest and largest ``relative_aspect`` a crop may have."""
        widest = self.films.spread * self.aspect_margin
        return 1.0 / widest, widest

    def __post_init__(self):
        for name in ("lung_width_keep", "lung_height_keep"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1]; got {getattr(self, name)}.")
        if self.aspect_margin < 1.0:
            raise ConfigError(f"aspect_margin must be at least 1 (a factor that widens the range); got {self.aspect_margin}.")


def relative_aspect(box: Sequence, width: int, height: int) -> float:
    """The crop's height / width over the whole image's: how much the crop changes the squash into the
    model's square input (below 1: the crop is squashed more, top to bottom).

    The same for a full-size film and for its square 224 px copy, whose model inputs are the same
    picture; the film's own proportions (which the model knows) are not counted.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    return ((y1 - y0) / height) / ((x1 - x0) / width)


def _kept(box: Sequence, inner: Sequence) -> tuple[float, float]:
    """The shares of ``inner``'s width and of its height that ``box`` keeps."""
    x0, y0, x1, y1 = box
    a0, b0, a1, b1 = inner
    width = max(0, min(x1, a1) - max(x0, a0)) / max(1, a1 - a0)
    height = max(0, min(y1, b1) - max(y0, b0)) / max(1, b1 - b0)
    return width, height


def lung_boxes_to_keep(lungs: DiaphragmResult) -> tuple[Box, ...]:
    """The lung boxes a crop must keep: both outlined, or the one outlined and its mirror image about
    the film's centre column; none when no lung is outlined."""
    boxes = tuple(lungs.lung_boxes)
    if len(boxes) == 1:
        x0, y0, x1, y1 = boxes[0]
        boxes += ((lungs.width - x1, y0, lungs.width - x0, y1),)
    return boxes


def lung_share_kept(box: Sequence, lungs: DiaphragmResult) -> tuple[float, float] | None:
    """The smallest shares of a lung box's width and of its height that ``box`` keeps
    (``lung_boxes_to_keep``); None when no lung is outlined."""
    kept = [_kept(box, lung) for lung in lung_boxes_to_keep(lungs)]
    return (min(k[0] for k in kept), min(k[1] for k in kept)) if kept else None


def check_rescore(box: Sequence | None, width: int, height: int, lungs: DiaphragmResult | None, rule: RescoreRule = RescoreRule()) -> str | None:
    """Why a crop may not be rescored, in plain words; None when it may (``RescoreRule``).

    Args:
        box: the crop, in pixels of the whole image; None (no crop: markers painted out only,
            which keeps the film's shape) is always allowed.
        width, height: size of the whole image.
        lungs: ``find_diaphragm`` of the whole image (its lung outline); None when not looked for,
            and then only the proportions are checked.
        rule: the cut-offs.
    """
    if box is None:
        return None
    x0, y0, x1, y1 = (int(v) for v in box)
    change = relative_aspect(box, width, height)
    low, high = rule.aspect_range()
    if not low <= change <= high:
        shape = "a wide, short strip" if change < low else "a tall, narrow strip"
        return (
            f"The box is {shape} (it keeps {(y1 - y0) / height:.0%} of the film's height and {(x1 - x0) / width:.0%} "
            "of its width). Rescored, it would be squashed into the model's square input far more than any film the "
            "model learnt from, so the score would not be meaningful. Keep both lungs and most of the film's width "
            "and height."
        )
    if lungs is None:
        return None
    kept = lung_share_kept(box, lungs)
    if kept is None:  # no outline: the whole film stands for the lungs' box
        kept = _kept(box, (0, 0, width, height))
        if kept[0] < rule.lung_width_keep or kept[1] < rule.lung_height_keep:
            return (
                f"The lungs could not be outlined on this film, so the box must keep at least {rule.lung_width_keep:.0%} "
                f"of the film's width and {rule.lung_height_keep:.0%} of its height, and this one does not. Enlarge the box."
            )
        return None
    if kept[0] < rule.lung_width_keep or kept[1] < rule.lung_height_keep:
        return (
            "The box cuts into a lung field (as outlined on the whole film). The model learnt from films showing both "
            "lungs whole; on part of a lung its score is not meaningful. Keep both lungs in the box."
        )
    return None


# How far past the grey zone's edge, on the calibrated log-odds scale the grey zone is symmetric on,
# a call counts as "just past" it: the grey-zone rule's floor (docs/grey_zone_rule.md), the smallest
# distance from the threshold that rule treats as meaningful.
JUST_PAST_LOGIT = 0.25


def just_past_grey_zone(probability: float, low: float, high: float, margin: float = JUST_PAST_LOGIT) -> bool:
    """True when ``probability`` lies outside the grey zone ``[low, high)`` but within ``margin``
    of its nearer edge on the log-odds scale (0.635 against an edge at 0.625, say)."""
    p = min(max(float(probability), 1e-12), 1 - 1e-12)
    z = math.log(p) - math.log1p(-p)

    def logit(q: float) -> float:
        q = min(max(float(q), 1e-12), 1 - 1e-12)
        return math.log(q) - math.log1p(-q)

    if p >= high:
        return z - logit(high) < margin
    if p < low:
        return logit(low) - z <= margin
    return False


# ----------------------------------------------------------------------------- burned-in markers


def find_markers(pixels: np.ndarray, settings: MarkerSettings = MarkerSettings()) -> MarkerResult:
    """Finds bright burned-in markers (R/L letters, text, electrodes) and paints them out.

    On a copy whose longer side is at most ``settings.work_size``: a white top-hat keeps things
    smaller than ``max_size``; pixels that are both near-saturated and well above their local
    background form candidate blobs; a blob is kept when it is small, not elongated, and much
    brighter than the ring around it. The kept blobs, grown by a few pixels, are scaled back to
    the image and filled in with ``cv2.inpaint`` (Telea).

    Args:
        pixels: grey image (height, width) or (height, width, 1), uint8, uint16 or float in
            [0, 1]. Not modified.
        settings: what counts as a marker.

    Returns:
        A ``MarkerResult``: ``mask`` is bool (height, width); ``masked`` is a new array shaped
        and typed like ``pixels``. With no markers the mask is all False and ``masked`` an
        unchanged copy.

    Raises:
        InvalidImageError: ``pixels`` is not a non-empty grey image or breaks the intensity rule.
    """
    grey = _grey(pixels)
    height, width = grey.shape
    unit = to_unit_range(grey)  # (height, width) float32 in [0, 1]
    scale = min(1.0, settings.work_size / max(height, width))
    small = _resize(unit, max(1, round(width * scale)), max(1, round(height * scale))) if scale < 1 else unit
    small_h, small_w = small.shape
    window = max(3, int(round(settings.max_size * min(small_h, small_w))) | 1)
    tophat = cv2.morphologyEx(small, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (window, window)))
    candidates = ((small >= settings.min_level) & (tophat >= settings.min_tophat)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(candidates, connectivity=8)

    ring = max(2, int(round(0.015 * min(small_h, small_w))))
    keep = np.zeros(n, dtype=bool)
    for label in range(1, n):
        x, y, blob_w, blob_h, area = (int(v) for v in stats[label])
        if area < settings.min_pixels or max(blob_w, blob_h) > window:
            continue
        if max(blob_w, blob_h) > settings.max_aspect * min(blob_w, blob_h):
            continue
        x0, y0 = max(0, x - ring), max(0, y - ring)
        x1, y1 = min(small_w, x + blob_w + ring), min(small_h, y + blob_h + ring)
        blob = (labels[y0:y1, x0:x1] == label).astype(np.uint8)
        near = cv2.dilate(blob, np.ones((3, 3), np.uint8), iterations=max(1, ring // 3))
        surround = small[y0:y1, x0:x1][near == 0]
        if surround.size and np.median(small[y0:y1, x0:x1][blob > 0]) - np.median(surround) >= settings.min_contrast:
            keep[label] = True

    small_mask = keep[labels].astype(np.uint8)  # (small_h, small_w)
    if settings.grow > 0:
        small_mask = cv2.dilate(small_mask, np.ones((2 * settings.grow + 1,) * 2, np.uint8))
    mask_u8 = small_mask if scale == 1.0 else cv2.resize(small_mask, (width, height), interpolation=cv2.INTER_NEAREST)
    mask = mask_u8 > 0
    if not mask.any():
        return MarkerResult(mask, pixels.copy(), ())

    n_blobs, _, blob_stats, _ = cv2.connectedComponentsWithStats(mask_u8, connectivity=8)
    boxes = tuple(
        (int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, _ in blob_stats[1:n_blobs]
    )
    if grey.dtype in (np.uint8, np.uint16):
        painted = cv2.inpaint(grey, mask_u8, settings.inpaint_radius, cv2.INPAINT_TELEA)
    else:  # float in [0, 1] (to_unit_range checked it); OpenCV's Telea fills float pixels with 0 or 1, so in 16 bits
        as_uint16 = np.rint(grey * 65535.0).astype(np.uint16)
        painted = cv2.inpaint(as_uint16, mask_u8, settings.inpaint_radius, cv2.INPAINT_TELEA) / 65535.0
        painted = np.where(mask, painted, grey).astype(grey.dtype)  # unmasked pixels exactly as they were
    return MarkerResult(mask, painted.reshape(pixels.shape), boxes)
