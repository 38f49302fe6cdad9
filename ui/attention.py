"""Where the model looked, against the patient's body, under a page's Grad-CAM (``docs/attention_rule.md``).

The package measures (``pneumo_model.thorax``); this module caches the body's outline and the
chest's regions (from the diaphragm finder's two lungs) per image in the per-image cache, reads
the model's cut-off file once per server, and shows the result: where the heat lies in anatomical
words (the lung fields, the heart and mediastinum, below the diaphragm, outside the body), a
warning when most of it lies outside the chest or on a burned-in marker, or when less of it lies
over the lung fields than on 19 validation films in 20, a note when more of it lies outside than
usual, and, when the lungs could not both be outlined, that the heat is not placed on the anatomy.
A weak map (by the heat-map scale) is not judged. The outlines can be looked at, under the words.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import streamlit as st

from pneumo_model.errors import PneumoError
from pneumo_model.paths import DEFAULT_MODEL_PATH
from pneumo_model.thorax import (
    AnatomyMap,
    AttentionCheck,
    AttentionRule,
    ThoraxMask,
    anatomy_map,
    attention_inside,
    attention_on_markers,
    attention_path,
    attention_regions,
    thorax_mask,
)

from . import drawing, resources
from .markup import plain

OUTLINE_COLOUR = (255, 255, 255)
# The regions' tints on the outline picture (Okabe-Ito, told apart with colour-vision deficiency):
# the lung fields blue, the heart and mediastinum vermilion, below the diaphragm yellow; the rest untinted.
REGION_COLOURS = {0: (0, 114, 178), 1: (213, 94, 0), 2: (240, 228, 66)}
REGION_CAPTION = (
    "Blue: the lung fields; orange: the heart and mediastinum; yellow: below the diaphragm; untinted: the chest wall, "
    "shoulders and neck."
)


@st.cache_resource(show_spinner=False)
def _rule(path: str, model_sha256: str, heatmap_scale_id: str) -> AttentionRule:
    # Keyed on the model and the scale: a cut-off loaded for one is never handed to another.
    return AttentionRule.load(path, model_sha256, heatmap_scale_id)


def rule() -> AttentionRule:
    """The shipped model's attention cut-offs (``<model>.attention.json``).

    Raises:
        ModelFileError: missing, unreadable, or fitted for another model or heat-map scale.
    """
    return _rule(
        str(attention_path(DEFAULT_MODEL_PATH)),
        resources.predictor().metadata.model_sha256,
        resources.heatmap_scale().id,
    )


def markers(image: resources.Image) -> np.ndarray:
    """The whole image's burned-in markers (``find_markers(pixels).mask``: bool, the image's size), cached per image."""
    return resources.markers(image).mask  # the Crop page's own finding, found once per image


def thorax(image: resources.Image) -> ThoraxMask:
    """The body's outline on the whole image (``thorax_mask``, with its markers painted out first)."""
    pixels = resources.decoded(image).pixels
    found = markers(image)
    return resources.cache().get_or_compute(("thorax", image.digest), lambda: thorax_mask(pixels, markers=found))


def anatomy(image: resources.Image) -> AnatomyMap:
    """The chest's regions on the whole image (``anatomy_map`` of the diaphragm finder's result, the
    Crop page's own finding, found once per image)."""
    found = resources.diaphragm(image)
    return resources.cache().get_or_compute(("anatomy", image.digest), lambda: anatomy_map(found))


def _check(raw: np.ndarray, mask: ThoraxMask, found: np.ndarray | None, regions: AnatomyMap) -> AttentionCheck:
    if not mask.found:
        return rule().check(
            None, None, resources.heatmap_scale().is_weak(raw),
            f"The body's outline was not found, so where the model looked was not checked. {mask.reason}",
        )
    return rule().check(
        attention_inside(raw, mask, found), attention_on_markers(raw, found), resources.heatmap_scale().is_weak(raw),
        regions=attention_regions(raw, mask, regions, found), anatomy_reason="" if regions.found else regions.reason,
    )


def whole_image(image: resources.Image) -> AttentionCheck:
    """The attention check of the whole image's Grad-CAM (Explain)."""
    return _check(resources.gradcam_heatmap(image), thorax(image), markers(image), anatomy(image))


