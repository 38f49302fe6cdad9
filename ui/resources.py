"""Process-wide resources: the model, loaded once and shared read-only, and per-image results.

The model is a ``st.cache_resource``: one ``Predictor`` per server process, used by every
session and never changed. Per-image results live in one ``ByteBudgetCache`` keyed on the
image's SHA-256 (computed once, when the image is chosen) and the settings, so reruns, widget
changes and page switches reuse them; the cache holds at most ``CACHE_BYTES`` whatever the images
are. An upload is decoded once; every later step (the call, the screen copy, Grad-CAM, LIME, the
crop) starts from that decoded image. At most ``MAX_DECODES`` decodes run at once in the process;
a further one waits with a plain "busy, retrying" note instead of piling up memory.

``RUNS`` counts how often each slow step really ran in this process; the tests read it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import streamlit as st

from pneumo_model.crop import DiaphragmResult, MarkerResult, edit_pixels, find_diaphragm, find_markers
from pneumo_model.display import screen_grey
from pneumo_model.errors import PneumoError, SiteProfileError
from pneumo_model.explain import (
    SUBTYPE_HEATMAP_SCALE,
    GradCam,
    HeatmapScale,
    LimeConfig,
    LimeExplanation,
    explain_lime,
    heatmap_scale_path,
    subtype_heatmap_scale_path,
)
from pneumo_model.paths import DEFAULT_MODEL_PATH
from pneumo_model.pipeline import DecodedImage
from pneumo_model.prediction import Prediction, Predictor
from pneumo_model.preprocessing import preprocess
from pneumo_model.site import SiteProfile

from .cache import ByteBudgetCache

RUNS: Counter[str] = Counter()

SITE_ENV = "PNEUMO_SITE"

LIME_WAIT_MESSAGE = "Another explanation is running; yours starts when it finishes."
BUSY_MESSAGE = "The server is busy reading other images; yours is next (retrying)..."
# Two cores: more decodes at once only add memory, not speed.
MAX_DECODES = 2
# How long a decode waits for its turn before the page says to try again.
DECODE_WAIT_S = 120.0
# Everything the per-image cache may hold: about ten full-size 16-bit films (at most 32 MB each
# after ``ImageLimits.max_working_pixels``) plus the small results of hundreds of images.
CACHE_BYTES = 384 * 2**20


class ServerBusyError(PneumoError):
    """Too many images are being read at once; the user should try again shortly."""


class Image(Protocol):
    """What the functions here take: the chosen image's bytes and their SHA-256 (``state.ChosenImage``)."""

    data: bytes
    digest: str


@st.cache_resource(show_spinner=False)  # the frame shows its own note (ui.frame.LOADING_MESSAGE)
def _shipped_predictor() -> Predictor:
    RUNS["model_load"] += 1
    return Predictor.from_file()


@st.cache_resource(show_spinner=False)
def validation_reference():
    """The shipped model's validation reference (``alignment.Reference``), that label-free alignment aligns to.

    Raises:
        SiteProfileError: the side file is missing, unreadable or another model's.
    """
    from pneumo_model.alignment import Reference, reference_path
    from pneumo_model.paths import DEFAULT_MODEL_PATH

    return Reference.load(reference_path(DEFAULT_MODEL_PATH), _shipped_predictor().metadata.model_sha256)


@st.cache_resource(show_spinner=False)
def _site_predictor(profile_path: str) -> Predictor:
    # Cached per path: an administrator changes the profile by changing PNEUMO_SITE and restarting.
    return _shipped_predictor().with_operating_point(_site_profile(profile_path).operating_point())


@st.cache_resource(show_spinner=False)
def _site_profile(profile_path: str) -> SiteProfile:
    return SiteProfile.load(profile_path)


def site_profile() -> SiteProfile | None:
    """The active site profile (``$PNEUMO_SITE``), or None for the shipped operating point.

    Raises:
        SiteProfileError: it cannot be used (see ``predictor``).
    """
    path = site_profile_path()
    return None if path is None else _site_profile(path)


