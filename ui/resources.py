"""Process-wide resources: the model, loaded once and shared read-only, and per-image results.

The model is a ``st.cache_resource``: one ``Predictor`` per server process, used by every
session and never changed. Per-image results are ``st.cache_data`` entries keyed on the
image's bytes (and the LIME settings), so reruns, widget changes and page switches reuse them.
``RUNS`` counts how often each slow step really ran in this process; the tests read it.
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import streamlit as st

from pneumo_model.crop import DiaphragmResult, apply_crop, find_diaphragm
from pneumo_model.explain import GradCam, LimeConfig, LimeExplanation, explain_lime
from pneumo_model.prediction import Prediction, Predictor
from pneumo_model.preprocessing import ImageInfo, load_and_preprocess, load_image, preprocess

from . import drawing

RUNS: Counter[str] = Counter()

LIME_WAIT_MESSAGE = "Another explanation is running; yours starts when it finishes."


@st.cache_resource(show_spinner="Loading the model (once per server start)...")
def predictor() -> Predictor:
    """The shipped model with its metadata; raises ``ModelFileError`` when it cannot be used."""
    RUNS["model_load"] += 1
    return Predictor.from_file()


@st.cache_resource(show_spinner=False)
def gradcam() -> GradCam:
    model = predictor()
    return GradCam(model.model, model.metadata.gradcam_layer)


@st.cache_resource(show_spinner=False)
def lime_lock() -> threading.Lock:
    # LIME saturates both cores, so the whole process runs one at a time.
    return threading.Lock()


# Few entries for whole images: a full-size 16-bit radiograph takes tens of MB.
@st.cache_data(show_spinner=False, max_entries=8)
def decoded(image_bytes: bytes) -> tuple[np.ndarray, ImageInfo]:
    """``load_image`` of the bytes: the 2-D grey pixels and the image facts.

    Raises:
        InvalidImageError: the bytes are not a usable image (the message says why).
    """
    return load_image(image_bytes)


@st.cache_data(show_spinner=False, max_entries=16)
def display_pixels(image_bytes: bytes) -> np.ndarray:
    """The grey image for the screen (``drawing.display_copy``): float32 in [0, 1], at most 1024 px a side."""
    pixels, _ = decoded(image_bytes)
    return drawing.display_copy(pixels)


@st.cache_data(show_spinner=False, max_entries=256)
def prediction(image_bytes: bytes) -> Prediction:
    """The model's call on one image.

    Raises:
        InvalidImageError: the bytes are not a usable image.
    """
    RUNS["prediction"] += 1
    return predictor().predict_source(image_bytes)


@st.cache_data(show_spinner=False, max_entries=64)
def gradcam_heatmap(image_bytes: bytes) -> np.ndarray:
    """Grad-CAM heat map on the model input, (size, size) float32 in [0, 1]."""
    RUNS["gradcam"] += 1
    model_input, _ = load_and_preprocess(image_bytes, predictor().input_size)
    return gradcam()(model_input)


@st.cache_data(show_spinner=False, max_entries=32)
def lime_explanation(image_bytes: bytes, num_samples: int, n_segments: int) -> LimeExplanation:
    """LIME explanation of one image, one run at a time across the whole process.

    The progress bar and the waiting note are drawn inside the cached function, as Streamlit
    replays such elements on a cache hit; both are emptied before returning, so a hit shows
    nothing. (A bar created outside could not be updated from here without breaking the replay.)
    """
    lock = lime_lock()
    if not lock.acquire(blocking=False):
        waiting = st.info(LIME_WAIT_MESSAGE, icon=":material/hourglass_top:")
        lock.acquire()
        waiting.empty()
    try:
        RUNS["lime"] += 1
        config = LimeConfig(num_samples=num_samples, n_segments=n_segments)
        bar = st.progress(0.0, text="LIME: scoring perturbed images...")

        def report(done: int, total: int) -> None:
            bar.progress(min(done / total, 1.0), text=f"LIME: {done} of {total} perturbed images scored")

        model = predictor()
        model_input, _ = load_and_preprocess(image_bytes, model.input_size)
        explanation = explain_lime(model_input, model, config, progress=report)
        bar.empty()
        return explanation
    finally:
        lock.release()


@st.cache_data(show_spinner=False, max_entries=64)
def diaphragm(image_bytes: bytes) -> DiaphragmResult:
    """The suggested diaphragm crop of one image (``found`` is False, with a reason, when there is none)."""
    pixels, _ = decoded(image_bytes)
    return find_diaphragm(pixels)


@st.cache_data(show_spinner=False, max_entries=256)
def cropped_prediction(image_bytes: bytes, box: tuple[int, int, int, int]) -> Prediction:
    """The model's call, with the out-of-distribution check, on the image cropped to ``box``.

    Raises:
        ConfigError: the box does not fit the image or keeps too little of it.
    """
    RUNS["crop_prediction"] += 1
    pixels, info = decoded(image_bytes)
    return predictor().predict_input(preprocess(apply_crop(pixels, box), predictor().input_size), info)


@st.cache_data(show_spinner=False, max_entries=16)
def cropped_gradcam(image_bytes: bytes, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The display copy of the cropped image and the Grad-CAM heat map of its model input.

    Raises:
        ConfigError: the box does not fit the image or keeps too little of it.
    """
    RUNS["crop_gradcam"] += 1
    pixels, _ = decoded(image_bytes)
    cropped = apply_crop(pixels, box)
    return drawing.display_copy(cropped), gradcam()(preprocess(cropped, predictor().input_size))
