"""The audit trail as the app uses it: a result is recorded once, when first shown in a session,
and reviewers' verdicts are recorded against it.

Only what ``pneumo_model.audit`` stores goes in: the image's SHA-256, never its name, pixels or
DICOM tags. A failure to record is shown to the user (a result that is not on the record must
not look as if it were), and the result itself is still shown.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import streamlit as st

from pneumo_model.audit import TRAIL_COLUMNS, VERDICTS, AuditError, ResultRecord, VerdictWrite
from pneumo_model.ood import OUTSIDE, UNUSUAL, single_cut_grade

from . import access
from .markup import plain
from .trail import (  # noqa: F401 (re-exported: pages and tests reach the trail as ``audit.trail()``)
    AUDIT_DB_ENV, BUSY_TIMEOUT_S, DEFAULT_AUDIT_DB, SERVER_FILE, audit_path, screen_message, trail,
)

if TYPE_CHECKING:  # not at import: the frame imports this module before the model's libraries load
    import pandas as pd  # the trail's tables only: half a second of a cold server's way to its first call

    from pneumo_model.prediction import Prediction, Predictor

NOTE_HELP = "Do not type patient names, ids or dates: the note is stored as written."
_RECORDED_KEY = "audit_recorded"
_REVEALED_KEY = "audit_revealed"
_VERDICTS_KEY = "audit_verdicts"
_VERDICT_LOG_KEY = "audit_verdict_log"
_log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class TabVerdict:
    """A verdict this tab recorded, as the form recalls it before a second one on the same film.

    Attributes:
        verdict_id: its record in the trail.
        result_id: the result it is on.
        image_sha256: the SHA-256 of the judged image (None where this tab did not record the result).
        verdict: agree, disagree or unsure.
        at: when it was recorded, in the reader's time zone (``reader_zone``).
    """

    verdict_id: int
    result_id: int
    image_sha256: str | None
    verdict: str
    at: dt.datetime


def _image_of(result_id: int) -> str | None:
    """The SHA-256 of the image whose result this tab recorded as ``result_id`` (None if it did not)."""
    for key, recorded in st.session_state.get(_RECORDED_KEY, {}).items():
        if recorded == result_id:
            return key[0]
    return None


def earlier_verdict(result_id: int) -> TabVerdict | None:
    """The latest verdict this tab recorded on the film of ``result_id``, or None.

    A reader judges a film, not a database row: the same image scored under another operating
    point (another result id) was already judged too, so verdicts are matched on the image's
    SHA-256, and on the result id only where this tab does not know the image.
    """
    image = _image_of(result_id)
    for earlier in reversed(st.session_state.get(_VERDICT_LOG_KEY, [])):
        if earlier.result_id == result_id or (image is not None and earlier.image_sha256 == image):
            return earlier
    return None


def second_verdict_question(earlier: TabVerdict, result_id: int) -> str:
    """"You recorded 'agree' on this image at 10:42 (record 17). Record another verdict?" """
    on = "" if earlier.result_id == result_id else f", on the call made under another operating point (result {earlier.result_id})"
    return (
        f"You recorded **'{earlier.verdict}'** on this image at {earlier.at:%H:%M} (record {earlier.verdict_id}{on}). "
        "Record another verdict? The first one stays in the audit trail either way: tick the box below and press "
        "**Record verdict** again."
    )


def _signed_in():
    """The signed-in user (``ui.access.current``), None in local mode."""
    return access.current()


class _Keys:
    """The session-state keys of one verdict form (``form_key`` makes them this form's)."""

    def __init__(self, form_key: str) -> None:
        self.verdict = f"{form_key}_verdict"
        self.note = f"{form_key}_note"
        self.reviewer = f"{form_key}_reviewer"
        self.outcome = f"{form_key}_outcome"  # (kind, message, icon, where): "choice" under the radio, else under the form
        self.asked = f"{form_key}_asked"  # the result id a second verdict was asked about
        self.submission = f"{form_key}_submission"  # the id of the drawn form, which the trail writes once
        self.pending = f"{form_key}_pending"  # a submission id sent to the trail whose answer was not seen yet
        self.page_stale = f"{form_key}_page_stale"  # a verdict the rest of the page does not show yet
        self.settled_at = f"{form_key}_settled_at"  # time.monotonic() of the last verdict settled
        self.last_settled = f"{form_key}_last_settled"  # (submission id, outcome) of the last verdict settled
        self.result = f"{form_key}_result"  # the result id the fields were typed for
        self.drafts = f"{form_key}_drafts"  # {result id: (choice, note)} typed on another result and not recorded

    def submit_of(self, submission: str) -> str:
        """The key of the drawing's "Record verdict" button: it names the submission it sends."""
        return f"{self.submission}_press_{submission}"

    def again(self, submission: str) -> str:
        """The confirmation box's key: new with every submission id, so it is always drawn unticked."""
        return f"{self.submission}_again_{submission}"


def _follow_result(keys: _Keys, result_id: int) -> None:
    """Gives the form the fields typed for ``result_id``: a form that now judges another result
    (Review shows another image) keeps what was typed for the last one as a draft, and never offers
    it for this one, where it would be recorded against the wrong film."""
    state = st.session_state
    previous = state.get(keys.result)
    if previous == result_id:
        return
    drafts = state.setdefault(keys.drafts, {})
    if previous is not None:
        typed = (state.get(keys.verdict), state.get(keys.note) or "")
        if typed != (None, ""):
            drafts[previous] = typed
    state[keys.verdict], state[keys.note] = drafts.pop(result_id, (None, ""))
    for key in (keys.outcome, keys.asked):
        state.pop(key, None)
    state[keys.result] = result_id


# The tab's URL carries the id of the verdict form on screen (``?verdict=...``): the one thing of a
# tab that outlives its server. A verdict written just before a restart, whose answer never reached
# the tab, is found by it in the trail the next time the tab draws a verdict form.
SUBMISSION_PARAM = "verdict"
# A press on an empty form this soon after a verdict emptied it is that press's second click.
DOUBLE_CLICK_S = 2.0
_RECOVERED_KEY = "audit_recovered"  # {image SHA-256: TabVerdict} found in the trail by the URL's id
_RECOVERY_DONE_KEY = "audit_recovery_done"


def verdict_form(result_id: int | None, form_key: str, call_shown: bool = True, page_follows: bool = False) -> None:
    """A reviewer's verdict on the shown result, appended to the trail on submit.

    Offered only for a call on screen: with ``call_shown`` False (the out-of-distribution gate
    hides it) there is nothing to agree or disagree with, and no form is drawn. Signed in, the
    verdict carries the user's identity and there is no name to type; in local mode the
    reviewer's name is typed, as it is optional.

    The form is a fragment: a press reruns the form alone, so the confirmation, which names the
    record, comes as soon as the row is written, however busy the page around it. With
    ``page_follows`` (the worklist, whose table marks the verdicts given) the page is run again
    after the confirmation is on screen.

    Nothing typed is lost: a refused press keeps the choice, the note and the name, and says what
    is missing next to its field; a recorded verdict empties the choice and the note and keeps the
    name. A second verdict on a film this tab already judged is allowed (a reader may change their
    mind, and the trail is append-only) but deliberate: the first press says when the earlier
    one was recorded and asks, and only a press with the confirmation box ticked records it.

    Exactly once: every drawing of the form has a submission id, which the trail stores under a
    unique index (``AuditTrail.record_verdict_once``). A press sent twice (a double click, a resend)
    writes one row and is told "already recorded (record N)"; a press whose answer was lost (the run
    ended, the server restarted) is found in the trail by its id the next time the form is drawn.
    """
    if result_id is None or not call_shown:
        return
    _recover_from_url()
    _form_fragment(result_id, form_key, page_follows)


@st.fragment
def _form_fragment(result_id: int, form_key: str, page_follows: bool) -> None:
    keys = _Keys(form_key)
    _follow_result(keys, result_id)
    _settle(keys)
    pressed = _pressed(keys)
    if pressed is not None:
        _press(result_id, keys, pressed)  # before the widgets are drawn: a written verdict empties them now
    submission = st.session_state.setdefault(keys.submission, uuid.uuid4().hex)
    if st.query_params.get(SUBMISSION_PARAM) != submission:
        st.query_params[SUBMISSION_PARAM] = submission
    outcome = st.session_state.get(keys.outcome)
    identity = _signed_in()
    recovered = _recovered_on(result_id)
    if recovered is not None and outcome is None:
        st.success(
            f"Your verdict **{recovered.verdict}** on this image was recorded at {recovered.at:%H:%M} (record "
            f"{recovered.verdict_id}) before this tab lost its connection to the server: it is in the audit trail.",
            icon=":material/task_alt:",
        )
    with st.form(form_key, clear_on_submit=False, border=True):
        st.markdown("**Your verdict** (recorded in the audit trail)")
        st.radio("Verdict", VERDICTS, horizontal=True, index=None, label_visibility="collapsed", key=keys.verdict)
        if outcome is not None and outcome[3] == "choice":
            _say(outcome)
        st.text_area("Note (optional)", max_chars=2000, help=NOTE_HELP, height=80, key=keys.note)
        if identity is None:
            st.text_input("Reviewer (optional)", max_chars=100, key=keys.reviewer)
        else:
            st.caption(f"Recorded as **{plain(identity.name)}**, signed in.")
        earlier = earlier_verdict(result_id) if st.session_state.get(keys.asked) == result_id else None
        if earlier is not None:
            st.warning(second_verdict_question(earlier, result_id), icon=":material/history:")
            st.checkbox("Yes, record a second verdict on this image", key=keys.again(submission))
        st.form_submit_button("Record verdict", icon=":material/how_to_reg:", key=keys.submit_of(submission))
    if outcome is not None and outcome[3] != "choice":
        _say(outcome)
    if st.session_state.pop(keys.page_stale, False) and page_follows:
        st.rerun()  # the confirmation is on screen: now the rest of the page (the worklist's table)


def _pressed(keys: _Keys) -> str | None:
    """The submission id of the "Record verdict" button pressed for this run, or None.

    The button's key carries the submission id of the drawing it belongs to, so a press names its
    submission itself: the second click of a double click that reaches the server after its first
    click's verdict was written presses the old drawing's button (or one Streamlit no longer
    knows, which does nothing), never the new drawing's, and is told "Already recorded".
    """
    prefix = keys.submit_of("")
    for key in list(st.session_state.keys()):
        if isinstance(key, str) and key.startswith(prefix) and st.session_state[key] is True:
            return key[len(prefix):]
    return None


def submit_key(form_key: str, state) -> str:
    """The key of the "Record verdict" button that the form ``form_key`` is drawn with now (a test
    presses it through ``AppTest``)."""
    keys = _Keys(form_key)
    return keys.submit_of(state[keys.submission])


def _say(outcome: tuple[str, str, str, str]) -> None:
    kind, message, icon, _ = outcome
    getattr(st, kind)(message, icon=icon)


def _press(result_id: int, keys: _Keys, submission: str) -> None:
    """A press of "Record verdict" for the drawing ``submission``, handled in the form's run before
    its widgets are drawn: refuses it, asks before a second verdict, or sends the verdict to the
    trail under the submission id and settles the form (``_settle``), which is then drawn as it
    now is. One run of the form, no second one.

    Handled in the form's run, not in a callback: when a second press arrives (a double click),
    Streamlit ends a running callback at its next session-state access and does not call it
    again, so a press could be lost; a run that is ended leaves the next run its own press, with the
    same submission id, and the trail's unique index makes the two one row.
    """
    state = st.session_state
    if submission != state.get(keys.submission):
        # The button of an earlier drawing (a double click's second click): the trail says whether
        # that submission was written; a resend is never a new row.
        state[keys.pending] = submission
        _settle(keys)
        return
    verdict = state.get(keys.verdict)
    earlier = earlier_verdict(result_id)
    if verdict is None and time.monotonic() - state.get(keys.settled_at, -DOUBLE_CLICK_S) < DOUBLE_CLICK_S:
        return  # the second click of a double click, on the form its first click emptied: it is recorded
    if verdict is None:
        state[keys.outcome] = ("warning", "Choose agree, disagree or unsure before recording: your note and name are kept.", ":material/rule:", "choice")
    elif earlier is not None and not state.get(keys.again(submission)):
        state[keys.asked] = result_id
        state.pop(keys.outcome, None)  # the question says it all
    else:
        identity = _signed_in()
        state[keys.pending] = submission  # before the write: a run ended after it still finds the row
        try:
            written = trail().record_verdict_once(
                submission, result_id, verdict,
                note=state.get(keys.note) or "",
                reviewer=identity.name if identity else state.get(keys.reviewer) or "",
                reviewer_subject=identity.subject if identity else None,
            )
        except AuditError as error:
            state.pop(keys.pending, None)
            message = f"The verdict was not recorded in the audit trail; what you typed is kept. {plain(screen_message(error))}"
            state[keys.outcome] = ("error", message, ":material/database:", "form")
            return
        _settle(keys, written)


def _note_written(written: TabVerdict) -> None:
    """Notes a written verdict in this tab (its log and the worklist's column); safe to repeat."""
    log = st.session_state.setdefault(_VERDICT_LOG_KEY, [])
    if all(earlier.verdict_id != written.verdict_id for earlier in log):
        log.append(written)
    st.session_state.setdefault(_VERDICTS_KEY, {})[written.result_id] = written.verdict


def _tab_verdict(written: VerdictWrite) -> TabVerdict:
    moment = dt.datetime.fromisoformat(written.recorded_utc).astimezone(reader_zone()[0])
    return TabVerdict(written.verdict_id, written.result_id, written.image_sha256, written.verdict, moment)


def _settle(keys: _Keys, written: VerdictWrite | None = None) -> None:
    """What a submission sent to the trail leaves on the form, before its widgets are drawn: the
    choice and the note emptied (the name stays: the same reader reads the next film), the
    question gone, what happened said ("recorded", or "already recorded" for a submission the
    trail had written before), and a new submission id (last: a run ended before it does all this
    again). ``written`` is what this run's write returned; without it the trail is asked, so a
    press whose run ended after the write is settled too."""
    state = st.session_state
    pending = state.get(keys.pending)
    if pending is None:
        return
    try:
        if written is None:
            written = trail().verdict_of_submission(pending)
    except AuditError as error:
        state[keys.outcome] = ("error", f"Whether the verdict was recorded cannot be read now. {plain(screen_message(error))}", ":material/database:", "form")
        return
    if written is None:  # the run ended before the write: nothing was recorded, the fields are as typed
        state.pop(keys.pending, None)
        return
    settled = state.get(keys.last_settled)
    if settled is not None and settled[0] == pending:
        # The submission this form settled last, pressed again (a double click's second click, which
        # carries the choice and the note as they were before the first emptied them): the same
        # confirmation, said to be one record, and the fields emptied again.
        kind, message, icon, where = settled[1]
        state[keys.outcome] = (kind, f"{message} Pressed again: already recorded, still one record.", icon, where)
        state[keys.verdict], state[keys.note] = None, ""
        state.pop(keys.asked, None)
        state.pop(keys.pending, None)
        return
    tab_verdict = _tab_verdict(written)
    others = [
        earlier for earlier in state.get(_VERDICT_LOG_KEY, [])
        if earlier.verdict_id != written.verdict_id
        and (earlier.result_id == written.result_id or earlier.image_sha256 == written.image_sha256)
    ]
    _note_written(tab_verdict)
    where = f"(record {written.verdict_id}, on result {written.result_id})"
    if written.new:
        message = f"{'Another verdict' if others else 'Verdict'} **{written.verdict}** recorded {where}."
    else:  # this submission reached the trail before (a resend after a lost answer): still one record
        message = f"Already recorded: verdict **{written.verdict}** {where}; sent again, it is still one record."
    state[keys.outcome] = ("success", message, ":material/task_alt:", "form")
    if pending == state.get(keys.submission):
        state[keys.verdict], state[keys.note] = None, ""
        state.pop(keys.asked, None)
        state[keys.page_stale] = True
        state[keys.settled_at] = time.monotonic()
        state[keys.last_settled] = (pending, state[keys.outcome])
        state[keys.submission] = uuid.uuid4().hex
    state.pop(keys.pending, None)


def _recover_from_url() -> None:
    """Once per session: the verdict of the submission id in the tab's URL, if the trail has it and
    this session does not know it (its answer was lost to a restart or a reload)."""
    state = st.session_state
    if state.get(_RECOVERY_DONE_KEY):
        return
    state[_RECOVERY_DONE_KEY] = True
    submission = st.query_params.get(SUBMISSION_PARAM)
    if not submission or not 8 <= len(submission) <= 64:
        return
    try:
        written = trail().verdict_of_submission(submission)
    except AuditError:
        return  # the form itself says when the trail cannot be used
    if written is None or any(earlier.verdict_id == written.verdict_id for earlier in state.get(_VERDICT_LOG_KEY, [])):
        return
    tab_verdict = _tab_verdict(written)
    _note_written(tab_verdict)
    state.setdefault(_RECOVERED_KEY, {})[written.image_sha256] = tab_verdict


def _recovered_on(result_id: int) -> TabVerdict | None:
    """The recovered verdict (``_recover_from_url``) on the film of ``result_id``, said once."""
    recovered = st.session_state.get(_RECOVERED_KEY, {})
    image = _image_of(result_id)
    return recovered.pop(image, None) if image is not None else None


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
    import pandas as pd

    return pd.Timestamp(dt.datetime.fromisoformat(text)) if isinstance(text, str) else pd.NaT


def _minute(moment: pd.Timestamp, zone: dt.tzinfo) -> str | None:
    import pandas as pd

    return None if pd.isna(moment) else moment.to_pydatetime().astimezone(zone).strftime(MINUTE)


def gate_grader(model: Predictor) -> Callable[[str, float | None], str | None]:
    """How the trail reads a stored gate score: ``(model SHA-256, ood_score) -> grade``. The trail keeps
    the score, not the grade; a result of the model in use is graded with its gate's cut-offs
    (docs/ood_grades.md), one of another model with the single cut at 1 it was flagged by."""

    def grade(model_sha256: str, score: float | None) -> str | None:
        import pandas as pd

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
    import pandas as pd

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
    import pandas as pd

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
