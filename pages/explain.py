"""Explain: Grad-CAM and LIME overlays beside the original image."""

import streamlit as st

from pneumo_model.explain import overlay_heatmap
from ui import drawing, frame, resources
from ui.markup import plain

frame.render("Explain")
image = frame.require_image()
result = frame.computed(lambda: resources.prediction(image), image.name)
display = frame.computed(lambda: resources.display_pixels(image), image.name)

may_show, _ = frame.shown_call(image, result, "explain")
if not may_show:
    drawing.show(display, caption=f"Original: {plain(image.name)}", width=440)
    st.stop()
st.markdown(
    f"**{plain(image.name)}**: call **{result.label}**, probability of pneumonia **{result.probability:.3f}**"
    + (" — *indeterminate: needs a careful read*" if result.grey_zone else "")
)
opacity = st.slider("Overlay opacity", min_value=0.0, max_value=1.0, value=0.4, step=0.05, key="overlay_opacity")

with st.form("lime_settings", border=False):
    settings = st.columns([2, 2, 1], vertical_alignment="bottom")
    num_samples = settings[0].slider(
        "LIME samples (perturbed images scored)", min_value=200, max_value=3000, value=1000, step=100,
        key="lime_samples",
        help="More samples give a steadier explanation and take longer.",
    )
    n_segments = settings[1].slider(
        "LIME superpixels", min_value=20, max_value=150, value=50, step=10, key="lime_segments",
        help="How many regions SLIC aims to cut the image into.",
    )
    if settings[2].form_submit_button("Run LIME", icon=":material/play_arrow:", width="stretch"):
        st.session_state["lime_request"] = (image.digest, num_samples, n_segments)

original, gradcam, lime = st.columns(3)
drawing.show(display, caption=f"Original: {plain(image.name)}", where=original)
drawing.show(
    overlay_heatmap(display, frame.computed(lambda: resources.gradcam_heatmap(image)), alpha=opacity),
    caption=f"Grad-CAM: {frame.HEATMAP_CAVEAT}. Yellow = raised the pneumonia score most.",
    where=gradcam,
)
request = st.session_state.get("lime_request")
with lime:
    if request is None or request[0] != image.digest:
        st.info(
            "LIME scores every perturbed image with the model, so it takes a few seconds per 1000 samples "
            "on two CPU cores. Choose the settings and press Run LIME.",
            icon=":material/timer:",
        )
    else:
        _, used_samples, used_segments = request
        explanation = frame.computed(lambda: resources.lime_explanation(image, used_samples, used_segments), image.name)
        drawing.show(
            explanation.overlay(display, fill_alpha=opacity),
            caption=f"LIME ({used_samples} samples, {used_segments} superpixels): {frame.HEATMAP_CAVEAT}. "
            "Orange regions pushed towards pneumonia, blue away from it.",
        )
