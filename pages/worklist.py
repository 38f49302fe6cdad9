"""Worklist: score many images at once, sorted by probability, with grey-zone, out-of-distribution
and error flags; filter and sort it, open a row on Review, Explain or Crop, and record a verdict."""

import streamlit as st

from ui import audit, call_view, drawing, frame, resources, state, worklist
from ui.markup import plain

UPLOAD_KEY = "worklist_upload"
IDS_KEY = "worklist_ids"
FILES_KEY = "worklist_files"  # (name, bytes) of each file scored: the worklist outlives the uploader's state
PAGE_KEY = "worklist_page"
OPENED_KEY = "worklist_opened"  # the ``upload`` position of the row opened last
VIEW_KEY = "worklist_view"  # what the table showed when its selection was last set
TABLE_KEY = "worklist_table"
HAD_FILES_KEY = "worklist_had_files"
INDETERMINATE_ROW = "background-color: #fdefc8"  # amber, as the indeterminate call on Review: read these carefully

model = frame.render("Worklist")


def forget() -> None:
    for key in (worklist.SESSION_KEY, IDS_KEY, FILES_KEY, PAGE_KEY, OPENED_KEY, VIEW_KEY):
        st.session_state.pop(key, None)


def first_page() -> None:
    st.session_state[PAGE_KEY] = 1


def turn_page(step: int) -> None:
    st.session_state[PAGE_KEY] = st.session_state.get(PAGE_KEY, 1) + step


# Streamlit forgets a widget's state when its page is left, so coming back finds the uploader
# empty; the scored worklist and its files stay in the session until replaced or cleared. An
# uploader that held files in the previous run of this page and holds none now was emptied by the user.
held_files = UPLOAD_KEY in st.session_state and st.session_state.get(HAD_FILES_KEY, False)
files = st.file_uploader(
    f"Upload chest X-rays ({state.UPLOAD_FORMATS}), as many as you like",
    type=state.UPLOAD_TYPES,
    max_upload_size=state.IMAGE_UPLOAD_MB,
    accept_multiple_files=True,
    key=UPLOAD_KEY,
)
if files:
    if state.note_uploads():
        st.rerun()  # once per session: the menu's links must carry the new upload mark
    upload_ids = tuple(file.file_id for file in files)
    if st.session_state.get(IDS_KEY) != upload_ids:  # scored once per set of uploads
        forget()
        pairs = tuple((file.name, file.getvalue()) for file in files)  # the uploader's own bytes, not copies
        bar = st.progress(0.0, text="Reading images...")
        scored = worklist.score_files(
            pairs,
            model,
            progress=lambda done, total: bar.progress(done / total, text=f"Scored {done} of {total} images"),
            decode_slot=resources.decode_slot,
        )
        bar.empty()
        st.session_state.update({worklist.SESSION_KEY: scored, IDS_KEY: upload_ids, FILES_KEY: pairs})
elif held_files:
    forget()
st.session_state[HAD_FILES_KEY] = bool(files)
scored = st.session_state.get(worklist.SESSION_KEY)
if scored is None:
    st.info(
        "Upload images to build a worklist, sorted by probability of pneumonia. Select a row to open that "
        "image on Review, Explain or Crop & rescore, or to record your verdict.",
        icon=":material/upload:",
    )
    st.stop()
pairs = st.session_state[FILES_KEY]
if not files:
    kept, clear = st.columns([5, 1], vertical_alignment="center")
    kept.info(
        f"This worklist of {len(pairs)} file(s) is kept while this tab is open (the upload box empties when you "
        "leave the page). Upload files to start another.",
        icon=":material/playlist_add_check:",
    )
    clear.button("Clear worklist", on_click=forget, icon=":material/delete:", width="stretch")

table = scored.table
audit.record_worklist(list(scored.records))
records = {record.image_sha256: record for record in scored.records}

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

verdicts = audit.session_verdicts()
done = {sha: verdicts[audit.recorded_id(record)] for sha, record in records.items() if audit.recorded_id(record) in verdicts}
call_filter, flag_filter, order_choice = st.columns([1, 1.6, 1], vertical_alignment="bottom")
calls = call_filter.segmented_control(
    "Call", worklist.CALLS, selection_mode="multi", key="worklist_calls", on_change=first_page,
    help="Hidden calls are neither",
)
flags = flag_filter.pills(
    "Flags (rows with any of them)", worklist.FLAGS, selection_mode="multi", key="worklist_flags", on_change=first_page
)
order = order_choice.selectbox("Order", list(worklist.ORDERS), key="worklist_order", on_change=first_page)
rows = worklist.selected(worklist.for_screen(shown, done), calls, flags, order)
view, page, pages = worklist.page_of(rows, st.session_state.get(PAGE_KEY, 1))
st.session_state[PAGE_KEY] = page

