"""Crop & rescore: the suggested diaphragm crop, adjustable, burned-in markers painted out or not,
and the call before and after."""

import streamlit as st

from ui import frame

model = frame.render("Crop & rescore")  # first: the banner shows while the imports below load

import contextlib  # noqa: E402
import threading  # noqa: E402

from streamlit.runtime.scriptrunner import add_script_run_ctx  # noqa: E402

from pneumo_model.crop import CropLimits, RescoreResult, fit_box, just_past_grey_zone  # noqa: E402
from pneumo_model.errors import ConfigError, PneumoError  # noqa: E402
from pneumo_model.explain import GRADCAM_BAR_WORDS, gradcam_colour_bar  # noqa: E402
from ui import attention, call_view, drawing, resources  # noqa: E402
from ui.markup import plain  # noqa: E402

# What the page can do to the image before rescoring it: (crop, mask the markers).
EDITS = {"Crop": (True, False), "Paint out markers": (False, True), "Crop and paint out markers": (True, True)}
# How each edit is named in the sentences below, and what swayed the model when the call changes.
EDIT_WORDS = {
    (True, False): ("the crop", "The removed region"),
    (False, True): ("painting out the markers", "The markers"),
    (True, True): ("the crop and painting out the markers", "The removed region or the markers"),
}


def reading(probability: float, grey_zone: bool, threshold: float, heading: bool = False) -> str:
    """A call as the reader should take it: normal or pneumonia, or indeterminate on one side of the
    threshold; in a sentence in lower case, on the "Call:" line (``heading``) as every page spells a call."""
    if not grey_zone:
        label = "pneumonia" if probability >= threshold else "normal"
        return call_view.call_word(label) if heading else label
    return f"indeterminate ({'above' if probability >= threshold else 'below'} the threshold)"


# Steps that may take longer than this show a status line (Streamlit's own spinner waits 0.5 s).
BUSY_AFTER_S = 0.3


@contextlib.contextmanager
def busy(text: str):
    """A status line that appears if the work inside takes longer than ``BUSY_AFTER_S``."""
    line = st.empty()
    timer = threading.Timer(BUSY_AFTER_S, lambda: line.info(text, icon=":material/hourglass_top:"))
    add_script_run_ctx(timer)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()
        line.empty()


def just_past(probability: float, grey_zone: bool, zone) -> bool:
    """A call outside the grey zone ``zone`` by a hair (``crop.just_past_grey_zone``): not confident either way."""
    return not grey_zone and just_past_grey_zone(probability, zone.low, zone.high)


def after_heading(result: RescoreResult, zone) -> str:
    """The call after, as the "Call:" line spells it; one just past the grey zone's edge says so, not a bare call."""
    if just_past(result.probability_after, result.grey_zone_after, zone):
        side = "pneumonia" if result.probability_after >= result.threshold else "normal"
        return f"just past the grey zone's edge, on the {side} side"
    return reading(result.probability_after, result.grey_zone_after, result.threshold, heading=True)


def change_message(result: RescoreResult, edit: str, swayed: str, zone=None) -> None:
    """What the change means, in words: a change of call only when it goes from one confident side to the
    other, and never for a call that leaves the grey zone ``zone`` by a hair."""
    moved = (
        f"The probability moved from {result.probability_before:.3f} to {result.probability_after:.3f}, across the "
        f"threshold {result.threshold:.3f}"
    )
    before = reading(result.probability_before, result.grey_zone_before, result.threshold)
    after = reading(result.probability_after, result.grey_zone_after, result.threshold)
    edge_after = zone is not None and just_past(result.probability_after, result.grey_zone_after, zone)
    edge_before = zone is not None and just_past(result.probability_before, result.grey_zone_before, zone)
    if edge_after or edge_before:
        which, probability = ("after", result.probability_after) if edge_after else ("before", result.probability_before)
        edge = zone.high if probability >= zone.high else zone.low
        st.warning(
            f"**Just past the grey zone's edge {which} {edit}.** The probability moved from "
            f"{result.probability_before:.3f} to {result.probability_after:.3f}; {probability:.3f} lies just outside "
            f"the grey zone's edge {edge:.3f}, closer to it than any change a reader should lean on. This is not a "
            "confident call on either side: the image needs a careful read.",
            icon=":material/help:",
        )
        return
    if result.call_changed:
        st.warning(
            f"**The call changes with {edit}:** {before} before, {after} after, both outside the grey zone. "
            f"{swayed} swayed the model: read the image carefully.",
            icon=":material/warning:",
        )
    elif result.label_changed and result.grey_zone_before and result.grey_zone_after:
        st.warning(
            f"**The probability moved but the call stays indeterminate.** {moved}, inside the grey zone: this is not "
            "a change of call. The image needs a careful read.",
            icon=":material/help:",
        )
    elif result.label_changed:
        st.warning(
            f"**Indeterminate {'before' if result.grey_zone_before else 'after'} {edit}.** {moved}, "
            f"{'out of' if result.grey_zone_before else 'into'} the grey zone: {before} before, {after} after. "
            "Not a change from one confident call to the other; the image needs a careful read.",
            icon=":material/help:",
        )
    elif result.grey_zone_before and result.grey_zone_after:
        st.warning(f"**Indeterminate before and after {edit}:** needs a careful read.", icon=":material/help:")
    elif result.grey_zone_before:
        st.warning(
            f"**The whole image's call is indeterminate**; after {edit} it is {after}, on the same side of the "
            "threshold. The image needs a careful read.",
            icon=":material/help:",
        )
    elif result.grey_zone_after:
        st.warning(
            f"**After {edit} the call becomes indeterminate** ({before} before, on the same side of the threshold). "
            f"{swayed} weighed in the call: read the image carefully.",
            icon=":material/help:",
        )
    else:
        st.caption(f"The call stays {before} before and after {edit}, outside the grey zone.")


