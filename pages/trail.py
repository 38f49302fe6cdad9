"""Audit trail: every result shown and every verdict recorded, newest first, in the reader's own
time zone, with filters, "find this image" and a CSV export. Signed in, a reader sees only their
own verdicts; an administrator sees the whole trail and may export it, and both are recorded."""

import streamlit as st

from ui import frame

model = frame.render("Audit trail")  # first: the banner shows while the imports below load

from pneumo_model import access as policy  # noqa: E402
from pneumo_model.audit import SOURCES, AuditError, AuditTrail, trail_csv  # noqa: E402
from pneumo_model.errors import PneumoError  # noqa: E402
from pneumo_model.paths import bytes_sha256  # noqa: E402
from ui import access, audit, drawing, resources, state, worklist  # noqa: E402
from ui.markup import plain  # noqa: E402

identity = access.current()
whole = access.sees_whole_trail()
# A widget's state lives only while its page is drawn, so its absence means the page was just
# opened (not rerun by a filter): that is when opening the whole trail is recorded.
just_opened = "trail_technical" not in st.session_state
try:
    with st.spinner("Reading the audit trail..."):
        rows = policy.visible_trail(audit.trail().trail(), identity)  # one read of the database per run of the page
        csv_text = trail_csv(rows)
except AuditError as error:
    st.error(f"The audit trail cannot be read. {plain(audit.screen_message(error))}", icon=":material/database:")
    st.stop()
if whole and just_opened:
    access.record_event("trail_opened", rows=len(rows))


def exported_csv(trail: AuditTrail, text: str, subject: str | None, count: int) -> bytes:
    """The CSV, made only when the button is clicked, and that export recorded first (run on
    another thread, where the script's context and ``st`` are not there). A failure to record
    fails the download: no export leaves unrecorded."""
    trail.record_event("trail_exported", subject=subject, rows=count)
    return text.encode("utf-8")


ROWS_PER_PAGE = 20
zone, zone_label = audit.reader_zone()
zone_words = f"your browser's time zone ({zone_label})" if zone_label else "UTC (your browser did not say its time zone)"


def turn_page(step: int) -> None:
    st.session_state["trail_page"] = st.session_state.get("trail_page", 1) + step


def held_thumbnails() -> dict[str, str]:
    """Pictures of the images this tab still holds (the chosen one, the worklist's), by SHA-256.
    Made from the session's bytes each time; the trail itself keeps no pixels."""
    held = {}
    scored = st.session_state.get(worklist.SESSION_KEY)
    if scored is not None:
        held |= {sha: url for sha, url in zip(scored.table["sha256"], scored.table["thumbnail"]) if url}
    image = state.chosen()
    if image is not None and image.digest not in held:
        try:
            held[image.digest] = worklist.thumbnail(resources.display_pixels(image))
        except PneumoError:
            pass  # an unreadable file has no picture; its records are still listed
    return held


st.caption(
    "Append-only record kept on the server: a result when it is first shown in a session, and each "
    "reviewer verdict. Images are identified by the SHA-256 of their bytes; no pixels, file names or "
    f"patient identifiers are stored (a picture appears only for an image this tab still holds). "
    f"Times are in {zone_words}, to the minute."
)
if not whole:
    st.caption(
        f"**Your own verdicts** ({plain(identity.name)}, reader) and the results they are on; the whole trail and "
        "its export are for administrators."
    )
columns = st.columns([1, 1, 1, 1.3], vertical_alignment="center")
if whole:
    subject = identity.subject if identity else None
    columns[3].download_button(
        "Download CSV",
        lambda: exported_csv(audit.trail(), csv_text, subject, len(rows)),
        file_name="audit_trail.csv",
        mime="text/csv",
        on_click="ignore",
        icon=":material/download:",
        width="stretch",
        disabled=not rows,
    )
if not rows:
    for column, label in zip(columns, ("Results recorded", "Verdicts recorded", "Disagreements")):
        column.metric(label, 0)
    if whole:
        st.info("Nothing recorded yet. Results are recorded when they are shown on the other pages.", icon=":material/history:")
    else:
        st.info("You have recorded no verdicts yet. Record one under a call on Review or the worklist.", icon=":material/history:")
    st.stop()

find_column, filter_column = st.columns([2, 3], gap="medium")
with find_column:
    found = st.file_uploader(
        "Find this image: drop it here to see its records",
        type=state.UPLOAD_TYPES,
        max_upload_size=state.IMAGE_UPLOAD_MB,
        key="trail_find",
        help="Matched by the SHA-256 of the file's bytes, which is all the trail keeps: the same film "
        "saved again or converted is another file and is not found.",
    )
with filter_column:
    when, verdict, who, source = st.columns([1.5, 1, 1, 0.8])
    days = when.date_input("Dates", value=(), format="YYYY-MM-DD", key="trail_days", help=f"In {zone_words}")
    verdicts = verdict.multiselect("Verdict", audit.VERDICT_CHOICES, key="trail_verdicts", placeholder="any")
    reviewers = who.multiselect(
        "Reviewer", sorted({row["reviewer"] for row in rows if row["reviewer"]}), key="trail_reviewers", placeholder="any"
    )
    sources = source.multiselect("Source", SOURCES, key="trail_sources", placeholder="any")
    technical = st.toggle(
        "Technical columns",
        key="trail_technical",
        help="Record ids, model, operating point, threshold, OOD score, crop box, and when the result was shown, "
        "judged and revealed",
    )

