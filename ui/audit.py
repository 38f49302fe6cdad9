"""The audit trail as the app uses it: a result is recorded once, when first shown in a session,
and reviewers' verdicts are recorded against it.

Only what ``pneumo_model.audit`` stores goes in: the image's SHA-256, never its name, pixels or
DICOM tags. A failure to record is shown to the user (a result that is not on the record must
not look as if it were), and the result itself is still shown.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st

from pneumo_model.paths import REPO_ROOT
from pneumo_model.audit import TRAIL_COLUMNS, VERDICTS, AuditError, AuditTrail, ResultRecord
from pneumo_model.prediction import Prediction

from .markup import plain

AUDIT_DB_ENV = "PNEUMO_AUDIT_DB"
DEFAULT_AUDIT_DB = REPO_ROOT / "audit" / "audit.sqlite3"
# A busy database makes a page wait at most this long before saying the record failed.
BUSY_TIMEOUT_S = 5.0
NOTE_HELP = "Do not type patient names, ids or dates: the note is stored as written."
_RECORDED_KEY = "audit_recorded"
_REVEALED_KEY = "audit_revealed"


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


def _not_recorded(error: AuditError, what: str = "This result was") -> None:
    st.error(f"{what} not recorded in the audit trail. {plain(error)}", icon=":material/database:")


def _key(record: ResultRecord) -> tuple:
    """What makes a result new in a session: the same image under another operating point is
    another call, and is recorded again."""
    return record.image_sha256, record.model_sha256, record.operating_point, record.crop_box


def record_shown(image_sha256: str, prediction: Prediction, crop_box: tuple[int, ...] | None = None) -> int | None:
    """Records ``prediction`` unless this session already did; returns the record's id (None on failure)."""
    record = ResultRecord.of(prediction, image_sha256, "app", crop_box)
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


def verdict_form(result_id: int | None, form_key: str) -> None:
    """A reviewer's verdict on the shown result, appended to the trail on submit."""
    if result_id is None:
        return
    with st.form(form_key, clear_on_submit=True, border=True):
        st.markdown("**Your verdict** (recorded in the audit trail)")
        verdict = st.radio(
            "Verdict", VERDICTS, horizontal=True, index=None, label_visibility="collapsed", key=f"{form_key}_verdict"
        )
        note = st.text_area("Note (optional)", max_chars=2000, help=NOTE_HELP, height=80, key=f"{form_key}_note")
        reviewer = st.text_input("Reviewer (optional)", max_chars=100, key=f"{form_key}_reviewer")
        if not st.form_submit_button("Record verdict", icon=":material/how_to_reg:", key=f"{form_key}_submit"):
            return
    if verdict is None:
        st.warning("Choose agree, disagree or unsure before recording.", icon=":material/rule:")
        return
    try:
        verdict_id = trail().record_verdict(result_id, verdict, note=note, reviewer=reviewer)
    except AuditError as error:
        _not_recorded(error, "The verdict was")
        return
    st.success(f"Verdict **{verdict}** recorded (record {verdict_id}, on result {result_id}).", icon=":material/task_alt:")


def trail_table(rows: list[dict]) -> tuple[pd.DataFrame, dict[str, int]]:
    """The trail for the screen, newest result first (with short SHAs and operating point ids, empty
    for the records made before the trail kept it), and its counts."""
    table = pd.DataFrame(rows, columns=TRAIL_COLUMNS)
    counts = {
        "results": int(table["result_id"].nunique()),
        "verdicts": int(table["verdict_id"].notna().sum()),
        "disagreements": int((table["verdict"] == "disagree").sum()),
    }
    shown = table.sort_values(["result_id", "verdict_id"], ascending=False, na_position="last")
    shown = shown.assign(
        image=shown["image_sha256"].str[:12],
        model=shown["model_sha256"].str[:12],
        point=shown["operating_point"].fillna("").str[:8],
    )
    return shown, counts
