"""Worklist: score many images at once, sorted by probability, with grey-zone, out-of-distribution
and error flags."""

import streamlit as st

from ui import audit, frame, resources, state, worklist
from ui.markup import plain

model = frame.render("Worklist")

files = st.file_uploader(
    f"Upload chest X-rays ({state.UPLOAD_FORMATS}), as many as you like",
    type=state.UPLOAD_TYPES,
    max_upload_size=state.IMAGE_UPLOAD_MB,
    accept_multiple_files=True,
    key="worklist_upload",
)
if not files:
    st.info("Upload images to build a worklist, sorted by probability of pneumonia.", icon=":material/upload:")
    st.stop()

if state.note_uploads():
    st.rerun()  # once per session: the menu's links must carry the new upload mark
# Scored once per set of uploads; later reruns of this session reuse the table.
upload_ids = tuple(file.file_id for file in files)
if st.session_state.get("worklist_ids") != upload_ids:
    bar = st.progress(0.0, text="Reading images...")
    scored = worklist.score_files(
        [(file.name, file.getvalue()) for file in files],
        model,
        progress=lambda done, total: bar.progress(done / total, text=f"Scored {done} of {total} images"),
        decode_slot=resources.decode_slot,
    )
    bar.empty()
    st.session_state["worklist"] = scored
    st.session_state["worklist_ids"] = upload_ids
scored = st.session_state["worklist"]
table = scored.table
audit.record_worklist(list(scored.records))

flagged = table[table["ood"].eq(True)]
show_flagged = False
if len(flagged):
    st.error(
        f"{len(flagged)} image(s) do not look like frontal chest X-rays; the model's output on them is not "
        "meaningful, so their calls are hidden: " + ", ".join(f"**{plain(name)}**" for name in flagged["file"]),
        icon=":material/block:",
    )
    show_flagged = st.checkbox("Show the model's output for them anyway", key="worklist_show_ood")
    if show_flagged:
        for record in scored.records:
            if record.ood:
                audit.note_reveal(audit.recorded_id(record))
shown = worklist.masked(table, show_flagged)
numbers = worklist.counts(shown)

metrics = st.columns([1, 1, 1, 1, 1.2], vertical_alignment="center")
metrics[0].metric("Scored", numbers["scored"])
metrics[1].metric("Called pneumonia", numbers["pneumonia"])
metrics[2].metric("Indeterminate (grey zone)", numbers["grey_zone"])
metrics[3].metric("Unreadable", numbers["unreadable"])
metrics[4].download_button(
    "Download CSV",
    worklist.to_csv(shown, model.metadata.model_sha256),
    file_name="worklist.csv",
    mime="text/csv",
    on_click="ignore",
    icon=":material/download:",
    width="stretch",
)
errors = shown[shown["error"].notna()]
if len(errors):
    st.error(
        f"{len(errors)} file(s) could not be read; the others were scored.  \n"
        + "  \n".join(f"**{plain(row.file)}**: {plain(row.error)}" for row in errors.itertuples()),
        icon=":material/error:",
    )

st.dataframe(
    shown.fillna({"error": ""}),
    hide_index=True,
    column_order=["thumbnail", "file", "probability", "call", "grey_zone", "ood", "error"],
    column_config={
        "thumbnail": st.column_config.ImageColumn("image", width="small"),
        "file": st.column_config.TextColumn("file"),
        "probability": st.column_config.NumberColumn("probability", format="%.3f"),
        "call": st.column_config.TextColumn("call"),
        "grey_zone": st.column_config.CheckboxColumn("indeterminate", help="In the grey zone: needs a careful read"),
        "ood": st.column_config.CheckboxColumn("not X-ray-like", help="Flagged by the out-of-distribution check"),
        "error": st.column_config.TextColumn("error", width="large"),
    },
    row_height=60,
    height=560,
)
