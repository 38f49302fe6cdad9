"""Audit trail: every result shown and every verdict recorded, newest first, with a CSV export."""

import streamlit as st

from pneumo_model.audit import AuditError, trail_csv
from ui import audit, frame
from ui.markup import plain

frame.render("Audit trail")
try:
    trail = audit.trail()
    rows = trail.trail()  # one read of the database per run of the page
    table, counts = audit.trail_table(rows)
    csv_text = trail_csv(rows)
except AuditError as error:
    st.error(f"The audit trail cannot be read. {plain(error)}", icon=":material/database:")
    st.stop()

st.markdown("#### Audit trail")
st.caption(
    f"Append-only record at `{trail.path}`: a result when it is first shown in a session, and each "
    "reviewer verdict. Images are identified by the SHA-256 of their bytes; no pixels, file names or "
    "patient identifiers are stored. Times are UTC."
)
columns = st.columns([1, 1, 1, 1.3], vertical_alignment="center")
columns[0].metric("Results recorded", counts["results"])
columns[1].metric("Verdicts recorded", counts["verdicts"])
columns[2].metric("Disagreements", counts["disagreements"])
columns[3].download_button(
    "Download CSV",
    csv_text.encode("utf-8"),
    file_name="audit_trail.csv",
    mime="text/csv",
    on_click="ignore",
    icon=":material/download:",
    width="stretch",
    disabled=table.empty,
)
if table.empty:
    st.info("Nothing recorded yet. Results are recorded when they are shown on the other pages.", icon=":material/history:")
    st.stop()
st.dataframe(
    table,
    hide_index=True,
    column_order=[
        "result_id", "recorded_utc", "source", "image", "model", "point", "probability", "label", "grey_zone", "ood",
        "ood_score", "revealed_utc", "crop_box", "verdict", "note", "reviewer", "verdict_utc",
    ],
    column_config={
        "result_id": st.column_config.NumberColumn("result", format="%d"),
        "recorded_utc": st.column_config.TextColumn("shown (UTC)"),
        "image": st.column_config.TextColumn("image SHA-256", help="First 12 hex digits; the CSV has all 64"),
        "model": st.column_config.TextColumn("model", help="First 12 hex digits of the model's SHA-256"),
        "point": st.column_config.TextColumn(
            "operating point",
            help="First 8 hex digits of the id of the operating point that made the call; the CSV has all 16. "
            "Empty for records made before the trail kept it",
        ),
        "probability": st.column_config.NumberColumn("probability", format="%.3f"),
        "grey_zone": st.column_config.CheckboxColumn("indeterminate"),
        "ood": st.column_config.CheckboxColumn("not X-ray-like"),
        "ood_score": st.column_config.NumberColumn("OOD score", format="%.2f"),
        "verdict_utc": st.column_config.TextColumn("verdict (UTC)"),
        "revealed_utc": st.column_config.TextColumn(
            "hidden call shown (UTC)", help="When a user first asked to see a call the out-of-distribution check hid"
        ),
    },
    height=560,
)
