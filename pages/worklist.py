"""Worklist: score many images at once, sorted by probability, with grey-zone, out-of-distribution
and error flags; filter and sort it, open a row on Review, Explain or Crop, and record a verdict."""

import streamlit as st

from ui import frame

model = frame.render("Worklist")  # first: the banner shows while the imports below load

from pneumo_model.errors import ConfigError  # noqa: E402
from pneumo_model import presentation  # noqa: E402
from pneumo_model.pacs import ENVIRONMENT  # noqa: E402
from ui import audit, call_view, drawing, pacs_source, resources, state, worklist  # noqa: E402
from ui.markup import plain  # noqa: E402

UPLOAD_KEY = "worklist_upload"
IDS_KEY, FILES_KEY, PAGE_KEY, OPENED_KEY = worklist.IDS_KEY, worklist.FILES_KEY, worklist.PAGE_KEY, worklist.OPENED_KEY
VIEW_KEY = "worklist_view"  # what the table showed when its selection was last set
TABLE_KEY = "worklist_table"
HAD_FILES_KEY = "worklist_had_files"
SOURCE_KEY = "worklist_source"
UPLOAD_SOURCE, PACS_SOURCE = "Upload files", "PACS"
INDETERMINATE_ROW = "background-color: #fdefc8"  # amber, as the indeterminate call on Review: read these carefully


def forget() -> None:
    for key in (worklist.SESSION_KEY, IDS_KEY, FILES_KEY, PAGE_KEY, OPENED_KEY, VIEW_KEY, pacs_source.RETRIEVED_KEY):
        st.session_state.pop(key, None)


def keep_scored(pairs, ids, retrieved: pacs_source.Retrieved | None = None) -> None:
    """Scores ``pairs`` (``(name, bytes)``) with a progress bar into this tab's worklist, in place of
    the last one; ``ids`` says which uploads or study it is, ``retrieved`` the PACS study it came from."""
    forget()
    # A reload while scoring loses these files (they are the session's): the reloaded tab says so.
    with state.stopped_by_reload(state.WORKLIST_STOPPED, drop=state.WORKLIST_KEYS):
        bar = st.progress(0.0, text="Reading images...")
        scored = worklist.score_files(
            pairs,
            model,
            progress=lambda done, total: bar.progress(done / total, text=f"Scored {done} of {total} images"),
            decode_slot=resources.decode_slot,
        )
        bar.empty()
        st.session_state.update({worklist.SESSION_KEY: scored, IDS_KEY: ids, FILES_KEY: pairs})
        if retrieved is not None:
            st.session_state[pacs_source.RETRIEVED_KEY] = retrieved


def first_page() -> None:
    st.session_state[PAGE_KEY] = 1


def turn_page(step: int) -> None:
    st.session_state[PAGE_KEY] = st.session_state.get(PAGE_KEY, 1) + step


# Streamlit forgets a widget's state when its page is left, so coming back finds the uploader
# empty; the scored worklist and its files stay in the session until replaced or cleared. An
# uploader that held files in the previous run of this page and holds none now was emptied by the user.
held_files = UPLOAD_KEY in st.session_state and st.session_state.get(HAD_FILES_KEY, False)
pacs, pacs_problem = None, None
try:
    pacs = pacs_source.settings()
except ConfigError as error:
    pacs_problem = error
source = UPLOAD_SOURCE
if pacs is not None or pacs_problem is not None:
    source = st.segmented_control(
        "Source", (UPLOAD_SOURCE, PACS_SOURCE), default=UPLOAD_SOURCE, key=SOURCE_KEY,
        help="Files from this computer, or a study from the hospital's PACS (DICOMweb)",
    ) or UPLOAD_SOURCE
files = None
if source == PACS_SOURCE:
    if pacs_problem is not None:
        st.error(f"The PACS settings cannot be used: {plain(pacs_problem)}", icon=":material/error:")
        st.stop()
    pacs_source.search_form(pacs)
    study = pacs_source.study_table(pacs)
    if study is not None and st.button(
        f"Retrieve and score this study ({study.images if study.images is not None else '?'} instances)",
        icon=":material/download:", type="primary", key="pacs_retrieve",
    ):
        retrieved = pacs_source.retrieve(pacs, study)
        if retrieved is not None:
            keep_scored(retrieved.files, ("pacs", study.study_uid, len(retrieved.files)), retrieved)