def site_profile_path() -> str | None:
    """``$PNEUMO_SITE``: the site profile every call uses, set by an administrator; None when unset."""
    return os.environ.get(SITE_ENV) or None


def predictor() -> Predictor:
    """The shipped model with its metadata and, when ``$PNEUMO_SITE`` names a site profile, that
    profile's operating point.

    Raises:
        ModelFileError: the model cannot be used.
        SiteProfileError: the profile set by ``$PNEUMO_SITE`` cannot be used (missing, altered,
            or fitted for another model). The pages then serve no call at all: silently falling
            back to the shipped operating point would show calls the site did not choose.
    """
    profile = site_profile_path()
    if profile is None:
        return _shipped_predictor()
    try:
        return _site_predictor(profile)
    except SiteProfileError as error:
        raise SiteProfileError(
            f"{error} The app serves no calls until an administrator fixes the {SITE_ENV} setting "
            "(or removes it to use the shipped operating point) and restarts the server."
        ) from None


@st.cache_resource(show_spinner=False)
def gradcam() -> GradCam:
    model = predictor()
    return GradCam(model.model, model.metadata.gradcam_layer)


@st.cache_resource(show_spinner=False)
def _heatmap_scale(path: str, model_sha256: str) -> HeatmapScale:
    return HeatmapScale.load(path, model_sha256)


def heatmap_scale() -> HeatmapScale:
    """The shipped model's fixed heat-map scale (``<model>.cam.json``, ``docs/heatmap_scale.md``).

    Raises:
        ModelFileError: it is missing, unreadable or fitted for another model: the pages then
            draw no heat map at all rather than one stretched to its own maximum.
    """
    # Keyed on the model's SHA-256: a scale loaded for one model is never handed to another.
    return _heatmap_scale(str(heatmap_scale_path(DEFAULT_MODEL_PATH)), predictor().metadata.model_sha256)


@st.cache_resource(show_spinner=False)
def lime_lock() -> threading.Lock:
    # LIME saturates both cores, so the whole process runs one at a time.
    return threading.Lock()


@st.cache_resource(show_spinner=False)
def decode_slots() -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(MAX_DECODES)


@st.cache_resource(show_spinner=False)
def cache() -> ByteBudgetCache:
    """The per-image results of every session (``st.cache_resource.clear()`` empties it too)."""
    return ByteBudgetCache(CACHE_BYTES)


@contextlib.contextmanager
def decode_slot(wait_s: float | None = None) -> Iterator[None]:
    """Holds one of the ``MAX_DECODES`` decode slots; shows a busy note while waiting for one.

    Args:
        wait_s: the longest wait for a slot; None: ``DECODE_WAIT_S``.

    Raises:
        ServerBusyError: no slot came free within ``wait_s`` seconds.
    """
    slots = decode_slots()
    acquired, note = slots.acquire(blocking=False), None
    if not acquired:
        note = st.info(BUSY_MESSAGE, icon=":material/hourglass_top:")
        acquired = slots.acquire(timeout=DECODE_WAIT_S if wait_s is None else wait_s)
    # From here on the slot is released whatever happens: drawing on the page is where Streamlit
    # raises a user's rerun or stop, and a slot lost that way would be lost to every session.
    try:
        if note is not None:
            note.empty()
        if not acquired:
            raise ServerBusyError(
                "The server is too busy reading other images to read this one now. Try again in a minute."
            )
        yield
    finally:
        if acquired:
            slots.release()
            _return_freed_memory()


