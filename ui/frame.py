"""The frame every page shares: the intended-use banner, the model's short SHA, the sidebar."""

from __future__ import annotations

import streamlit as st

from pneumo_model.errors import PneumoError
from pneumo_model.prediction import Prediction, Predictor

from . import resources, state
from .markup import plain

DISCLAIMER = "Decision support for trained readers — not a medical device, not a diagnosis."
HEATMAP_CAVEAT = "shows where the model looked, not where the lesion is"
OOD_MESSAGE = (
    "**This does not look like a frontal chest X-ray; the model's output is not meaningful.** "
    "It is unlike the paediatric chest films the model was trained on (a photo, another body part "
    "or modality, a rotated, inverted or tightly cropped film...)."
)


def show_error(error: PneumoError, file_name: str | None = None) -> None:
    """A package error as a plain message (its text already says what to do), never a traceback.

    The message may quote the file (a DICOM tag, a decoder's words) and the name is the user's,
    so both are shown as text, never as Markdown.
    """
    prefix = f"**{plain(file_name)}** cannot be used. " if file_name else ""
    st.error(prefix + plain(error), icon=":material/error:")


def show_warnings(warnings) -> None:
    """The decoder's notes on an image (they may quote the file's own tags), as plain text."""
    for warning in warnings:
        st.info(plain(warning), icon=":material/info:")


def ood_gate(prediction: Prediction, key: str, message: str = OOD_MESSAGE) -> bool:
    """Shows the out-of-distribution verdict; returns whether the model's output may be shown.

    An image the gate flags gets a plain message, and its call stays hidden unless the user
    ticks the box (``key`` makes the box per page and image).
    """
    if prediction.ood is None:
        st.caption("This model has no out-of-distribution check; make sure the image is a frontal chest X-ray.")
        return True
    if not prediction.ood:
        return True
    st.error(f"{message} (Out-of-distribution score {prediction.ood_score:.2f}; above 1 is flagged.)", icon=":material/block:")
    return st.checkbox("Show the model's output anyway", key=f"show_ood_{key}", value=False)


def render() -> Predictor:
    """Draws the banner and the sidebar; stops the page with a plain error when the model cannot load."""
    try:
        model = resources.predictor()
    except PneumoError as error:
        st.warning(DISCLAIMER, icon=":material/medical_information:")
        show_error(error)
        st.stop()
    st.warning(
        f"{DISCLAIMER} Model `{model.metadata.short_sha}` ({model.metadata.description}).",
        icon=":material/medical_information:",
    )
    lost = state.lost_uploads()
    if lost is not None:
        st.warning(lost, icon=":material/cloud_off:")
    _sidebar(model)
    return model


def _sidebar(model: Predictor) -> None:
    with st.sidebar:
        image = state.chosen()
        if image is None:
            st.caption("No image chosen yet.")
        else:
            source = "demo image" if image.source == "sample" else "uploaded"
            st.caption(f"Chosen image: **{plain(image.name)}** ({source})")
        with st.expander("Demo images (one click loads)", expanded=image is None):
            for sample in state.samples():
                st.button(
                    sample.title,
                    key=f"sample-{sample.path.name}",
                    on_click=state.choose_sample,
                    args=(sample.path,),
                    width="stretch",
                )
            st.caption("From the Kermany 2018 test split, CC BY 4.0 (see the Model card).")
        st.caption(f"{DISCLAIMER}  \nModel `{model.metadata.short_sha}`")


def require_image() -> state.ChosenImage:
    """The chosen image, or an explanation and a stop when there is none."""
    image = state.chosen()
    if image is None:
        st.info(
            "No image chosen. Upload one on the Review page, or pick a demo image in the sidebar.",
            icon=":material/image:",
        )
        st.page_link("app_pages/review.py", label="Go to Review", icon=":material/radiology:")
        st.stop()
    return image