else:
    # Folded once it holds files or a worklist is kept: 30 uploads' chips pushed the table below the
    # first screen at 1366 x 768. Decided from the uploader's value at the start of the run (its
    # new files are already there), so the run that scores them draws it folded.
    holding = bool(st.session_state.get(UPLOAD_KEY)) or worklist.SESSION_KEY in st.session_state
    with st.expander(
        f"Upload chest X-rays ({state.UPLOAD_FORMATS}), as many as you like"
        + (": open to add or remove files, or to start another worklist" if holding else ""),
        expanded=not holding,
        icon=":material/upload:",
    ):
        files = st.file_uploader(
            f"Upload chest X-rays ({state.UPLOAD_FORMATS}), as many as you like",
            type=state.UPLOAD_TYPES,
            max_upload_size=state.IMAGE_UPLOAD_MB,
            accept_multiple_files=True,
            key=UPLOAD_KEY,
            label_visibility="collapsed",  # the box's title says it
        )
        if not files and pacs is None and pacs_problem is None:
            st.caption(f"No PACS is configured: an administrator sets {ENVIRONMENT['url']} (docs/pacs.md).")
if files:
    if state.note_uploads():
        st.rerun()  # once per session: the menu's links must carry the new upload mark
    upload_ids = tuple(file.file_id for file in files)
    if st.session_state.get(IDS_KEY) != upload_ids:  # scored once per set of uploads
        # The uploader's own bytes, not copies.
        keep_scored(tuple((file.name, file.getvalue()) for file in files), upload_ids)
elif held_files and source == UPLOAD_SOURCE:
    forget()
st.session_state[HAD_FILES_KEY] = bool(files)
scored = st.session_state.get(worklist.SESSION_KEY)
if scored is None:
    if source == PACS_SOURCE:
        st.info(
            "Select a study, then retrieve and score it to build a worklist, sorted by probability of pneumonia. "
            "Select a row to open that image on Review, Explain or Crop & rescore, or to record your verdict.",
            icon=":material/download:",
        )
    else:
        st.info(
            "Upload images to build a worklist, sorted by probability of pneumonia. Select a row to open that "
            "image on Review, Explain or Crop & rescore, or to record your verdict.",
            icon=":material/upload:",
        )
    st.stop()
pairs = st.session_state[FILES_KEY]
retrieved = st.session_state.get(pacs_source.RETRIEVED_KEY)
row_source = "upload" if retrieved is None else "pacs"  # what the sidebar and Review say the image is
if retrieved is not None:
    when = pacs_source.date_text(retrieved.study.study_date)
    st.caption(
        f"From the PACS: the study of {when or 'unknown date'}, accession {plain(retrieved.study.accession_number or '—')}, "
        f"{len(retrieved.files)} image(s) retrieved."
    )
    if pacs is not None and pacs_source.show_left_out(retrieved):
        again = pacs_source.retrieve(pacs, retrieved.study, only=tuple(i for i, _ in retrieved.failed))
        if again is not None:
            retrieved = pacs_source.merged(retrieved, again)
            keep_scored(retrieved.files, ("pacs", retrieved.study.study_uid, len(retrieved.files)), retrieved)
            st.rerun()
elif not files:
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

flagged = table[worklist.hidden_rows(table)]  # the gate's "outside" grade; an "unusual" film keeps its call
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
            if record.image_sha256 in set(flagged["sha256"]):
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

