"""The audit trail as the app uses it: a result is recorded once, when first shown in a session,
and reviewers' verdicts are recorded against it.

Only what ``pneumo_model.audit`` stores goes in: the image's SHA-256, never its name, pixels or
DICOM tags. A failure to record is shown to the user (a result that is not on the record must
not look as if it were), and the result itself is still shown.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
import streamlit as st

from pneumo_model.paths import REPO_ROOT
from pneumo_model.audit import TRAIL_COLUMNS, VERDICTS, AuditError, AuditTrail, ResultRecord
from pneumo_model.ood import OUTSIDE, UNUSUAL, single_cut_grade

from .markup import plain

if TYPE_CHECKING:  # not at import: the frame imports this module before the model's libraries load
    from pneumo_model.prediction import Prediction, Predictor

AUDIT_DB_ENV = "PNEUMO_AUDIT_DB"
DEFAULT_AUDIT_DB = REPO_ROOT / "audit" / "audit.sqlite3"
# A busy database makes a page wait at most this long before saying the record failed.
BUSY_TIMEOUT_S = 5.0
NOTE_HELP = "Do not type patient names, ids or dates: the note is stored as written."
_RECORDED_KEY = "audit_recorded"
_REVEALED_KEY = "audit_revealed"
_VERDICTS_KEY = "audit_verdicts"
# What the screen says instead of the database's location: a server path tells a reader nothing
# and tells anyone else where the records are. The server log keeps the whole message.
SERVER_FILE = "on the server"
_log = logging.getLogger(__name__)


def audit_path() -> Path:
    """``$PNEUMO_AUDIT_DB`` if set, else ``audit/audit.sqlite3`` in the repository."""
    return Path(os.environ.get(AUDIT_DB_ENV) or DEFAULT_AUDIT_DB).resolve()


@st.cache_resource(show_spinner=False)
def _open(path: str) -> AuditTrail:
    return AuditTrail(Path(path), busy_timeout_s=BUSY_TIMEOUT_S)


def trail() -> AuditTrail:
    """The app's audit trail (``audit_path``).

    Raises:
        AuditError: it cannot be opened.
    """
    return _open(str(audit_path()))


def screen_message(error: AuditError) -> str:
    """The error's words for the screen, with the audit file's location replaced by "on the server"
    (the whole message goes to the server log, for an administrator)."""
    _log.warning("Audit trail: %s", error)
    path = audit_path()
    return str(error).replace(str(path), SERVER_FILE).replace(str(path.parent), SERVER_FILE)


def _not_recorded(error: AuditError, what: str = "This result was") -> None:
    st.error(f"{what} not recorded in the audit trail. {plain(screen_message(error))}", icon=":material/database:")


def _key(record: ResultRecord) -> tuple:
    """What makes a result new in a session: the same image under another operating point is
    another call, and is recorded again."""
    return record.image_sha256, record.model_sha256, record.operating_point, record.crop_box, record.markers_masked


def record_shown(
    image_sha256: str, prediction: Prediction, crop_box: tuple[int, ...] | None = None, markers_masked: bool = False
) -> int | None:
    """Records ``prediction`` unless this session already did; returns the record's id (None on failure)."""
    record = ResultRecord.of(prediction, image_sha256, "app", crop_box, markers_masked)
    key = _key(record)
    recorded = st.session_state.setdefault(_RECORDED_KEY, {})
    if key not in recorded:
        try:
            (recorded[key],) = trail().record_results([record])
        except AuditError as error:
            _not_recorded(error)
            return None
    return recorded[key]


def record_worklist(records: list[ResultRecord]) -> None:
    """Records the worklist's results not yet recorded in this session, in one transaction."""
    recorded = st.session_state.setdefault(_RECORDED_KEY, {})
    new = {_key(record): record for record in records if _key(record) not in recorded}
    if not new:
        return
    try:
        ids = trail().record_results(list(new.values()))
    except AuditError as error:
        _not_recorded(error, f"{len(new)} worklist result(s) were")
        return
    recorded.update(zip(new, ids))


def note_reveal(result_id: int | None) -> None:
    """Records, once per session, that the user asked to see a call the out-of-distribution gate hid."""
    if result_id is None:
        return
    revealed = st.session_state.setdefault(_REVEALED_KEY, set())
    if result_id in revealed:
        return
    try:
        trail().record_reveal(result_id)
    except AuditError as error:
        _not_recorded(error, "Showing this hidden call was")
        return
    revealed.add(result_id)


def recorded_id(record: ResultRecord) -> int | None:
    """The id this session recorded for ``record``'s result, or None."""
    return st.session_state.get(_RECORDED_KEY, {}).get(_key(record))


def session_verdicts() -> dict[int, str]:
    """The latest verdict recorded in this tab on each result id (what the worklist marks as done)."""
    return dict(st.session_state.get(_VERDICTS_KEY, {}))


