"""Crop & rescore: the suggested diaphragm crop, adjustable, and the call before and after it."""

import streamlit as st

from pneumo_model.crop import RescoreResult
from pneumo_model.errors import PneumoError
from pneumo_model.explain import GRADCAM_BAR_WORDS, gradcam_colour_bar
from ui import drawing, frame, resources
from ui.markup import plain

frame.render("Crop & rescore")
image = frame.require_image()
pixels = frame.computed(lambda: resources.decoded(image), image.name).pixels
whole = frame.computed(lambda: resources.prediction(image), image.name)
suggestion = frame.computed(lambda: resources.diaphragm(image), image.name)
display = frame.computed(lambda: resources.display_pixels(image), image.name)

may_show, _ = frame.shown_call(image, whole, "crop")
if not may_show:
    drawing.show(display, caption=plain(image.name), width=440)
    st.stop()

height, width = pixels.shape
suggested = suggestion.box if suggestion.found else (0, 0, width, height)
if suggestion.found:
    st.caption(f"**Suggested crop.** {suggestion.reason} Adjust it with the sliders.")
else:
    st.warning(f"No crop suggested. {suggestion.reason}", icon=":material/crop_free:")

# Keys per image, so that another image starts from its own suggestion.
rows_key, columns_key = f"crop_rows_{image.digest[:16]}", f"crop_columns_{image.digest[:16]}"


def use_suggestion() -> None:
    st.session_state[rows_key] = (suggested[1], suggested[3])
    st.session_state[columns_key] = (suggested[0], suggested[2])


if rows_key not in st.session_state or columns_key not in st.session_state:
    use_suggestion()
controls = st.columns([3, 3, 1.2], vertical_alignment="bottom")
top, bottom = controls[0].slider("Rows kept (pixels from the top)", 0, height, key=rows_key)
left, right = controls[1].slider("Columns kept (pixels from the left)", 0, width, key=columns_key)
controls[2].button(
    "Suggested", on_click=use_suggestion, icon=":material/restart_alt:", width="stretch",
    help="Back to the suggested crop", disabled=not suggestion.found,
)
box = (left, top, right, bottom)

after = frame.computed(lambda: resources.cropped_prediction(image, box))
cropped, heatmap = frame.computed(lambda: resources.cropped_gradcam(image, box))
result = RescoreResult.from_calls(whole, after, box)  # the very calls shown and recorded

drawn, explained, numbers = st.columns([4, 4, 3], gap="medium")
drawing.show(
    drawing.draw_crop(display, box, pixels.shape),
    caption=f"{plain(image.name)}: the box is kept, the dimmed part is removed before rescoring.",
    where=drawn,
)
try:  # the Grad-CAM on the Explain page's fixed scale (docs/heatmap_scale.md), or none at all
    scale = resources.heatmap_scale()
except PneumoError as error:
    explained.error(f"No Grad-CAM: {plain(error)}", icon=":material/error:")
else:
    weak = " No region raised the pneumonia score much." if scale.is_weak(heatmap) else ""
    drawing.show(
        scale.overlay(cropped, heatmap, alpha=0.4),
        caption=f"Grad-CAM of the cropped image: {frame.HEATMAP_CAVEAT}; on the Explain page's fixed scale, "
        f"peak {scale.peak(heatmap):.2f}.{weak}",
        where=explained,
    )
    drawing.show(gradcam_colour_bar(scale, 0.4, peak=scale.peak(heatmap)), caption=GRADCAM_BAR_WORDS, where=explained)
with numbers:
    st.metric("Probability before the crop", f"{result.probability_before:.3f}")
    crop_message = (
        "**The cropped image does not look like a frontal chest X-ray; the score after the crop is not "
        "meaningful.** Keep more of the image."
    )
    may_show_after, _ = frame.shown_call(image, after, f"crop_after_{'_'.join(map(str, box))}", box, crop_message)
    if may_show_after:
        st.metric(
            "Probability after the crop",
            f"{result.probability_after:.3f}",
            delta=f"{result.delta:+.3f}",
            delta_color="off",
        )
        st.markdown(
            f"Call: **{result.label_before}** → **{result.label_after}** "
            f"(threshold {result.threshold:.3f})"
        )
        if result.grey_zone_before or result.grey_zone_after:
            which = " and ".join(
                name for name, flag in (("before", result.grey_zone_before), ("after", result.grey_zone_after)) if flag
            )
            st.warning(f"Indeterminate {which} the crop: needs a careful read.", icon=":material/help:")
        if result.label_changed:
            st.warning(
                "The call changes with the crop: the removed region swayed the model. Read the image carefully.",
                icon=":material/warning:",
            )