def _return_freed_memory() -> None:
    """Hands the decoder's freed working memory back to the system (glibc keeps it otherwise).

    A decode's full-size buffers are freed when it ends, but glibc's per-thread heaps keep the
    pages, so a few large uploads would leave the server holding hundreds of MB it no longer
    uses. ``malloc_trim`` gives them back; elsewhere than glibc it is not there and nothing happens.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def decoded(image: Image) -> DecodedImage:
    """The image decoded once (``DecodedImage.decode``): pixels (read-only), facts, model input.

    Raises:
        InvalidImageError: the bytes are not a usable image (the message says why).
        ServerBusyError: the server stayed busy too long.
    """

    def decode() -> DecodedImage:
        with decode_slot():
            RUNS["decode"] += 1
            decoded_image = DecodedImage.decode(image.data, whole=True)  # the screen needs the whole image too
            decoded_image.model_input(predictor().input_size)  # made now, so the cache counts its bytes
            return decoded_image

    return cache().get_or_compute(("decoded", image.digest), decode)


def model_input(image: Image) -> np.ndarray:
    """The model's input for the image, (size, size, 1) float32 in [0, 1] (``preprocess``)."""
    return decoded(image).model_input(predictor().input_size)


def display_pixels(image: Image) -> np.ndarray:
    """The grey picture for the screen (``screen_grey``): uint8, at most 1024 px a side."""
    pixels = decoded(image).pixels
    return cache().get_or_compute(("screen", image.digest), lambda: screen_grey(pixels))


def prediction(image: Image) -> Prediction:
    """The model's call on one image, with the out-of-distribution gate (``Predictor.call``).

    Raises:
        InvalidImageError: the bytes are not a usable image.
    """
    decoded_image = decoded(image)

    model = predictor()

    def call() -> Prediction:
        RUNS["prediction"] += 1
        return model.call(decoded_image)

    # Keyed on the operating point too: a call is its label and grey-zone flag, which depend on it.
    return cache().get_or_compute(("prediction", image.digest, model.operating_point.id), call)


def gradcam_heatmap(image: Image) -> np.ndarray:
    """The raw Grad-CAM heat map on the model input (``GradCam.raw``), (size, size) float32 >= 0.

    Raw, not scaled: ``heatmap_scale().overlay`` puts it on the fixed scale when it is drawn, so a
    new scale never meets a picture drawn on the old one.
    """
    inputs = model_input(image)

    def compute() -> np.ndarray:
        RUNS["gradcam"] += 1
        return gradcam().raw(inputs)

    return cache().get_or_compute(("gradcam_raw", image.digest), compute)


@st.cache_resource(show_spinner=False)
def _subtype_gradcam(sign: int, subtype_sha256: str) -> GradCam:
    # Keyed on the subtype model's SHA-256 as well as the sign: never another network's maps.
    subtype = predictor().subtype
    return GradCam(subtype.model, subtype.metadata.gradcam_layer, sign=sign)


@st.cache_resource(show_spinner=False)
def _subtype_heatmap_scale(path: str, subtype_sha256: str) -> HeatmapScale:
    return HeatmapScale.load(path, subtype_sha256, SUBTYPE_HEATMAP_SCALE)


def subtype_heatmap_scale() -> HeatmapScale:
    """The pattern map's own fixed scale (``<model>.subtype.cam.json``, ``docs/heatmap_scale.md``),
    fitted for the subtype network the predictor carries (call only when it carries one).

    Raises:
        ModelFileError: it is missing, unreadable or fitted for another subtype model: the page
            then draws no pattern map rather than one on another scale.
    """
    sha = predictor().subtype.metadata.model_sha256
    return _subtype_heatmap_scale(str(subtype_heatmap_scale_path(DEFAULT_MODEL_PATH)), sha)


def subtype_heatmap(image: Image, sign: int) -> np.ndarray:
    """The raw Grad-CAM map of the subtype network's viral logit (``sign=1``) or of its negative
    (``sign=-1``, the bacterial pattern's map) on the model input, (size, size) float32 >= 0;
    drawn through ``subtype_heatmap_scale``. Call only when the predictor carries a subtype network."""
    inputs = model_input(image)
    sha = predictor().subtype.metadata.model_sha256

    def compute() -> np.ndarray:
        RUNS["subtype_gradcam"] += 1
        return _subtype_gradcam(sign, sha).raw(inputs)

    return cache().get_or_compute(("subtype_cam_raw", image.digest, sha, sign), compute)


