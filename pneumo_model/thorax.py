"""Where the model looked, against the patient's body: the thorax mask and the share of Grad-CAM heat inside it.

The shortcut this project exists to expose is a model reading something other than the chest:
the corners, burned-in letters and markers, the image border. ``thorax_mask`` outlines the body
on a chest film (its silhouette against the dark air around it, not the lung fields: consolidated
lung is bright, so a dark-pixel lung mask would put a real pneumonia "outside the lungs");
``attention_inside`` measures the share of a Grad-CAM map's heat that falls inside that outline and
off any detected marker; ``AttentionRule`` turns the share into plain words by the rule in
``docs/attention_rule.md`` (a map the heat-map scale calls weak is not judged), with the cut-off
fixed on the model's validation split and stored beside the model (``attention_path``).
``anatomy_map`` builds the chest's regions from the two lungs the diaphragm finder outlines (the
lung fields, the heart and mediastinum, below the diaphragm, the rest of the body), and
``attention_regions`` splits the heat inside the body between them, so that the words name where
the heat lies (amendment 2 of the rule); where the lungs are not both outlined, they say so.

The mask is checked by eye on 36 images by the rule in ``assets/annotations/thorax.md``
(verdicts in ``assets/annotations/thorax_check.csv``).

Coordinates: like the model input, the mask is worked out on the whole image squashed to a
square (``ThoraxSettings.work_size``), so it maps onto the model input, and onto the image at
its own size, by resizing alone. Nothing here changes its inputs.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from scipy.ndimage import binary_fill_holes

from .bundle import ATTENTION, attention_path, read_side_json  # noqa: F401 (attention_path re-exported)
from .crop import find_markers
from .errors import ConfigError, InvalidImageError, ModelFileError
from .preprocessing import to_unit_range

RULE_DOCUMENT = "docs/attention_rule.md"
ATTENTION_SCHEMA_VERSION = 2  # 2 adds the anatomy cut-offs (lungs_unusual, lungs_median); 1 is still read
MOSTLY_OUTSIDE = 0.5  # fixed by the words "mostly outside" (docs/attention_rule.md), not fitted
MOST = 0.5  # "most of the heat lies ...": more than half, fixed by the word (amendment 2), not fitted
OUTSIDE_MESSAGE = (
    "The model's attention is mostly outside the chest: the call may rest on something other than the lungs."
)


# --------------------------------------------------------------------------------------------
# The thorax mask


@dataclass(frozen=True)
class ThoraxSettings:
    """How ``thorax_mask`` finds the body's outline.

    Lengths are fractions of the side of the square working copy (the whole image squashed to
    ``work_size`` x ``work_size``, as the model sees it).

    Attributes:
        work_size: side of the working copy, in pixels.
        blur: Gaussian blur sigma before thresholding.
        border: width of the band along the image's edges where the background is sampled.
        background_percentile: the background level is this percentile of the border band.
        level: the threshold lies this far from the background level towards the body's (the
            median of the image's central quarter); low, so that thin soft tissue is body.
        max_background_ratio: the background level must be at most this share of the darkest
            lung-dark level in the image's centre (its 5th percentile). Above it the darkest
            thing at the edges is not air but anatomy (a tightly collimated film whose lungs
            reach the edge), and the whole image is taken as the body rather than cutting a lung.
        opening: radius of the opening that cuts thin bridges (tubes, leads, a letter touching
            the skin) from the body.
        closing: radius of the closing that smooths the outline.
        min_area: the outline must cover at least this share of the image.
        min_spread: below this standard deviation of the working copy the image is blank.
    """

    work_size: int = 256
    blur: float = 0.008
    border: float = 1 / 32
    background_percentile: float = 5.0
    level: float = 0.25
    max_background_ratio: float = 0.7
    opening: float = 0.05
    closing: float = 0.03
    min_area: float = 0.15
    min_spread: float = 0.02

    def __post_init__(self):
        if self.work_size < 64:
            raise ConfigError(f"work_size must be at least 64 pixels; got {self.work_size}.")
        if not 0.0 < self.level < 1.0:
            raise ConfigError(f"level must lie in (0, 1); got {self.level}.")
        if not 0.0 < self.border < 0.5:
            raise ConfigError(f"border must lie in (0, 0.5); got {self.border}.")


@dataclass(frozen=True, eq=False)
class ThoraxMask:
    """The body's outline on one image.

    Attributes:
        found: True when an outline was found (``work`` holds it).
        reason: a plain sentence: what was found, or why nothing was.
        work: (work_size, work_size) bool, True inside the body, on the whole image squashed to a
            square (read-only); None when not found.
        width, height: size of the image it was found on.
        area_share: share of the image inside the outline (0 when not found).
        whole_image: True when no background was visible and the whole image was taken as the body.
    """

    found: bool
    reason: str
    work: np.ndarray | None
    width: int
    height: int
    area_share: float = 0.0
    whole_image: bool = False

    def coverage(self, height: int, width: int) -> np.ndarray:
        """The mask resized by area onto a (height, width) grid over the whole image.

        Returns:
            New (height, width) float32 array in [0, 1]: the share of each cell inside the body
            (the model input's grid when ``height == width == input_size``).

        Raises:
            ConfigError: the outline was not found.
        """
        self._require_found()
        unit = self.work.astype(np.float32)
        interpolation = cv2.INTER_AREA if height * width < unit.size else cv2.INTER_LINEAR
        return np.clip(cv2.resize(unit, (width, height), interpolation=interpolation), 0.0, 1.0)

    def full(self) -> np.ndarray:
        """The mask at the image's own size: new (height, width) bool array."""
        return self.coverage(self.height, self.width) >= 0.5

    def crop(self, box: Sequence[int]) -> "ThoraxMask":
        """The outline of the image cropped to ``box`` = (x0, y0, x1, y1), pixels of the image.

        The crop's mask is the whole image's mask restricted to the box: a tight crop shows no
        background of its own, so finding the outline on it again would have nothing to go by.
        """
        self._require_found()
        x0, y0, x1, y1 = (int(v) for v in box)
        if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
            raise ConfigError(f"The box {tuple(box)} does not fit inside the {self.width} x {self.height} image.")
        size = self.work.shape[0]

        def cells(start: int, end: int, side: int) -> slice:
            first = min(size - 1, int(start * size / side))
            return slice(first, max(first + 1, int(np.ceil(end * size / side))))

        part = self.work[cells(y0, y1, self.height), cells(x0, x1, self.width)].astype(np.float32)  # squashed per axis
        work = cv2.resize(part, (size, size), interpolation=cv2.INTER_LINEAR) >= 0.5
        work.setflags(write=False)
        share = float(work.mean())
        reason = f"The crop keeps the whole image's outline inside its box ({100 * share:.0f} % of the crop is body)."
        return ThoraxMask(True, reason, work, x1 - x0, y1 - y0, share, self.whole_image)

    def _require_found(self) -> None:
        if not self.found:
            raise ConfigError(f"No body outline to use: {self.reason}")


def _grey(pixels: np.ndarray) -> np.ndarray:
    if not isinstance(pixels, np.ndarray):
        raise InvalidImageError("Expected a numpy array of pixels; use load_image to read a file.")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim != 2 or pixels.size == 0:
        raise InvalidImageError(f"Expected a non-empty grey image of shape (height, width); got shape {pixels.shape}.")
    return pixels


def _square(values: np.ndarray, size: int) -> np.ndarray:
    shrinking = size * size < values.size
    return cv2.resize(values, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def thorax_mask(
    pixels: np.ndarray, settings: ThoraxSettings = ThoraxSettings(), markers: np.ndarray | None = None
) -> ThoraxMask:
    """Outlines the patient's body on a chest film, against the dark air around it.

    On a square working copy: burned-in markers are painted with the darkest grey (so that a
    letter touching the skin does not become body); after a light blur, the background level is
    read from a band along the image's edges and the threshold is put a quarter of the way from
    it to the centre's level; the dark region connected to the edges is the background, the rest
    the body; an opening cuts thin bridges, the largest part is kept, and a closing and hole
    filling give the outline (lungs, dense or aerated, are inside it: they are holes in the body).
    When the darkest thing at the edges is not clearly darker than the lungs, the film shows no
    air around the body and the whole image is the body.

    Args:
        pixels: grey image (height, width) or (height, width, 1), uint8, uint16 or float in
            [0, 1] (``to_unit_range``'s rule: 16-bit is stretched from its own minimum to its
            maximum, so 8-, 10-, 12- and 16-bit films look alike); any size. MONOCHROME1 DICOMs
            come inverted back by the decoder; a picture with a bright background is refused.
            Not modified.
        settings: detector settings.
        markers: bool (height, width) of detected markers (``crop.find_markers(pixels).mask``);
            None finds them here.

    Returns:
        A ``ThoraxMask``. It never raises for a valid image: when no outline is found, ``found``
        is False and ``reason`` says why.

    Raises:
        InvalidImageError: ``pixels`` is not a non-empty grey image or breaks the intensity rule.
    """
    pixels = _grey(pixels)
    height, width = pixels.shape
    size = settings.work_size

    def not_found(reason: str) -> ThoraxMask:
        return ThoraxMask(False, reason, None, width, height)

    work = _square(to_unit_range(pixels), size)  # (size, size) float32 in [0, 1]
    if float(work.std()) < settings.min_spread:
        return not_found("The image is blank or nearly uniform, so no body outline was looked for.")
    if markers is None:
        markers = find_markers(pixels).mask
    elif markers.shape != (height, width):
        raise InvalidImageError(f"The marker mask must match the image, {height} x {width}; got {markers.shape}.")
    marked = _square(markers.astype(np.float32), size) > 0  # (size, size) bool
    if marked.any():
        work = work.copy()
        work[cv2.dilate(marked.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0] = float(np.percentile(work, 1))

    smooth = cv2.GaussianBlur(work, (0, 0), settings.blur * size)  # (size, size)
    band_width = max(2, round(settings.border * size))
    band = np.concatenate([
        smooth[:, :band_width].ravel(), smooth[:, -band_width:].ravel(),
        smooth[:band_width].ravel(), smooth[-band_width:].ravel(),
    ])
    quarter = size // 4
    centre = smooth[quarter:-quarter, quarter:-quarter]
    background, body_level, darkest_inside = (
        float(np.percentile(band, settings.background_percentile)),
        float(np.median(centre)),
        float(np.percentile(centre, 5)),
    )
    if float(np.median(band)) > body_level + 0.15:
        return not_found(
            "The image's edges are brighter than its centre, as in an inverted film (white air), so no "
            "body outline was looked for."
        )
    if background > settings.max_background_ratio * darkest_inside:
        work_mask = np.ones((size, size), bool)
        work_mask.setflags(write=False)
        return ThoraxMask(
            True,
            "No dark background is visible at the image's edges (the body or a tight collimation fills the film), "
            "so the whole image is taken as the body.",
            work_mask, width, height, 1.0, True,
        )

    if body_level - background < settings.min_spread:
        return not_found("The image shows no contrast between its edges and its centre, so no body outline was found.")
    threshold = background + settings.level * (body_level - background)
    dark = (smooth < threshold).astype(np.uint8)
    count, labels = cv2.connectedComponents(dark, connectivity=4)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, edge_labels[edge_labels > 0])  # (size, size): dark and reaching an edge
    body = cv2.morphologyEx((~outside).astype(np.uint8), cv2.MORPH_OPEN, _disc(max(1, round(settings.opening * size))))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(body, connectivity=8)
    if count < 2:
        return not_found("Nothing brighter than the background was found, so there is no body outline.")
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    body = (labels == largest).astype(np.uint8)
    radius = max(1, round(settings.closing * size))
    # Padded by replication, so the closing does not peel the body off the image's edges.
    padded = cv2.copyMakeBorder(body, radius, radius, radius, radius, cv2.BORDER_REPLICATE)
    body = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, _disc(radius))[radius:-radius, radius:-radius]
    work_mask = binary_fill_holes(body > 0)  # (size, size) bool
    share = float(work_mask.mean())
    if share < settings.min_area:
        return not_found(
            f"The outline found covers only {100 * share:.0f} % of the image, too little for a chest film, so it "
            "was not used."
        )
    work_mask.setflags(write=False)
    reason = f"The body's outline covers {100 * share:.0f} % of the image."
    return ThoraxMask(True, reason, work_mask, width, height, share)


# --------------------------------------------------------------------------------------------
# The share of heat inside


def _check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2 or min(heatmap.shape) < 1:
        raise ConfigError(f"The heat map must be 2-D (height, width); got shape {heatmap.shape}.")
    if not np.issubdtype(heatmap.dtype, np.floating) or not np.all(np.isfinite(heatmap)) or heatmap.min() < 0:
        raise ConfigError("The heat map must hold finite, non-negative floats (a Grad-CAM map).")
    return heatmap.astype(np.float64)


def marker_coverage(markers: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """A full-size marker mask resized by area onto a (height, width) grid: the share of each cell on a marker."""
    if markers is None or not np.any(markers):
        return np.zeros((height, width), np.float32)
    unit = np.asarray(markers, dtype=np.float32)
    interpolation = cv2.INTER_AREA if height * width < unit.size else cv2.INTER_LINEAR
    return np.clip(cv2.resize(unit, (width, height), interpolation=interpolation), 0.0, 1.0)


def attention_inside(heatmap: np.ndarray, mask: ThoraxMask, markers: np.ndarray | None = None) -> float | None:
    """The share of a heat map's heat that lies inside the body and off every detected marker.

    Args:
        heatmap: 2-D non-negative float map on the model input (a Grad-CAM map, (size, size));
            its scale does not matter.
        mask: the image's ``thorax_mask``; resized by area onto the map's grid (the map and the
            mask both cover the whole image, squashed).
        markers: bool mask of burned-in markers at the image's size (``find_markers(...).mask``),
            or None. Heat on a marker counts as outside, even over the body.

    Returns:
        sum(heat x body x (1 - marker)) / sum(heat), in [0, 1]; None when the map holds no heat
        (no region raised the score) or the outline was not found.

    Raises:
        ConfigError: the heat map is not a finite, non-negative 2-D float array.
    """
    heat = _check_heatmap(heatmap)
    total = float(heat.sum())
    if not mask.found or total <= 1e-9 * heat.size:
        return None
    height, width = heat.shape
    inside = mask.coverage(height, width) * (1.0 - marker_coverage(markers, height, width))
    return float(np.clip((heat * inside).sum() / total, 0.0, 1.0))


def attention_on_markers(heatmap: np.ndarray, markers: np.ndarray | None) -> float | None:
    """The share of the heat that lies on detected markers (0 without any); None for a map without heat."""
    heat = _check_heatmap(heatmap)
    total = float(heat.sum())
    if total <= 1e-9 * heat.size:
        return None
    return float(np.clip((heat * marker_coverage(markers, *heat.shape)).sum() / total, 0.0, 1.0))


# --------------------------------------------------------------------------------------------
# Where the heat lies on the anatomy

# The regions, in the order the shares are kept; "outside" is outside the body or on a marker.
REGIONS = ("lungs", "heart", "below", "elsewhere", "outside")
REGION_WORDS = {
    "lungs": "over the lung fields",
    "heart": "over the heart and mediastinum",
    "below": "below the diaphragm",
    "elsewhere": "beside or above the outlined lungs (chest wall, shoulders, neck)",
    "outside": "outside the body",
}
_BODY_REGIONS = REGIONS[:4]  # the labels of ``AnatomyMap.labels``, 0..3


@dataclass(frozen=True, eq=False)
class AnatomyMap:
    """The chest's regions on one image, from the two lungs the diaphragm finder outlines.

    Every cell of the square working copy (the whole image squashed, like the model input) is
    labelled: 0 the lung fields (each lung's outline, its holes and notches filled), 1 the heart
    and mediastinum (not lung, between the two lungs' centres, from the lung apices down to the
    diaphragm), 2 below the diaphragm (under the line through both lungs' lower edges and dome
    tops), 3 the rest (the chest wall beside the lungs, the shoulders and neck above them). The
    body's outline (``ThoraxMask``) decides, separately, what is outside the body.

    Attributes:
        found: True when both lungs were outlined and ``labels`` holds the regions.
        reason: a plain sentence: what was outlined, or why the heat is not placed on the anatomy.
        labels: (size, size) uint8 region index (``REGIONS[:4]``), read-only; None when not found.
        width, height: size of the image it was found on.
        diaphragm_rows: (size,) float, the diaphragm line's row in each column of the working
            copy (below it is "below the diaphragm"); None when not found.
    """

    found: bool
    reason: str
    labels: np.ndarray | None
    width: int
    height: int
    diaphragm_rows: np.ndarray | None = None

    def fractions(self, height: int, width: int) -> np.ndarray:
        """Each region's share of each cell of a (height, width) grid over the whole image.

        Returns:
            New (4, height, width) float32 array, summing to 1 over the first axis: lungs, heart
            and mediastinum, below the diaphragm, the rest (``REGIONS[:4]``).

        Raises:
            ConfigError: the regions were not found.
        """
        if not self.found:
            raise ConfigError(f"No lung outline to place the heat on: {self.reason}")
        size = self.labels.shape[0]
        interpolation = cv2.INTER_AREA if height * width < size * size else cv2.INTER_NEAREST
        planes = np.stack([
            cv2.resize((self.labels == index).astype(np.float32), (width, height), interpolation=interpolation)
            for index in range(len(_BODY_REGIONS))
        ])  # (4, height, width)
        return planes / np.maximum(planes.sum(axis=0, keepdims=True), 1e-9)

    def crop(self, box: Sequence[int]) -> "AnatomyMap":
        """The regions of the image cropped to ``box`` = (x0, y0, x1, y1), pixels of the image: the
        whole image's regions inside the box (a crop may cut the lungs, so they are not looked for again)."""
        if not self.found:
            return AnatomyMap(False, self.reason, None, *_box_size(box))
        x0, y0, x1, y1 = (int(v) for v in box)
        if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
            raise ConfigError(f"The box {tuple(box)} does not fit inside the {self.width} x {self.height} image.")
        size = self.labels.shape[0]
        rows = _cells(y0, y1, self.height, size)
        columns = _cells(x0, x1, self.width, size)
        labels = cv2.resize(self.labels[rows, columns], (size, size), interpolation=cv2.INTER_NEAREST)
        labels.setflags(write=False)
        return AnatomyMap(True, "The whole image's regions, inside the crop's box.", labels, x1 - x0, y1 - y0)


def _box_size(box: Sequence[int]) -> tuple[int, int]:
    x0, y0, x1, y1 = (int(v) for v in box)
    return max(1, x1 - x0), max(1, y1 - y0)


def _cells(start: int, end: int, side: int, size: int) -> slice:
    first = min(size - 1, int(start * size / side))
    return slice(first, max(first + 1, int(np.ceil(end * size / side))))


def _filled_lung(mask: np.ndarray) -> np.ndarray:
    """One lung's outline with its holes and notches filled: each row and each column closed
    between its first and last lung cell. A consolidation that bites into the dark lung from
    inside (it is bright, so the dark-pixel outline leaves it out) is lung field again."""
    rows_filled = np.zeros_like(mask)
    for row in np.flatnonzero(mask.any(axis=1)):
        columns = np.flatnonzero(mask[row])
        rows_filled[row, columns[0] : columns[-1] + 1] = True
    columns_filled = np.zeros_like(mask)
    for column in np.flatnonzero(mask.any(axis=0)):
        rows = np.flatnonzero(mask[:, column])
        columns_filled[rows[0] : rows[-1] + 1, column] = True
    return binary_fill_holes(rows_filled | columns_filled)


def _diaphragm_line(lungs: Sequence[np.ndarray], domes: Sequence[float]) -> np.ndarray:
    """The diaphragm's row in each column: under each lung, its lower edge where that lies at or
    below the lung's dome top (the lateral recess), else the dome top (where the lung ends higher,
    over the heart or the hilum); between the lungs, a straight line from one lung's inner edge to
    the other's; beside them, level with the nearest lung edge."""
    size = lungs[0].shape[0]
    line = np.full(size, np.nan)
    for mask, dome in zip(lungs, domes):
        present = mask.any(axis=0)
        lowest = size - 1 - np.argmax(mask[::-1], axis=0)  # (size,) lowest lung row per column
        line[present] = np.maximum(lowest[present], dome)
    known = np.flatnonzero(np.isfinite(line))
    return np.interp(np.arange(size), known, line[known])  # straight between, level beyond


@dataclass(frozen=True)
class AnatomySettings:
    """How ``anatomy_map`` turns the outlined lungs into regions (fractions of the working copy's side).

    Attributes:
        grow: each lung's outline is grown by this much: the dark-pixel outline stops short of the
            lung's edge, and a Grad-CAM cell on the edge is lung.
        max_apex: each lung's outline must reach above this row (its apex); one that starts lower
            was outlined in part only (its upper zone hazy or consolidated), and the heat there
            would be put on the shoulders.
        min_height: each lung's outline must span at least this much of the height, apex to base;
            a shorter one stops above the lung's base (hazy or consolidated), the diaphragm line
            under it is too high, and lung would be called "below the diaphragm".
    """

    grow: float = 0.02
    max_apex: float = 1 / 3
    min_height: float = 0.35

    def __post_init__(self):
        if not 0.0 <= self.grow < 0.2 or not 0.0 < self.max_apex <= 1.0 or not 0.0 <= self.min_height < 1.0:
            raise ConfigError(
                f"grow must lie in [0, 0.2), max_apex in (0, 1] and min_height in [0, 1); got {self.grow}, "
                f"{self.max_apex}, {self.min_height}."
            )


def anatomy_map(diaphragm, settings: AnatomySettings = AnatomySettings()) -> AnatomyMap:
    """The chest's regions from the diaphragm finder's result (``crop.find_diaphragm``).

    The heat is placed on the anatomy only when the finder outlined both lungs and found the
    diaphragm: with one lung, none, or a dome it refused (a hazy or consolidated base), the
    lungs' shape is not known and ``found`` is False with a reason that says so.

    Args:
        diaphragm: a ``DiaphragmResult`` (its ``lung_masks`` and ``dome_rows``).
    """
    width, height = diaphragm.width, diaphragm.height

    def not_found(reason: str) -> AnatomyMap:
        return AnatomyMap(False, reason, None, width, height)

    masks = tuple(diaphragm.lung_masks)
    if len(masks) != 2 or len(diaphragm.dome_rows) != 2:
        found = "one lung only" if len(masks) == 1 else "no lung field" if not masks else f"{len(masks)} lungs"
        return not_found(
            f"The lungs could not both be outlined on this film ({found} was found; the other may be hazy, "
            "consolidated or hidden), so the heat is not placed on the anatomy."
        )
    if not diaphragm.found:
        return not_found(
            f"The lungs could not both be outlined down to the diaphragm on this film ({_first_sentence(diaphragm.reason)}), "
            "so the heat is not placed on the anatomy."
        )
    lungs = [_filled_lung(np.asarray(mask, bool)) for mask in masks]
    size = lungs[0].shape[0]
    spans = [np.flatnonzero(mask.any(axis=1))[[0, -1]] for mask in lungs]
    apexes = [int(top) for top, _ in spans]
    shortest = min(int(bottom - top + 1) for top, bottom in spans) / size
    if shortest < settings.min_height:
        return not_found(
            f"The lungs could not both be outlined down to their base on this film (one outline spans only "
            f"{100 * shortest:.0f} % of the film's height; its base may be hazy or consolidated), so the heat is not "
            "placed on the anatomy."
        )
    if max(apexes) >= settings.max_apex * size:
        return not_found(
            f"The lungs could not both be outlined to their apex on this film (one outline starts "
            f"{100 * max(apexes) / size:.0f} % of the way down; its upper zone may be hazy or consolidated), "
            "so the heat is not placed on the anatomy."
        )
    line = _diaphragm_line(lungs, diaphragm.dome_rows)  # (size,)
    rows, columns = np.mgrid[0:size, 0:size]
    radius = max(1, round(settings.grow * size))
    lung = cv2.dilate((lungs[0] | lungs[1]).astype(np.uint8), _disc(radius)) > 0
    centres = sorted(float(np.flatnonzero(mask.any(axis=0)).mean()) for mask in lungs)
    apex = min(apexes)
    below = rows > line[np.newaxis, :]
    between = (columns > centres[0]) & (columns < centres[1]) & (rows >= apex)
    labels = np.full((size, size), 3, np.uint8)  # the rest: chest wall, shoulders, neck
    labels[between] = 1
    labels[below] = 2
    labels[lung & ~below] = 0
    labels.setflags(write=False)
    line.setflags(write=False)
    return AnatomyMap(True, "Outlined both lungs and the diaphragm.", labels, width, height, line)


def _first_sentence(text: str) -> str:
    first = text.split(". ")[0].rstrip(".")
    return first[:1].lower() + first[1:]


def attention_regions(
    heatmap: np.ndarray, mask: ThoraxMask, anatomy: AnatomyMap, markers: np.ndarray | None = None
) -> dict[str, float] | None:
    """The share of a heat map's heat in each region (``REGIONS``): the lung fields, the heart and
    mediastinum, below the diaphragm, the rest of the body, and outside the body (or on a marker).

    The shares inside the body add up to ``attention_inside`` exactly: the body's outline and the
    markers decide what is inside, the regions split it.

    Returns:
        A dict region -> share in [0, 1], summing to 1; None when the map holds no heat, or the
        body's outline or the lungs were not found.

    Raises:
        ConfigError: the heat map is not a finite, non-negative 2-D float array.
    """
    heat = _check_heatmap(heatmap)
    total = float(heat.sum())
    if not mask.found or not anatomy.found or total <= 1e-9 * heat.size:
        return None
    height, width = heat.shape
    inside = heat * mask.coverage(height, width) * (1.0 - marker_coverage(markers, height, width))  # (h, w)
    planes = anatomy.fractions(height, width)  # (4, h, w)
    shares = {name: float(np.clip((inside * plane).sum() / total, 0.0, 1.0)) for name, plane in zip(_BODY_REGIONS, planes)}
    shares["outside"] = float(max(0.0, 1.0 - sum(shares.values())))
    return shares


# --------------------------------------------------------------------------------------------
# The rule: the cut-offs and their words


def _percents(value: float, other: float) -> tuple[str, str]:
    """Both shares as percentages, with as many decimals (up to 2) as it takes to tell them apart:
    "93.8 %" and "94.3 %", never "94 %" below "94 %"."""
    for decimals in (0, 1, 2):
        first, second = f"{100 * value:.{decimals}f}", f"{100 * other:.{decimals}f}"
        if first != second or decimals == 2:
            return f"{first} %", f"{second} %"


def _share(value: float) -> str:
    return f"{100 * value:.0f} %"


def regions_sentence(shares: dict[str, float], lungs_said: bool = False) -> tuple[str, tuple[str, ...]]:
    """Where the heat lies, in one sentence, and the regions it names as holding most of it.

    "Most" is more than half, by the word (``MOST``): the fewest largest regions whose shares
    together pass half are named first, with their shares; every other region holding at least
    half a per cent follows with its share, the lung fields always ("Most of the heat lies below
    the diaphragm (61 %) and over the heart and mediastinum (25 %); 14 % over the lung fields.").
    With ``lungs_said`` (the words before it gave the lung fields' share) the lung fields are not
    repeated after the named regions.
    """
    ordered = sorted(REGIONS, key=lambda name: -shares[name])
    named: list[str] = []
    for name in ordered:
        named.append(name)
        if sum(shares[n] for n in named) > MOST:
            break
    words = [f"{REGION_WORDS[name]} ({_share(shares[name])})" for name in named]
    head = f"Most of the heat lies {' and '.join(words)}"
    rest = [
        f"{_share(shares[name])} {REGION_WORDS[name]}"
        for name in ordered
        if name not in named and not (lungs_said and name == "lungs") and (shares[name] >= 0.005 or name == "lungs")
    ]
    return head + (f"; {', '.join(rest)}." if rest else "."), tuple(named)


@dataclass(frozen=True)
class AttentionCheck:
    """Where one map's heat lies, in words.

    Attributes:
        share_inside: the share of the heat inside the body (``attention_inside``), or None.
        share_on_markers: the share on detected markers, or None.
        level: "outside" (mostly outside the body: the warning), "off_lungs" (less heat over the
            lung fields than on 19 validation films in 20: a warning), "unusual" (more outside the
            body than on 19 validation films in 20: a note), "inside" (the words, as a caption),
            "weak" (a weak map, not judged), or "unknown" (no share: no outline, or a map without heat).
        message: the plain sentence the pages show.
        regions: the share of the heat in each region (``attention_regions``), or None when the
            heat was not placed on the anatomy.
        anatomy_reason: why the heat was not placed on the anatomy, when it was not ("" otherwise).
    """

    share_inside: float | None
    share_on_markers: float | None
    level: str
    message: str
    regions: dict | None = None
    anatomy_reason: str = ""

    @property
    def warns(self) -> bool:
        return self.level in ("outside", "off_lungs")


@dataclass(frozen=True)
class AttentionRule:
    """The cut-offs of the attention check for one model (``docs/attention_rule.md``).

    Attributes:
        model_sha256: the model they were fitted for; the file is refused for any other.
        mostly_outside: the warning fires below this share inside (0.5, fixed by its words).
        unusual: the note fires below this share (at or above ``mostly_outside``): the 5th
            percentile of the share inside over the model's validation images.
        validation_median: the median share inside on validation, to put a share in context.
        heatmap_scale_id: the id of the heat-map scale (``HeatmapScale.id``) whose weak cut decided
            which maps were judged; the file is refused with another scale.
        rule: the rule's document.
        facts: how it was fitted (images used and left out, quartiles, how often each level fired).
        created_utc: when it was fitted.
        lungs_unusual: the "not on the lungs" warning fires below this share of the heat over the
            lung fields: its 5th percentile over the validation maps placed on the anatomy
            (amendment 2 of the rule); None in a file made before it (no anatomy words then).
        lungs_median: the median share over the lung fields on those validation maps.
    """

    model_sha256: str
    mostly_outside: float
    unusual: float
    validation_median: float
    heatmap_scale_id: str
    rule: str = RULE_DOCUMENT
    facts: dict = field(default_factory=dict)
    created_utc: str = ""
    lungs_unusual: float | None = None
    lungs_median: float | None = None

    @property
    def places_on_anatomy(self) -> bool:
        """The file holds the anatomy cut-offs (amendment 2), so the check can name the regions."""
        return self.lungs_unusual is not None and self.lungs_median is not None

    def check(
        self,
        share_inside: float | None,
        share_on_markers: float | None = None,
        weak: bool = False,
        reason: str = "",
        regions: dict[str, float] | None = None,
        anatomy_reason: str = "",
    ) -> AttentionCheck:
        """The words for one map.

        Args:
            share_inside: ``attention_inside`` of the map, or None.
            share_on_markers: ``attention_on_markers`` of the map, or None.
            weak: the map is weak by the model's heat-map scale (``HeatmapScale.is_weak``): it
                is not judged (amendment 1 of the rule).
            reason: why there is no share, when there is none (the outline's reason).
            regions: ``attention_regions`` of the map, or None when the lungs were not outlined
                (then ``anatomy_reason`` says why, and the words say the heat is not placed).
            anatomy_reason: why the heat was not placed on the anatomy (``AnatomyMap.reason``).
        """
        markers = (
            f" {100 * share_on_markers:.0f} % lies on burned-in markers (letters, text, electrodes)."
            if share_on_markers and share_on_markers >= 0.005 else ""
        )
        if weak:
            return AttentionCheck(
                share_inside, share_on_markers, "weak",
                "No region raised the pneumonia score much, so where the model looked was not checked.",
            )
        if share_inside is None:
            return AttentionCheck(None, share_on_markers, "unknown", reason or "Where the model looked was not measured.")
        if not self.places_on_anatomy:
            regions, anatomy_reason = None, ""
        elif regions is None and not anatomy_reason:
            anatomy_reason = "The heat was not placed on the anatomy."

        def made(level: str, message: str) -> AttentionCheck:
            return AttentionCheck(share_inside, share_on_markers, level, message, regions, anatomy_reason)

        shown, cut_off = _percents(share_inside, self.unusual)
        inside = f"{shown} of the Grad-CAM heat lies inside the body's outline."
        placed = ""
        named: tuple[str, ...] = ()
        if regions is not None:
            placed, named = regions_sentence(regions)
            placed = f" {placed}"
        elif anatomy_reason:
            placed = f" {anatomy_reason}"
        if share_inside < self.mostly_outside:
            return made("outside", f"{OUTSIDE_MESSAGE} {inside}{placed}{markers}")
        if regions is not None and regions["lungs"] < self.lungs_unusual:
            lungs, cut = _percents(regions["lungs"], self.lungs_unusual)
            placed = f" {regions_sentence(regions, lungs_said=True)[0]}"
            elsewhere = [REGION_WORDS[name] for name in named if name != "lungs"] or ["elsewhere"]
            return made(
                "off_lungs",
                f"The model's heat is not on the lungs: only {lungs} lies over the lung fields (19 validation films "
                f"in 20 had at least {cut}).{placed}{markers} What raised the pneumonia score lies mostly outside the lung "
                f"fields, {' and '.join(elsewhere)}: read the lung fields yourself.",
            )
        if share_inside < self.unusual:
            return made(
                "unusual",
                f"More of the model's attention lies outside the chest than on 19 validation films in 20: {inside} "
                f"On validation, 19 films in 20 had at least {cut_off}.{placed}{markers} Look at where the rest lies on "
                "the overlay: does the call rest on the lungs?",
            )
        if regions is not None:
            median = _percents(self.lungs_median, regions["lungs"])[0]
            return made(
                "inside", f"{placed.strip()} The median over the lung fields on validation films: {median}.{markers}"
            )
        median = _percents(self.validation_median, share_inside)[0]
        if anatomy_reason:
            return made("inside", f"{anatomy_reason} {inside} The median on validation films: {median}.{markers}")
        return made(
            "inside",
            f"{inside} The median on validation films: {median}.{markers} Inside the outline is on the patient, not on "
            "the corners, letters or border; it may still be the heart or the diaphragm rather than the lungs.",
        )

    def to_dict(self) -> dict:
        return {
            "schema_version": ATTENTION_SCHEMA_VERSION,
            "model_sha256": self.model_sha256,
            "mostly_outside": self.mostly_outside,
            "unusual": self.unusual,
            "validation_median": self.validation_median,
            "heatmap_scale_id": self.heatmap_scale_id,
            "lungs_unusual": self.lungs_unusual,
            "lungs_median": self.lungs_median,
            "rule": self.rule,
            "facts": self.facts,
            "created_utc": self.created_utc or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, model_sha256: str, heatmap_scale_id: str | None = None) -> "AttentionRule":
        """Reads the cut-off file of the model whose SHA-256 is ``model_sha256``.

        Args:
            heatmap_scale_id: the id of the heat-map scale in use; None accepts any.

        Raises:
            ModelFileError: the file is missing, unreadable, of another schema, or was fitted for
                another model or another heat-map scale (its cut-off says nothing about these maps).
        """
        path = Path(path)
        command = ATTENTION.command
        data = read_side_json(path, ATTENTION, schemas={1, ATTENTION_SCHEMA_VERSION}, model_sha256=model_sha256)
        try:
            rule = cls(
                model_sha256=str(data["model_sha256"]),
                mostly_outside=float(data["mostly_outside"]),
                unusual=float(data["unusual"]),
                validation_median=float(data["validation_median"]),
                heatmap_scale_id=str(data["heatmap_scale_id"]),
                rule=str(data.get("rule", RULE_DOCUMENT)),
                facts=dict(data.get("facts", {})),
                created_utc=str(data.get("created_utc", "")),
                lungs_unusual=_optional_share(data.get("lungs_unusual")),
                lungs_median=_optional_share(data.get("lungs_median")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ModelFileError(
                f"The attention cut-off file {path.name} cannot be read ({error}); make it again with `{command}`."
            ) from None
        if heatmap_scale_id is not None and rule.heatmap_scale_id != heatmap_scale_id:
            raise ModelFileError(
                f"The attention cut-off file {path.name} was fitted with heat-map scale {rule.heatmap_scale_id}, not with "
                f"the scale in use ({heatmap_scale_id}), which judges other maps weak. Make it again with `{command}`."
            )
        if not all(0.0 <= value <= 1.0 for value in (rule.mostly_outside, rule.unusual, rule.lungs_unusual or 0.0, rule.lungs_median or 0.0)):
            raise ModelFileError(f"The attention cut-off file {path.name} holds cut-offs outside [0, 1]; make it again.")
        return rule


def _optional_share(value) -> float | None:
    return None if value is None else float(value)
