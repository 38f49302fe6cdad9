"""Pictures on the page: the crop box drawn on the screen copy, and the one way pages show a picture."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import streamlit as st

from pneumo_model.explain import VERMILLION, HeatmapScale, gradcam_colour_bar, with_legend

WEAK_MAP_CHECKBOX = "Show the weak map anyway"


def show(picture: np.ndarray | Path, caption: str | None = None, width: int | str = "stretch", where=st) -> None:
    """Shows a picture made by ``pneumo_model.display`` or an overlay: uint8 grey (h, w) or RGB (h, w, 3).

    8-bit pictures are in range by type, so ``st.image`` can never refuse one as out of [0, 1]
    (a float picture from a resize, at 1.0000001, once failed whole pages). ``where`` is the
    column or container to draw in; ``caption`` is Markdown, so user text in it goes through
    ``ui.markup.plain`` first. A path is a committed report figure (a PNG file).

    Raises:
        TypeError: anything else; that is a bug in the page, not a user error.
    """
    if isinstance(picture, np.ndarray):
        if picture.dtype != np.uint8 or not (picture.ndim == 2 or (picture.ndim == 3 and picture.shape[2] == 3)):
            raise TypeError(f"Pages show uint8 (h, w) or (h, w, 3) pictures; got {picture.dtype} {picture.shape}.")
        where.image(picture, caption=caption, width=width)
    elif isinstance(picture, Path):
        where.image(str(picture), caption=caption, width=width)
    else:
        raise TypeError(f"Pages show numpy pictures or figure paths; got {type(picture).__name__}.")


def sharp(picture: np.ndarray, room: int) -> tuple[np.ndarray, int]:
    """A small picture enlarged by a whole factor by repeating pixels, so a browser never smooths it.

    A browser draws a picture shown wider than it is by interpolating, which blurs it (the demo
    images, 224 px wide, once drew at 440 px). Repeating each pixel k x k times and showing the
    result at its own width keeps every pixel sharp.

    Args:
        picture: uint8 (h, w) or (h, w, 3). Not modified.
        room: the most screen pixels the picture may take across.

    Returns:
        ``(shown, factor)``: the picture to show at its own width (``shown`` is ``picture`` itself
        when ``factor`` is 1, which is when even two times would not fit; a picture wider than
        ``room`` is then shown at ``room``, smaller, which blurs nothing).
    """
    factor = max(1, room // picture.shape[1])
    if factor == 1:
        return picture, 1
    return np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1), factor


def draw_crop(
    display: np.ndarray, box: tuple[int, int, int, int], original_shape: tuple[int, int], dim: float = 0.35
) -> np.ndarray:
    """The screen copy with what the crop removes dimmed and the box outlined.

    Args:
        display: grey screen copy (h, w) uint8 (``pneumo_model.display.screen_grey``). Not modified.
        box: ``(x0, y0, x1, y1)`` in pixels of the original image, x1 and y1 exclusive.
        original_shape: (height, width) of the original image the box refers to.
        dim: brightness kept outside the box, in [0, 1].

    Returns:
        New (h, w, 3) uint8 RGB image.
    """
    if display.dtype != np.uint8 or display.ndim != 2:
        raise TypeError(f"draw_crop takes the uint8 (h, w) screen copy; got {display.dtype} {display.shape}.")
    height, width = display.shape
    scale_y, scale_x = height / original_shape[0], width / original_shape[1]
    x0, x1 = (min(width, round(x * scale_x)) for x in (box[0], box[2]))
    y0, y1 = (min(height, round(y * scale_y)) for y in (box[1], box[3]))
    rgb = np.repeat(np.rint(display * dim).astype(np.uint8)[:, :, np.newaxis], 3, axis=2)  # (h, w, 3) uint8
    rgb[y0:y1, x0:x1] = display[y0:y1, x0:x1, np.newaxis]
    line = max(2, round(max(height, width) / 150))
    cv2.rectangle(rgb, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), VERMILLION, thickness=line)
    return rgb


# Okabe-Ito sky blue: apart from the vermillion crop box, and seen on the dark corners where markers sit.
SKY_BLUE = (86, 180, 233)


def draw_markers(
    picture: np.ndarray, boxes: tuple[tuple[int, int, int, int], ...], original_shape: tuple[int, int]
) -> np.ndarray:
    """The picture with each burned-in marker's box outlined a few pixels outside it (so the marker stays visible).

    Args:
        picture: the screen copy, uint8 grey (h, w) or RGB (h, w, 3) (``draw_crop``'s output). Not modified.
        boxes: ``(x0, y0, x1, y1)`` of each marker in pixels of the original image (``MarkerResult.boxes``).
        original_shape: (height, width) of the original image the boxes refer to.

    Returns:
        New (h, w, 3) uint8 RGB image.
    """
    if picture.dtype != np.uint8 or picture.ndim not in (2, 3):
        raise TypeError(f"draw_markers takes a uint8 screen picture; got {picture.dtype} {picture.shape}.")
    rgb = np.repeat(picture[:, :, np.newaxis], 3, axis=2) if picture.ndim == 2 else picture.copy()
    height, width = rgb.shape[:2]
    scale_y, scale_x = height / original_shape[0], width / original_shape[1]
    line = max(1, round(max(height, width) / 300))
    pad = 2 * line
    for x0, y0, x1, y1 in boxes:
        corner = (max(0, round(x0 * scale_x) - pad), max(0, round(y0 * scale_y) - pad))
        far = (min(width - 1, round(x1 * scale_x) + pad), min(height - 1, round(y1 * scale_y) + pad))
        cv2.rectangle(rgb, corner, far, SKY_BLUE, thickness=line)
    return rgb


def fixed_scale_map(
    display: np.ndarray,
    raw: np.ndarray,
    scale: HeatmapScale,
    opacity: float,
    *,
    caption: str,
    bar_words: str,
    weak_words: str,
    key: str,
    top_words: str = "pneumonia top 1 %",
) -> bool:
    """A raw Grad-CAM map over the screen copy on its fixed scale, the colour bar drawn into the
    picture under it, so the map is never seen without its scale (Explain's pneumonia map and
    pattern map).

    A weak map (``scale.is_weak``) is not drawn unless the reader asks: ``weak_words`` say why in
    a note, and a checkbox (``key``) draws it anyway on the same scale; until then only the bar is
    shown, with ``bar_words``. Draws where the caller's ``with`` block is.

    Returns:
        Whether the map was drawn.
    """
    peak = scale.peak(raw)
    draw = True
    if scale.is_weak(raw):
        st.info(weak_words, icon=":material/blur_off:")
        draw = st.checkbox(WEAK_MAP_CHECKBOX, key=key, value=False)
    bar = gradcam_colour_bar(scale, opacity, peak=peak, width=max(640, display.shape[1]), top_words=top_words)
    if draw:
        show(with_legend(scale.overlay(display, raw, alpha=opacity), bar, grow=True), caption=caption)
    else:
        show(bar, caption=bar_words)
    return draw