# The pattern's column needs about 90 px more at 1366 x 768: the panel beside gives some, the other
# columns the rest (a file name longer than its column ends in "…"; the panel shows it whole).
table_column, case_column = st.columns([14, 6] if model.subtype else [13, 7], gap="small")
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
    first = (page - 1) * worklist.ROWS_PER_PAGE
    # Above the table, in the left part of its column: the data grid's toolbar (search, full
    # screen...) appears on hover over the grid's top right corner, so this line is the room it
    # takes, and the filters above stay clear of it.
    summary, _ = st.columns([3, 1])
    summary.caption(
        f"Page {page} of {pages}: rows {first + 1 if len(view) else 0}–{first + len(view)} of {len(rows)}"
        + (f" (filtered from {len(shown)})" if len(rows) != len(shown) else "")
        + f", {order}."
    )
    event = st.dataframe(
        view.style.apply(lambda row: [INDETERMINATE_ROW if row.grey_zone is True else ""] * len(row), axis=1),
        hide_index=True,
        # The pattern's column only while the pattern is on: an empty column on every worklist would be noise.
        column_order=[
            "thumbnail", "file", "probability", "call", *(["subtype"] if model.subtype else []), "flags", "verdict"
        ],
        column_config={
            "thumbnail": st.column_config.ImageColumn("image", width=44),
            "file": st.column_config.TextColumn("file", width=155),
            "probability": st.column_config.NumberColumn("probability", format="%.3f", width=70),
            "call": st.column_config.TextColumn("call", width=76, help="hidden: the image does not look like a chest X-ray"),
            "subtype": st.column_config.TextColumn(
                "pattern", width=92, help="For films called pneumonia only: the radiographic pattern, bacterial-like, "
                "viral-like or undetermined. A pattern, not a cause: open the image on Review for what it is and is not. "
                "Empty for a normal call or a flagged image.",
            ),
            "flags": st.column_config.TextColumn(
                "flags", width=94, help="indeterminate: in the grey zone, needs a careful read; unusual: near the "
                "out-of-distribution check's cut, read with care (call shown); not X-ray-like: far outside it (call "
                "hidden); age over 5: the DICOM header's age is outside the trained population (1-5); unreadable: "
                "see the reason above",
            ),
            "verdict": st.column_config.TextColumn("verdict", width=60, help="Your verdict, recorded in this tab"),
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
            state.choose_bytes(*pairs[selected], row_source)
            st.rerun()  # the sidebar, drawn before the table, names the chosen image

    back, where, forward = st.columns([1, 2, 1], vertical_alignment="center")
    back.button("Previous", on_click=turn_page, args=(-1,), disabled=page == 1, icon=":material/chevron_left:",
                width="stretch", key="worklist_previous")
    where.caption(f"Page {page} of {pages}")
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
    image = state.ChosenImage(*pairs[selected], row_source)
    picture, words = st.columns([1, 2.2])  # the words' column wide enough for "Indeterminate:" on one line
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
    if not hidden and model.subtype is not None and isinstance(row.subtype, str):  # under both: the words column is narrow
        st.caption(
            f"Pattern: {row.subtype}, {presentation.PATTERN_PROBABILITY_LABEL} {row.subtype_probability:.3f}. "
            "A pattern, not a cause: open it on Review for what it is and is not."
        )
    st.caption("Open it on")
    targets = [page for page in frame.PAGES if page.title in ("Review", "Explain", "Crop & rescore")]
    for target, place in zip(targets, st.columns(len(targets))):
        if place.button(target.title.split(" ")[0], key=f"worklist_open_{target.title}", width="stretch"):
            state.choose_bytes(*pairs[selected], row_source)  # again: another image may have been chosen since
            st.switch_page(target.script, query_params=state.upload_mark())
    audit.verdict_form(
        audit.recorded_id(records[row.sha256]), f"worklist_verdict_{row.sha256[:16]}", call_shown=not hidden, page_follows=True
    )
    if retrieved is not None and pacs is not None and row.sha256 in retrieved.instances and not hidden:
        instance = retrieved.instances[row.sha256]
        st.caption(
            f"Study {instance.study_uid}  \nSeries {instance.series_uid}  \nSOP Instance {instance.sop_uid}"
        )
        pacs_source.send_button(pacs, instance, image, audit.recorded_id(records[row.sha256]))