def lime_explanation(image: Image, num_samples: int, n_segments: int) -> LimeExplanation:
    """LIME explanation of one image, one run at a time across the whole process."""
    inputs = model_input(image)
    point = predictor().operating_point.id  # LIME explains the calibrated probability
    return cache().get_or_compute(
        ("lime", image.digest, point, num_samples, n_segments), lambda: _run_lime(inputs, num_samples, n_segments)
    )


def _run_lime(inputs: np.ndarray, num_samples: int, n_segments: int) -> LimeExplanation:
    lock = lime_lock()
    waiting = None
    if not lock.acquire(blocking=False):
        waiting = st.info(LIME_WAIT_MESSAGE, icon=":material/hourglass_top:")
        lock.acquire()
    try:  # released whatever happens, a user's rerun or stop raised while drawing included
        if waiting is not None:
            waiting.empty()
        RUNS["lime"] += 1
        config = LimeConfig(num_samples=num_samples, n_segments=n_segments)
        bar = st.progress(0.0, text="LIME: scoring perturbed images...")

        def report(done: int, total: int) -> None:
            bar.progress(min(done / total, 1.0), text=f"LIME: {done} of {total} perturbed images scored")

        explanation = explain_lime(inputs, predictor(), config, progress=report)
        bar.empty()
        return explanation
    finally:
        lock.release()


def diaphragm(image: Image) -> DiaphragmResult:
    """The suggested diaphragm crop of one image (``found`` is False, with a reason, when there is none)."""
    pixels = decoded(image).pixels
    return cache().get_or_compute(("diaphragm", image.digest), lambda: find_diaphragm(pixels))


def markers(image: Image) -> MarkerResult:
    """The burned-in markers found on the whole image (``find_markers``), with their painted-out copy."""
    pixels = decoded(image).pixels

    def find() -> MarkerResult:
        RUNS["markers"] += 1
        return find_markers(pixels)

    return cache().get_or_compute(("markers", image.digest), find)


def cropped_prediction(image: Image, box: tuple[int, int, int, int] | None, mask_markers: bool = False) -> Prediction:
    """The model's call, with the out-of-distribution check, on the image cropped to ``box`` (None:
    not cropped) and, with ``mask_markers``, with its burned-in markers painted out first.

    Raises:
        ConfigError: the box does not fit the image or keeps too little of it.
    """
    decoded_image = decoded(image)
    found = markers(image) if mask_markers else None

    model = predictor()

    def predict() -> Prediction:
        RUNS["crop_prediction"] += 1
        if found is None:
            return model.call_on_crop(decoded_image, box)
        return model.call_masked(decoded_image, found, box)

    key = ("crop_prediction", image.digest, model.operating_point.id, None if box is None else tuple(box), mask_markers)
    return cache().get_or_compute(key, predict)


def rescore_refusal(image: Image, box: tuple[int, int, int, int] | None) -> str | None:
    """Why ``box`` may not be rescored on this image, in plain words (``Predictor.rescore_refusal``,
    on the whole image's lung outline, ``diaphragm``); None when it may, or with no box.

    Raises:
        ConfigError: the box does not fit the image or keeps too little of it.
    """
    if box is None:
        return None
    return predictor().rescore_refusal(decoded(image), box, diaphragm(image))  # cheap: the outline is cached


def cropped_gradcam(
    image: Image, box: tuple[int, int, int, int] | None, mask_markers: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The screen picture of the image as rescored (uint8: cropped to ``box`` unless None, markers
    painted out with ``mask_markers``) and the raw Grad-CAM heat map of its model input
    (``GradCam.raw``, drawn through ``heatmap_scale``).

    Raises:
        ConfigError: the box does not fit the image or keeps too little of it.
    """
    pixels = decoded(image).pixels
    found = markers(image) if mask_markers else None

    def compute() -> tuple[np.ndarray, np.ndarray]:
        RUNS["crop_gradcam"] += 1
        edited = edit_pixels(pixels, box, found)
        return screen_grey(edited), gradcam().raw(preprocess(edited, predictor().input_size))

    key = ("crop_gradcam_raw", image.digest, None if box is None else tuple(box), mask_markers)
    return cache().get_or_compute(key, compute)