table_column, case_column = st.columns([13, 7], gap="small")
with table_column:
    positions = [int(position) for position in view["upload"]]
    opened = st.session_state.get(OPENED_KEY)
    signature = (st.session_state[IDS_KEY], show_flagged, tuple(calls), tuple(flags), order, page)
    # The table's selection is a row number on screen: when the rows change (a filter, the order, a
    # page, a return to this page), it is set again to the row opened last, wherever it now is.
    if TABLE_KEY not in st.session_state or st.session_state.get(VIEW_KEY) != signature:
        st.session_state[TABLE_KEY] = {
            "selection": {"rows": [positions.index(opened)] if opened in positions else [], "columns": []}
        }
        st.session_state[VIEW_KEY] = signature
    event = st.dataframe(
        view.style.apply(lambda row: [INDETERMINATE_ROW if row.grey_zone is True else ""] * len(row), axis=1),
        hide_index=True,
        column_order=["thumbnail", "file", "probability", "call", "flags", "verdict"],
        column_config={
            "thumbnail": st.column_config.ImageColumn("image", width=44),
            "file": st.column_config.TextColumn("file", width=185),
            "probability": st.column_config.NumberColumn("probability", format="%.3f", width=72),
            "call": st.column_config.TextColumn("call", width=78, help="hidden: the image does not look like a chest X-ray"),
            "flags": st.column_config.TextColumn(
                "flags", width=100, help="indeterminate: in the grey zone, needs a careful read; not X-ray-like: "
                "flagged by the out-of-distribution check; unreadable: see the reason above",
            ),
            "verdict": st.column_config.TextColumn("verdict", width=62, help="Your verdict, recorded in this tab"),
        },
        key=TABLE_KEY,
        on_select="rerun",
        selection_mode="single-row",
        placeholder="—",
        row_height=50,
        height=38 + 50 * max(1, len(view)),  # every row of the page: no scrolling inside the page
    )
    chosen_rows = [row for row in event.selection.rows if row < len(view)]
    selected = positions[chosen_rows[0]] if chosen_rows else None
    if selected is None and opened in positions:
        st.session_state[OPENED_KEY] = None  # the user unticked it
    elif selected is not None and selected != opened:
        st.session_state[OPENED_KEY] = selected
        if not isinstance(view.iloc[chosen_rows[0]]["error"], str):
            state.choose_bytes(*pairs[selected])
            st.rerun()  # the sidebar, drawn before the table, names the chosen image

    back, where, forward = st.columns([1, 2, 1], vertical_alignment="center")
    back.button("Previous", on_click=turn_page, args=(-1,), disabled=page == 1, icon=":material/chevron_left:",
                width="stretch", key="worklist_previous")
    first = (page - 1) * worklist.ROWS_PER_PAGE
    where.caption(
        f"Page {page} of {pages}: rows {first + 1 if len(view) else 0}–{first + len(view)} of {len(rows)}"
        + (f" (filtered from {len(shown)})" if len(rows) != len(shown) else "")
        + f", {order}."
    )
    forward.button("Next", on_click=turn_page, args=(1,), disabled=page == pages, icon=":material/chevron_right:",
                   width="stretch", key="worklist_next")

with case_column:
    if selected is None:
        st.info("Select a row (the box at its left) to open that image and record your verdict.", icon=":material/touch_app:")
        st.stop()
    row = view.iloc[chosen_rows[0]]
    st.markdown(f"**{plain(row.file)}**")
    if isinstance(row.error, str):
        st.error(f"This file could not be read, so it cannot be opened. {plain(row.error)}", icon=":material/error:")
        st.stop()
    image = state.ChosenImage(*pairs[selected], "upload")
    picture, words = st.columns([1, 1.3])
    with st.spinner("Reading the image..."):
        pixels = frame.computed(lambda: resources.display_pixels(image), row.file)
    drawing.show(pixels, width=120, where=picture)
    hidden = row.call == worklist.HIDDEN_ON_SCREEN
    with words:
        if hidden:
            st.warning(
                "Its call is hidden: it does not look like a frontal chest X-ray. Tick \"Show the model's output for "
                "them anyway\" above to see it and to record a verdict.",
                icon=":material/block:",
            )
        else:
            st.markdown(f"Call: **{call_view.call_word(row.call) if row.call in call_view.CALLS else row.call}**  \nProbability {row.probability:.3f}")
            low, high = model.grey_zone.low, model.grey_zone.high
            if row.grey_zone:
                st.warning(f"**Indeterminate: needs a careful read** (grey zone [{low:.3f}, {high:.3f}))", icon=":material/help:")
            else:
                st.caption(f"Outside the grey zone [{low:.3f}, {high:.3f}).")
    st.caption("Open it on")
    targets = [page for page in frame.PAGES if page.title in ("Review", "Explain", "Crop & rescore")]
    for target, place in zip(targets, st.columns(len(targets))):
        if place.button(target.title.split(" ")[0], key=f"worklist_open_{target.title}", width="stretch"):
            state.choose_bytes(*pairs[selected])  # again: another image may have been chosen since
            st.switch_page(target.script, query_params=state.upload_mark())
    audit.verdict_form(audit.recorded_id(records[row.sha256]), f"worklist_verdict_{row.sha256[:16]}", call_shown=not hidden)