def rescored_regions(
    image: resources.Image, box: Sequence[int] | None, mask_markers: bool = False
) -> tuple[AttentionCheck, ThoraxMask, AnatomyMap]:
    """The attention check of the Grad-CAM of the image as rescored on the Crop page (cropped to
    ``box``, None: whole; markers painted out with ``mask_markers``), and the body's outline and
    the regions it used: the whole image's, inside the box (a tight crop shows no background to
    find one on, and may cut the lungs). Where a marker was stays outside the body."""
    _, raw = resources.cropped_gradcam(image, None if box is None else tuple(box), mask_markers)
    mask, found, regions = thorax(image), markers(image), anatomy(image)
    if box is not None and mask.found:
        x0, y0, x1, y1 = (int(v) for v in box)
        mask, found, regions = mask.crop(box), found[y0:y1, x0:x1], regions.crop(box)
    return _check(raw, mask, found, regions), mask, regions


def rescored(image: resources.Image, box: Sequence[int] | None, mask_markers: bool = False) -> tuple[AttentionCheck, ThoraxMask]:
    """``rescored_regions`` without the regions (the check and the body's outline it used)."""
    check, mask, _ = rescored_regions(image, box, mask_markers)
    return check, mask


def outline_picture(display: np.ndarray, mask: ThoraxMask, regions: AnatomyMap | None = None) -> np.ndarray:
    """The screen copy with the body's outline drawn and the outside dimmed, and, with ``regions``
    found, the lung fields, the heart and mediastinum and what lies below the diaphragm tinted
    (``REGION_COLOURS``) inside the body: new uint8 RGB."""
    rgb = np.repeat(display[:, :, np.newaxis], 3, axis=2)  # (h, w, 3) uint8
    if not mask.found:
        return rgb
    inside = mask.coverage(*display.shape) >= 0.5  # (h, w) bool
    if regions is not None and regions.found:
        labels = np.argmax(regions.fractions(*display.shape), axis=0)  # (h, w) region index
        for index, colour in REGION_COLOURS.items():
            tinted = inside & (labels == index)
            rgb[tinted] = np.rint(0.6 * rgb[tinted] + 0.4 * np.array(colour)).astype(np.uint8)
    rgb[~inside] = np.rint(rgb[~inside] * 0.45).astype(np.uint8)
    contours, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, OUTLINE_COLOUR, max(2, round(max(display.shape) / 220)))
    return rgb


def show_whole(image: resources.Image, display: np.ndarray, where=st) -> None:
    """Explain, under the Grad-CAM: the check of the whole image, or why there is none."""
    try:
        check, mask, regions = whole_image(image), thorax(image), anatomy(image)
    except PneumoError as error:
        where.caption(f"Where the model looked was not checked against the body: {plain(error)}")
        return
    show(check, display, mask, where, regions)


def show_rescored(image: resources.Image, box: Sequence[int] | None, mask_markers: bool, display: np.ndarray, where=st) -> None:
    """Crop & rescore, under the rescored image's Grad-CAM: its check (``display``: that image's screen copy)."""
    try:
        check, mask, regions = rescored_regions(image, box, mask_markers)
    except PneumoError as error:
        where.caption(f"Where the model looked was not checked against the body: {plain(error)}")
        return
    show(check, display, mask, where, regions)


def show(
    check: AttentionCheck,
    display: np.ndarray | None = None,
    mask: ThoraxMask | None = None,
    where=st,
    regions: AnatomyMap | None = None,
) -> None:
    """The check in words under a Grad-CAM: a warning, a note or a caption; with ``display`` and
    ``mask``, the outlines the shares were measured against (the body's, and the regions' when
    ``regions`` were found and used), folded away."""
    if check.warns:
        where.warning(check.message, icon=":material/warning:")
    elif check.level == "unusual":
        where.info(check.message, icon=":material/info:")
    else:
        where.caption(check.message)
    if display is not None and mask is not None and mask.found and check.level != "weak":
        placed = regions if check.regions is not None else None
        title = "The body's outline and the regions this was measured against" if placed else (
            "The body's outline this was measured against"
        )
        with where.expander(title):
            drawing.show(
                outline_picture(display, mask, placed),
                caption="Inside the white line: the patient's body. Heat outside it, or on a burned-in marker, "
                "counts as outside the chest." + (f" {REGION_CAPTION}" if placed else ""),
            )