def _signed_in():
    """The signed-in user (``ui.access.current``), None in local mode. Imported here: ``ui.access``
    itself reads the trail through this module."""
    from . import access

    return access.current()


def verdict_form(result_id: int | None, form_key: str, call_shown: bool = True) -> None:
    """A reviewer's verdict on the shown result, appended to the trail on submit.

    Offered only for a call on screen: with ``call_shown`` False (the out-of-distribution gate
    hides it) there is nothing to agree or disagree with, and no form is drawn. The verdict is
    recorded by the submit button's callback, before the page runs again, so everything the page
    draws (the worklist's verdict column) already knows it; what happened is said under the form.
    Signed in, the verdict carries the user's identity and there is no name to type; in local
    mode the reviewer's name is typed, as it is optional.
    """
    if result_id is None or not call_shown:
        return
    identity = _signed_in()
    with st.form(form_key, clear_on_submit=True, border=True):
        st.markdown("**Your verdict** (recorded in the audit trail)")
        st.radio("Verdict", VERDICTS, horizontal=True, index=None, label_visibility="collapsed", key=f"{form_key}_verdict")
        st.text_area("Note (optional)", max_chars=2000, help=NOTE_HELP, height=80, key=f"{form_key}_note")
        if identity is None:
            st.text_input("Reviewer (optional)", max_chars=100, key=f"{form_key}_reviewer")
        else:
            st.caption(f"Recorded as **{plain(identity.name)}**, signed in.")
        st.form_submit_button(
            "Record verdict", icon=":material/how_to_reg:", key=f"{form_key}_submit", on_click=_record_verdict,
            args=(result_id, form_key),
        )
    outcome = st.session_state.pop(f"{form_key}_outcome", None)
    if outcome is not None:
        kind, message, icon = outcome
        getattr(st, kind)(message, icon=icon)


def _record_verdict(result_id: int, form_key: str) -> None:
    verdict = st.session_state.get(f"{form_key}_verdict")
    outcome_key = f"{form_key}_outcome"
    if verdict is None:
        st.session_state[outcome_key] = ("warning", "Choose agree, disagree or unsure before recording.", ":material/rule:")
        return
    identity = _signed_in()
    try:
        verdict_id = trail().record_verdict(
            result_id,
            verdict,
            note=st.session_state.get(f"{form_key}_note") or "",
            reviewer=identity.name if identity else st.session_state.get(f"{form_key}_reviewer") or "",
            reviewer_subject=identity.subject if identity else None,
        )
    except AuditError as error:
        message = f"The verdict was not recorded in the audit trail. {plain(screen_message(error))}"
        st.session_state[outcome_key] = ("error", message, ":material/database:")
        return
    st.session_state.setdefault(_VERDICTS_KEY, {})[result_id] = verdict
    st.session_state[outcome_key] = (
        "success", f"Verdict **{verdict}** recorded (record {verdict_id}, on result {result_id}).", ":material/task_alt:"
    )


# ----------------------------------------------------------------------------- the trail for a reader
NO_VERDICT = "no verdict"
VERDICT_CHOICES = (*VERDICTS, NO_VERDICT)
MINUTE = "%Y-%m-%d %H:%M"


def reader_zone() -> tuple[dt.tzinfo, str | None]:
    """The reader's time zone, as their browser reports it (``st.context``): the named zone (its
    summer and winter offsets both right), else the browser's current offset from UTC.

    Returns:
        ``(zone, label)``: ``label`` names the zone for column headers ("Europe/Berlin",
        "UTC+05:30"); None when the browser said nothing, and ``zone`` is then UTC.
    """
    name = st.context.timezone
    if name:
        try:
            return ZoneInfo(name), name
        except (ZoneInfoNotFoundError, ValueError):
            pass  # a zone this server's tz database lacks: the offset below is still the browser's
    offset = st.context.timezone_offset  # minutes behind UTC, as JavaScript's getTimezoneOffset
    if offset is None:
        return dt.timezone.utc, None
    zone = dt.timezone(-dt.timedelta(minutes=int(offset)))
    return zone, "UTC" if offset == 0 else zone.tzname(None)


def _moment(text: str | None) -> pd.Timestamp:
    return pd.Timestamp(dt.datetime.fromisoformat(text)) if isinstance(text, str) else pd.NaT


def _minute(moment: pd.Timestamp, zone: dt.tzinfo) -> str | None:
    return None if pd.isna(moment) else moment.to_pydatetime().astimezone(zone).strftime(MINUTE)


def gate_grader(model: Predictor) -> Callable[[str, float | None], str | None]:
    """How the trail reads a stored gate score: ``(model SHA-256, ood_score) -> grade``. The trail keeps
    the score, not the grade; a result of the model in use is graded with its gate's cut-offs
    (docs/ood_grades.md), one of another model with the single cut at 1 it was flagged by."""

    def grade(model_sha256: str, score: float | None) -> str | None:
        if score is None or pd.isna(score):
            return None
        if model.gate is not None and model_sha256 == model.metadata.model_sha256:
            return model.gate.grade(float(score))
        return single_cut_grade(float(score))

    return grade