digest, found_picture = None, {}
if found is not None:
    data = found.getvalue()
    digest = bytes_sha256(data)
    matches = sum(row["image_sha256"] == digest for row in rows)
    picture, words = st.columns([1, 5], vertical_alignment="center")
    try:
        with st.spinner("Reading the image..."):
            pixels = resources.display_pixels(state.ChosenImage(found.name, data, "upload"))
        drawing.show(pixels, width=96, where=picture)
        found_picture = {digest: worklist.thumbnail(pixels)}
    except PneumoError as error:
        picture.caption("No picture: " + plain(error))
    if matches:
        words.success(
            f"**{plain(found.name)}**: {matches} record(s) of this image (SHA-256 `{digest[:12]}…`), shown below; "
            "the other filters apply too.",
            icon=":material/image_search:",
        )
    else:
        words.info(
            f"No record of **{plain(found.name)}** (SHA-256 `{digest[:12]}…`). The trail knows an image only by "
            "the SHA-256 of its exact bytes: a copy saved again, converted or cropped elsewhere is another file.",
            icon=":material/image_search:",
        )

with st.spinner("Preparing the trail for the screen..."):
    table, counts = audit.trail_table(rows, zone, held_thumbnails() | found_picture, audit.gate_grader(model))
columns[0].metric("Results recorded", counts["results"])
columns[1].metric("Verdicts recorded", counts["verdicts"])
columns[2].metric("Disagreements", counts["disagreements"])
selected = audit.trail_selected(table, days, verdicts, reviewers, sources, digest)
# Pages of rows, each drawn whole: the table never scrolls inside the scrolling page. A filter
# starts again at the first page.
filters = (days, tuple(verdicts), tuple(reviewers), tuple(sources), digest)
if st.session_state.get("trail_filters") != filters:
    st.session_state.update(trail_filters=filters, trail_page=1)
shown, page, pages = worklist.page_of(selected, st.session_state.get("trail_page", 1), ROWS_PER_PAGE)
st.session_state["trail_page"] = page
reader = [
    "time", "thumbnail", "label", "probability", "flags", "verdict", "note", "reviewer", "source", "image",
]
extra = [
    "result_id", "shown", "verdict_time", "revealed", "model", "point", "threshold", "ood_score", "crop_box", "reviewer_subject",
]
zone_title = zone_label or "UTC"
st.dataframe(
    shown,
    hide_index=True,
    column_order=reader + extra if technical else reader,
    column_config={
        "time": st.column_config.TextColumn(
            f"time ({zone_title})", width=140, help="The verdict's time; for a result without one, when it was shown"
        ),
        "thumbnail": st.column_config.ImageColumn(
            "image", width=50, help="Only for an image this tab still holds; the trail keeps no pixels"
        ),
        "label": st.column_config.TextColumn("call", width=78),
        "probability": st.column_config.NumberColumn("probability", format="%.3f", width=72),
        "flags": st.column_config.TextColumn("flags", width=100),
        "verdict": st.column_config.TextColumn("verdict", width=68),
        "note": st.column_config.TextColumn("note", width=150),
        "reviewer": st.column_config.TextColumn("reviewer", width=90),
        "source": st.column_config.TextColumn("source", width=55),
        "image": st.column_config.TextColumn(
            "SHA-256", width=95, help="First 12 hex digits of the image's SHA-256; the CSV has all 64"
        ),
        "result_id": st.column_config.NumberColumn("result", format="%d"),
        "shown": st.column_config.TextColumn(f"shown ({zone_title})"),
        "verdict_time": st.column_config.TextColumn(f"verdict ({zone_title})"),
        "revealed": st.column_config.TextColumn(
            f"hidden call shown ({zone_title})", help="When a user first asked to see a call the out-of-distribution check hid"
        ),
        "model": st.column_config.TextColumn("model", help="First 12 hex digits of the model's SHA-256"),
        "point": st.column_config.TextColumn(
            "operating point",
            help="First 8 hex digits of the id of the operating point that made the call; the CSV has all 16. "
            "Empty for records made before the trail kept it",
        ),
        "threshold": st.column_config.NumberColumn("threshold", format="%.3f"),
        "ood_score": st.column_config.NumberColumn("OOD score", format="%.2f"),
        "crop_box": st.column_config.TextColumn("crop box"),
        "reviewer_subject": st.column_config.TextColumn(
            "reviewer's subject id", help="The signed-in reviewer's id at the identity provider; empty in local mode"
        ),
    },
    placeholder="—",
    row_height=42,
    height=38 + 42 * max(1, len(shown)),
)
back, where, forward = st.columns([1, 4, 1], vertical_alignment="center")
back.button("Previous", on_click=turn_page, args=(-1,), disabled=page == 1, icon=":material/chevron_left:",
            width="stretch", key="trail_previous")
first = (page - 1) * ROWS_PER_PAGE
where.caption(
    f"Page {page} of {pages}: rows {first + 1 if len(shown) else 0}–{first + len(shown)} of {len(selected)}"
    + (f" (filtered from {len(table)})" if len(selected) != len(table) else "")
    + ", newest first."
)
forward.button("Next", on_click=turn_page, args=(1,), disabled=page == pages, icon=":material/chevron_right:",
               width="stretch", key="trail_next")