image = frame.require_image()
pixels = frame.computed(lambda: resources.decoded(image), image.name).pixels
whole = frame.computed(lambda: resources.prediction(image), image.name)
with busy("Looking for the diaphragm and for burned-in markers..."):
    suggestion = frame.computed(lambda: resources.diaphragm(image), image.name)
    markers = frame.computed(lambda: resources.markers(image), image.name)
display = frame.computed(lambda: resources.display_pixels(image), image.name)

may_show, _ = frame.shown_call(image, whole, "crop")
if not may_show:
    drawing.show(display, caption=plain(image.name), width=440)
    st.stop()

height, width = pixels.shape
limits = CropLimits()
suggested = suggestion.box if suggestion.found else (0, 0, width, height)

choice = st.radio("Rescore the image with", list(EDITS), horizontal=True, key="crop_edit")
crop, mask = EDITS[choice]
if mask and not markers.count:
    st.info(
        "No burned-in marker was found on this image (a near-white letter, text or electrode), so painting out "
        "changes nothing here.",
        icon=":material/info:",
    )

# Keys per image, so that another image starts from its own suggestion. The box itself is kept
# apart from the sliders: Streamlit forgets a slider's value while the slider is not drawn.
digest = image.digest[:16]
rows_key, columns_key, box_key = f"crop_rows_{digest}", f"crop_columns_{digest}", f"crop_box_{digest}"


def use_box(box: tuple[int, int, int, int]) -> None:
    st.session_state[rows_key] = (box[1], box[3])
    st.session_state[columns_key] = (box[0], box[2])
    st.session_state[box_key] = box


box = None
if crop:
    if box_key not in st.session_state:
        use_box(suggested)
    elif rows_key not in st.session_state or columns_key not in st.session_state:
        use_box(st.session_state[box_key])
    (top, bottom), (left, right) = st.session_state[rows_key], st.session_state[columns_key]
    asked = (left, top, right, bottom)
    box = fit_box(asked, width, height, limits, previous=st.session_state[box_key])
    use_box(box)  # before the sliders are drawn, so that they show the box used

    controls = st.columns([3, 3, 1.2], vertical_alignment="bottom")
    controls[0].slider("Top and bottom edges of the box (px from the top)", 0, height, key=rows_key)
    controls[1].slider("Left and right edges of the box (px from the left)", 0, width, key=columns_key)
    controls[2].button(
        "Suggested", on_click=use_box, args=(suggested,), icon=":material/restart_alt:", width="stretch",
        help="Back to the suggested crop", disabled=not suggestion.found,
    )
    kept = (box[2] - box[0]) * (box[3] - box[1]) / (width * height)
    size_line = (
        f"The box keeps {box[3] - box[1]} x {box[2] - box[0]} px, {100 * kept:.0f} % of the {height} x {width} image "
        f"(edges at {box[1]} and {box[3]} px from the top, {box[0]} and {box[2]} px from the left)."
    )
    if box != asked:
        st.info(
            f"The box was grown back to the smallest crop accepted: {limits.min_side} px a side and "
            f"{100 * limits.min_area_fraction:.0f} % of the image, so that the chest stays in view. {size_line}",
            icon=":material/crop:",
        )
    elif not suggestion.found:
        st.warning(f"No crop suggested. {suggestion.reason}", icon=":material/crop_free:")
    else:
        st.caption(size_line)

edit, swayed = EDIT_WORDS[(crop, mask)]
try:
    refusal = resources.rescore_refusal(image, box)  # the package's rescore rule (docs/crop_rule.md), as `crop`'s
    if refusal is None:
        with busy(f"Rescoring the image after {edit}..."):
            after = resources.cropped_prediction(image, box, mask)
            edited, heatmap = resources.cropped_gradcam(image, box, mask)
