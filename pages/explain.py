"""Explain: Grad-CAM and LIME beside the original image, each on one fixed scale with its legend; under
them, for a film given a radiographic pattern, the subtype network's own map on its own scale."""

import streamlit as st

from ui import frame

frame.render("Explain")  # first: the banner shows while the imports below load

from pneumo_model.explain import (  # noqa: E402
    GRADCAM_BAR_WORDS,
    LIME_BAR_WORDS,
    LimeConfig,
    lime_colour_bar,
    with_legend,
)
from ui import attention, call_view, drawing, pattern_map, resources, state  # noqa: E402
from ui.markup import plain  # noqa: E402

image = frame.require_image()
result = frame.computed(lambda: resources.prediction(image), image.name)
display = frame.computed(lambda: resources.display_pixels(image), image.name)

may_show, _ = frame.shown_call(image, result, "explain")
if not may_show:
    drawing.show(display, caption=f"Original: {plain(image.name)}", width=440)
    st.stop()
st.markdown(
    f"**{plain(image.name)}**: call **{call_view.call_word(result.label)}**, probability of pneumonia **{result.probability:.3f}**"
    + (" — *indeterminate: needs a careful read*" if result.grey_zone else "")
)
scale = frame.computed(resources.heatmap_scale)
# One row of controls, so that the pictures start on the first screen at 1366 x 768.
live, lime_controls = st.columns([1, 3], vertical_alignment="bottom")
opacity = live.slider("Overlay opacity", min_value=0.0, max_value=1.0, value=0.4, step=0.05, key="overlay_opacity")

with lime_controls.form("lime_settings", border=False):
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

with gradcam:
    raw = frame.computed(lambda: resources.gradcam_heatmap(image), image.name, busy="Computing Grad-CAM...")
    peak = scale.peak(raw)
    drawing.fixed_scale_map(
        display, raw, scale, opacity,
        caption=f"Grad-CAM: {frame.HEATMAP_CAVEAT}. Brighter = raised the pneumonia score more (this "
        f"image's peak {peak:.2f}). {GRADCAM_BAR_WORDS}",
        bar_words=GRADCAM_BAR_WORDS,
        weak_words=f"**Grad-CAM: no region raised the pneumonia score much.** Peak {peak:.2f}, below the "
        f"{scale.weak_fraction:.2f} that 95 % of normal validation films stay under, so no map is drawn."
        + (" The pneumonia call stands: no single region carries it." if result.label == "pneumonia" else ""),
        key=f"weak_map_{image.digest[:16]}",
    )
    attention.show_whole(image, display)  # is the heat on the chest? (docs/attention_rule.md)

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
        with state.stopped_by_reload(state.LIME_STOPPED, drop=("lime_request",)):  # a reload says it stopped LIME
            explanation = frame.computed(
                lambda: resources.lime_explanation(image, used_samples, used_segments), image.name,
                busy=f"Running LIME ({used_samples} samples)...",
            )
        config = LimeConfig(num_samples=used_samples, n_segments=used_segments)
        half_width = scale.lime_half_width(explanation)
        all_small = scale.lime_all_small(explanation, config)
        legend = lime_colour_bar(
            half_width, None if all_small is None else scale.lime_small_below, opacity, width=max(640, display.shape[1])
        )
        words = LIME_BAR_WORDS
        if all_small is None:
            words += (
                f" The small-weight check is set for {scale.lime_num_samples} samples and {scale.lime_n_segments} "
                "superpixels; these settings are not judged."
            )
        else:
            words += " Dashed: 95 % of normal validation films have no weight beyond it."
        drawing.show(
            with_legend(explanation.overlay(display, half_width=half_width, alpha=opacity), legend, grow=True),
            caption=f"LIME ({used_samples} samples, {used_segments} superpixels): {frame.HEATMAP_CAVEAT}. Orange "
            f"regions pushed towards pneumonia, blue away from it; the strongest five of each are outlined. {words}",
        )
        if all_small:
            # Said under the picture, not in a box: on this model it is true of nearly every film.
            facts = scale.facts
            within = round(facts.get("lime_small_share_pneumonia", 0.0) * facts.get("lime_n_pneumonia", 0))
            st.caption(
                f"**All LIME weights are small**: none beyond ±{scale.lime_small_below:.2f}, the "
                "range 95 % of normal validation films stay within, so the colours are faint. LIME tells the calls "
                f"apart poorly on this model: {within} of {facts.get('lime_n_pneumonia', 0)} validation pneumonia "
                "films stayed within it too."
            )

pattern_map.show(image, result, display, opacity)  # the subtype pattern's own map, on its own scale

call_view.case_report_download(image, result, resources.predictor(), "explain")
