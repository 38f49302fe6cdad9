"""Review one image: ``streamlit run app.py``.

The call at a glance (the call, the calibrated probability, the probability bar with the
threshold and the grey zone, one sentence in plain words), the out-of-distribution flag, the
reviewer's verdict for the audit trail and the case report. This script is also the app's home
page; the other pages are in ``pages/`` (Streamlit's classic multipage app), and every page draws
the shared frame first (``ui.frame.render``). All model work is in ``pneumo_model``.
"""

import streamlit as st

from ui import frame

model = frame.render("Review")  # first: the banner shows while the imports below load

from ui import audit, call_view, drawing, resources, state  # noqa: E402
from ui.markup import plain  # noqa: E402

# The picture's column at 1366 x 768: a demo image (224 px) is drawn at twice its size, pixel for pixel.
IMAGE_ROOM = 460

# What the result areas last showed, in this tab: the image (SHA-256, name and source, as its caption
# names it), and which of each column's two slots holds the result.
SHOWN_KEY = "review_shown"
SLOT_KEY = "review_slot"


def result_areas(image: state.ChosenImage, result_column, image_column) -> list:
    """The two areas the result is drawn in: the call's (with the gate's message, the warnings and
    the verdict form) under the uploader, and the film's.

    Streamlit keeps the previous run's elements on screen until each one is replaced, so a new
    image's call would sit beside the previous image's film (or bar, or gate message) until the
    whole result was drawn again. So, for an image the areas did not show last, the previous
    result is emptied from both columns before anything is computed or drawn: the screen then
    holds the previous image's result whole or nothing of it, and the new one builds up alone.

    Each column has two slots, and a new image's result goes to the other one. Emptying a slot
    and drawing into it again would not do: the server merges what it has not yet sent for one
    place on the page, and the browser would only see a container replaced by one of its kind,
    whose old elements it keeps. For the same image (a press on the form, the gate's box) the
    result is redrawn in its slot, in place, with nothing blinking.
    """
    shown = (image.digest, image.name, image.source)
    slot = st.session_state.get(SLOT_KEY, 0)
    if st.session_state.get(SHOWN_KEY) != shown:
        slot = 1 - slot
    areas = []
    for column in (result_column, image_column):
        with column:
            slots = (st.empty(), st.empty())
        areas.append(slots[slot].container())
    st.session_state[SHOWN_KEY], st.session_state[SLOT_KEY] = shown, slot
    return areas


result_column, image_column = st.columns([5, 6], gap="large")
with result_column:
    uploader = state.review_uploader_key()
    st.file_uploader(
        "Upload one chest X-ray, or pick a demo image in the sidebar",
        help=f"{state.UPLOAD_FORMATS}, up to {state.IMAGE_UPLOAD_MB} MB.",
        label_visibility="collapsed",  # said under it until an image is chosen; the first screen needs the room
        type=state.UPLOAD_TYPES,
        max_upload_size=state.IMAGE_UPLOAD_MB,
        key=uploader,
        on_change=state.choose_upload,
        args=(uploader,),
    )
    image = state.chosen()
    if image is None:
        st.session_state.pop(SHOWN_KEY, None)
        st.info(
            f"No image chosen yet. Upload one chest X-ray above ({state.UPLOAD_FORMATS}), or pick a demo image "
            "in the sidebar.",
            icon=":material/image:",
        )
        st.stop()

result_area, film_area = result_areas(image, result_column, image_column)
with result_area:
    # Both the call and the film's pixels before anything of the result is drawn.
    result = frame.computed(lambda: resources.prediction(image), image.name, busy="Reading and scoring the image...")
    display = frame.computed(lambda: resources.display_pixels(image), image.name)

    may_show, result_id = frame.shown_call(image, result, "review")
    if may_show:
        call_view.show_call(result, model)
    frame.show_warnings(result.info.warnings)
    audit.verdict_form(result_id, "review_verdict", call_shown=may_show)

with film_area:
    shown, factor = drawing.sharp(display, IMAGE_ROOM)
    info = result.info
    size = f"{info.width} x {info.height} px, {info.bit_depth}-bit {info.format}"
    if image.source == "sample":
        about = f"demo image: the data set's reduced copy ({size}), not the original film"
    elif image.source == "pacs":
        about = f"from the PACS, {size}"
    else:
        about = f"upload, {size}"
    zoom = f"; shown at {factor}x, pixel for pixel" if factor > 1 else ""
    drawing.show(shown, caption=f"{plain(image.name)} ({about}{zoom})", width=min(shown.shape[1], IMAGE_ROOM))
    if may_show:
        call_view.case_report_download(image, result, model, "review")