def trail_table(
    rows: list[dict],
    zone: dt.tzinfo = dt.timezone.utc,
    thumbnails: Mapping[str, str] | None = None,
    grader: Callable[[str, float | None], str | None] | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The trail for the screen, newest first, and its counts.

    One row per result and verdict (a result without a verdict once), as ``AuditTrail.trail``
    gives them. A row's ``time`` is its latest record, in ``zone`` to the minute: the verdict's
    when it has one, else when the result was first shown; rows are ordered by it, newest first.

    Args:
        rows: ``AuditTrail.trail()``.
        zone: the reader's time zone (``reader_zone``).
        thumbnails: data URLs of pictures of images this session still holds, keyed by SHA-256;
            a row of another image has no picture (the trail keeps no pixels).
        grader: reads a row's stored gate score as a grade (``gate_grader``); None: the single cut at 1.

    Returns:
        The table, with the trail's columns and, for the screen: ``time``, ``day`` (its local
        date, for the date filter), ``shown``, ``verdict_time`` and ``revealed`` (local
        minutes), ``image``, ``model`` (first 12 hex digits), ``point`` (first 8; empty for
        records made before the trail kept it), ``flags`` (indeterminate, the gate's
        grade as "unusual: read with care" or "not X-ray-like", cropped, markers painted out,
        hidden call shown) and ``thumbnail``; and the counts of results, verdicts and
        disagreements in the whole trail.
    """
    table = pd.DataFrame(rows, columns=TRAIL_COLUMNS)
    counts = {
        "results": int(table["result_id"].nunique()),
        "verdicts": int(table["verdict_id"].notna().sum()),
        "disagreements": int((table["verdict"] == "disagree").sum()),
    }
    shown_at = table["recorded_utc"].map(_moment)
    verdict_at = table["verdict_utc"].map(_moment)
    moment = verdict_at.where(verdict_at.notna(), shown_at)
    grade = grader or (lambda model_sha256, score: None if score is None or pd.isna(score) else single_cut_grade(score))
    grades = pd.Series([grade(sha, score) for sha, score in zip(table["model_sha256"], table["ood_score"])], index=table.index, dtype=object)
    words = {
        "indeterminate": table["grey_zone"].eq(1),
        "unusual: read with care": grades.eq(UNUSUAL),
        "not X-ray-like": grades.eq(OUTSIDE) | (grades.isna() & table["ood"].eq(1)),
        "cropped": table["crop_box"].notna(),
        "markers painted out": table["markers_masked"].eq(1),
        "hidden call shown": table["revealed_utc"].notna(),
    }
    flags = [", ".join(word for word, has in words.items() if has.iloc[index]) for index in range(len(table))]
    thumbnails = thumbnails or {}
    table = table.assign(
        _moment=moment,
        time=[_minute(value, zone) for value in moment],
        day=[None if pd.isna(value) else value.to_pydatetime().astimezone(zone).date() for value in moment],
        shown=[_minute(value, zone) for value in shown_at],
        verdict_time=[_minute(value, zone) for value in verdict_at],
        revealed=[_minute(_moment(value), zone) for value in table["revealed_utc"]],
        image=table["image_sha256"].str[:12],
        model=table["model_sha256"].str[:12],
        point=table["operating_point"].fillna("").str[:8],
        flags=flags,
        thumbnail=[thumbnails.get(sha) for sha in table["image_sha256"]],
    )
    table = table.sort_values(["_moment", "result_id", "verdict_id"], ascending=False, na_position="last", kind="stable")
    return table.drop(columns="_moment").reset_index(drop=True), counts


def trail_selected(
    table: pd.DataFrame,
    days: Sequence[dt.date] = (),
    verdicts: Sequence[str] = (),
    reviewers: Sequence[str] = (),
    sources: Sequence[str] = (),
    image_sha256: str | None = None,
) -> pd.DataFrame:
    """The rows of ``trail_table`` a reader asked for; every empty filter keeps every row.

    Args:
        days: one day, or the first and last day (inclusive), in the reader's zone.
        verdicts: some of ``VERDICT_CHOICES`` ("no verdict": a result nobody judged).
        reviewers: reviewer names as recorded.
        sources: "app", "cli".
        image_sha256: only the records of the image with this SHA-256.
    """
    keep = pd.Series(True, index=table.index)
    if days:
        first, last = days[0], days[-1]
        keep &= table["day"].map(lambda day: day is not None and first <= day <= last)
    if verdicts:
        keep &= table["verdict"].isin(list(verdicts)) | (table["verdict"].isna() & (NO_VERDICT in verdicts))
    if reviewers:
        keep &= table["reviewer"].isin(list(reviewers))
    if sources:
        keep &= table["source"].isin(list(sources))
    if image_sha256 is not None:
        keep &= table["image_sha256"] == image_sha256
    return table[keep].reset_index(drop=True)
