"""Review one image: ``streamlit run app.py``.

The call, the calibrated probability, the operating point, the grey-zone and out-of-distribution
flags, and the reviewer's verdict for the audit trail. This script is also the app's home page;
the other pages are in ``pages/`` (Streamlit's classic multipage app), and every page draws the
shared frame first (``ui.frame.render``). All model work is in ``pneumo_model``.
"""

import streamlit as st

from ui import audit, drawing, frame, resources, state
from ui.markup import plain

model = frame.render("Review")

result_column, image_column = st.columns([2, 3], gap="large")
with result_column:
    st.file_uploader(
        f"Upload one chest X-ray ({state.UPLOAD_FORMATS}), or pick a demo image in the sidebar",
        type=state.UPLOAD_TYPES,
        max_upload_size=state.IMAGE_UPLOAD_MB,
        key="review_upload",
        on_change=state.choose_upload,
        args=("review_upload",),
    )
    image = state.chosen()
    if image is None:
        st.info("No image chosen yet.", icon=":material/image:")
        st.stop()
    result = frame.computed(lambda: resources.prediction(image), image.name)
    display = frame.computed(lambda: resources.display_pixels(image), image.name)

    may_show, result_id = frame.shown_call(image, result, "review")
    if may_show:
        call = "Pneumonia" if result.label == "pneumonia" else "Normal"
        st.markdown(f"#### Call: **{call}**")
        point = model.operating_point
        st.metric(
            "Probability of pneumonia (calibrated)",
            f"{result.probability:.3f}",
            help=(
                "Temperature-scaled on validation data from the training hospital."
                if point.kind == "shipped"
                else "Recalibrated on this site's own labelled images (the site profile)."
            ),
        )
        low, high = model.grey_zone.low, model.grey_zone.high
        if result.grey_zone:
            st.warning(
                f"**Indeterminate: needs a careful read.** The probability lies in the grey zone "
                f"[{low:.3f}, {high:.3f}), where the model's call is not trusted.",
                icon=":material/help:",
            )
        else:
            st.success(f"Outside the grey zone [{low:.3f}, {high:.3f}).", icon=":material/check_circle:")
        st.caption(f"Operating point: pneumonia at probability ≥ {result.threshold:.3f}; {frame.operating_point_purpose(model)}.")
    frame.show_warnings(result.info.warnings)
    audit.verdict_form(result_id, "review_verdict")

with image_column:
    source = "demo image" if image.source == "sample" else "upload"
    drawing.show(
        display,
        caption=f"{plain(image.name)} ({source}, {result.info.width} x {result.info.height} px, "
        f"{result.info.bit_depth}-bit {result.info.format})",
        width=440,
    )