except ConfigError as error:  # never expected (the box was fitted), but a box must never replace the page
    st.error(f"This box cannot be rescored. {plain(error)} Press **Suggested** or move the sliders.", icon=":material/crop:")
    drawing.show(display, caption=plain(image.name), width=440)
    st.stop()
if refusal is not None:
    # No call after, so nothing after is shown or recorded: the whole image's call (recorded above) stands.
    drawn, numbers = st.columns([4, 7], gap="medium")
    drawing.show(
        drawing.draw_crop(display, box, pixels.shape),
        caption=f"{plain(image.name)}: the box asked for (the dimmed part would be removed).",
        where=drawn,
    )
    with numbers:
        st.error(f"**This box is not rescored.** {refusal}", icon=":material/crop_free:")
        before_words = reading(whole.probability, whole.grey_zone, whole.threshold, heading=True)
        st.markdown(f"The whole image's call stands: **{before_words}** (probability {whole.probability:.3f}).")
        st.caption(
            "Press **Suggested** for the automatic crop, or move the sliders so that the box keeps both lungs. "
            "A refused box is not recorded in the audit trail."
        )
    st.stop()
result = RescoreResult.from_calls(whole, after, box, markers if mask else None)  # the very calls shown

drawn, explained, numbers = st.columns([4, 4, 3], gap="medium")
before_picture = drawing.draw_crop(display, box, pixels.shape) if box is not None else display
if mask and markers.count:
    before_picture = drawing.draw_markers(before_picture, markers.boxes, pixels.shape)
kept_words = "the box is kept, the dimmed part is removed" if box is not None else "the whole image is kept"
marker_words = (
    f"; the {markers.count} burned-in marker{'s' if markers.count > 1 else ''} outlined in blue "
    f"({100 * markers.area_fraction:.2f} % of the image) {'are' if markers.count > 1 else 'is'} painted out"
    if mask and markers.count
    else ""
)
drawing.show(
    before_picture,
    caption=f"Before: {plain(image.name)}. For rescoring, {kept_words}{marker_words}.",
    where=drawn,
)
try:  # the Grad-CAM on the Explain page's fixed scale (docs/heatmap_scale.md), or none at all
    scale = resources.heatmap_scale()
except PneumoError as error:
    explained.error(f"No Grad-CAM: {plain(error)}", icon=":material/error:")
else:
    weak = " No region raised the pneumonia score much." if scale.is_weak(heatmap) else ""
    drawing.show(
        scale.overlay(edited, heatmap, alpha=0.4),
        caption=f"After: the image as rescored, with its Grad-CAM ({frame.HEATMAP_CAVEAT}), on the Explain "
        f"page's fixed scale: peak {scale.peak(heatmap):.2f}.{weak}",
        where=explained,
    )
    drawing.show(gradcam_colour_bar(scale, 0.4, peak=scale.peak(heatmap)), caption=GRADCAM_BAR_WORDS, where=explained)
    attention.show_rescored(image, box, mask, edited, where=explained)  # is the heat on the chest?
with numbers:
    after_message = (
        f"**After {edit}, the image does not look like a frontal chest X-ray; the score after it is not meaningful.** "
        + ("Keep more of the image." if crop else "")
    )
    gate_key = f"crop_after_{'whole' if box is None else '_'.join(map(str, box))}{'_masked' if mask else ''}"
    may_show_after, _ = frame.shown_call(image, after, gate_key, box, after_message, markers_masked=mask)
    st.markdown("**Probability of pneumonia**")
    before_column, after_column = st.columns(2)
    before_column.metric("Before", f"{result.probability_before:.3f}", help="The whole image, as uploaded.")
    if may_show_after:
        after_column.metric(
            "After",
            f"{result.probability_after:.3f}",
            delta=f"{result.delta:+.3f}",
            delta_color="off",
            help=f"After {edit}.",
        )
        st.markdown(
            f"Call: **{reading(result.probability_before, result.grey_zone_before, result.threshold, heading=True)}** → "
            f"**{after_heading(result, model.grey_zone)}**"
        )
        change_message(result, edit, swayed, model.grey_zone)
        st.caption(
            f"Threshold {result.threshold:.3f}; grey zone [{model.grey_zone.low:.3f}, {model.grey_zone.high:.3f}), "
            "where no call is trusted. A change of call is one from a confident normal to a confident pneumonia, "
            "or back."
        )

if may_show_after:  # under the pictures and the numbers: the numbers' column is too narrow for a legible bar
    with st.columns([4, 7], gap="medium")[1]:
        call_view.show_pattern(after, model.subtype, "crop", title=f"Pattern after {edit}")

if crop and suggestion.found:
    st.caption(f"**Suggested crop.** {suggestion.reason} Adjust it with the sliders.")
if mask and markers.count:
    st.caption(
        "**Burned-in markers** are near-white letters, text or electrodes, found automatically and filled in from "
        "their surroundings. Faint or grey markers are left in on purpose: painting out anatomy would be worse."
    )
