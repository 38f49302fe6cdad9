"""Worklist: score many images at once, sorted by probability, with grey-zone and error flags."""

import streamlit as st

from ui import audit, resources, state, worklist

model = resources.predictor()

files = st.file_uploader(
    f"Upload chest X-rays ({state.UPLOAD_FORMATS}), as many as you like",
    type=state.UPLOAD_TYPES,
    accept_multiple_files=True,
    key="worklist_upload",
)
if not files:
    st.info("Upload images to build a worklist, sorted by probability of pneumonia.", icon=":material/upload:")
    st.stop()

# Scored once per set of uploads; later reruns of this session reuse the table.
upload_ids = tuple(file.file_id for file in files)
if st.session_state.get("worklist_ids") != upload_ids:
    bar = st.progress(0.0, text="Reading images...")
    table = worklist.score_files(
        [(file.name, file.getvalue()) for file in files],
        model,
        progress=lambda done, total: bar.progress(done / total, text=f"Read {done} of {total} images"),
    )
    bar.empty()
    st.session_state["worklist_table"] = table
    st.session_state["worklist_ids"] = upload_ids
table = st.session_state["worklist_table"]
audit.record_worklist(table, model.metadata.model_sha256, model.metadata.threshold)

errors = table[table["error"].notna()]
scored = table[table["error"].isna()]
counts = st.columns([1, 1, 1, 1, 1.2], vertical_alignment="center")
counts[0].metric("Scored", len(scored))
counts[1].metric("Called pneumonia", int(((scored["call"] == "pneumonia") & ~scored["ood"].eq(True)).sum()))
counts[2].metric("Indeterminate (grey zone)", int(scored["grey_zone"].astype(bool).sum()))
counts[3].metric("Unreadable", len(errors))
counts[4].download_button(
    "Download CSV",
    worklist.to_csv(table, model.metadata.model_sha256),
    file_name="worklist.csv",
    mime="text/csv",
    on_click="ignore",
    icon=":material/download:",
    width="stretch",
)
flagged = scored[scored["ood"].eq(True)]
show_flagged = False
if len(flagged):
    st.error(
        f"{len(flagged)} image(s) do not look like frontal chest X-rays; the model's output on them is not "
        "meaningful, so their calls are hidden: " + ", ".join(f"**{name}**" for name in flagged["file"]),
        icon=":material/block:",
    )
    show_flagged = st.checkbox("Show the model's output for them anyway", key="worklist_show_ood")
if len(errors):
    st.error(
        f"{len(errors)} file(s) could not be read; the others were scored.  \n"
        + "  \n".join(f"**{row.file}**: {row.error}" for row in errors.itertuples()),
        icon=":material/error:",
    )

shown = table.astype({"grey_zone": object, "call": object})
if not show_flagged:
    hidden = shown["ood"].eq(True)
    shown.loc[hidden, "probability"] = float("nan")
    shown.loc[hidden, "call"] = "hidden: not like a chest X-ray"
    shown.loc[hidden, "grey_zone"] = None
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
