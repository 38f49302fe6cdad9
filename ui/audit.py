"""The audit trail as the app uses it: a result is recorded once, when first shown in a session,
and reviewers' verdicts are recorded against it.

Only what ``pneumo_model.audit`` stores goes in: the image's SHA-256, never its name, pixels or
DICOM tags. A failure to record is shown to the user (a result that is not on the record must
not look as if it were), and the result itself is still shown.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pneumo_model.audit import VERDICTS, AuditError, AuditTrail, default_audit_path
from pneumo_model.prediction import Prediction

_RECORDED_KEY = "audit_recorded"
NOTE_HELP = "Do not type patient names, ids or dates: the note is stored as written."


@st.cache_resource(show_spinner=False)
def _open(path: str) -> AuditTrail:
    return AuditTrail(Path(path))


def trail() -> AuditTrail:
    """The audit trail at ``$PNEUMO_AUDIT_DB`` (default ``audit/audit.sqlite3``).

    Raises:
        AuditError: it cannot be opened.
    """
    return _open(str(default_audit_path().resolve()))


def _record_once(key: tuple, fields: dict) -> int | None:
    recorded = st.session_state.setdefault(_RECORDED_KEY, {})
    if key in recorded:
        return recorded[key]
    try:
        result_id = trail().record_result(source="app", **fields)
    except AuditError as error:
        st.error(f"This result was not recorded in the audit trail. {error}", icon=":material/database:")
        return None
    recorded[key] = result_id
    return result_id


def record_shown(image_sha256: str, prediction: Prediction, crop_box: tuple[int, ...] | None = None) -> int | None:
    """Records ``prediction`` unless this session already did; returns the record's id (None on failure)."""
    key = (image_sha256, prediction.model_sha, None if crop_box is None else tuple(int(v) for v in crop_box))
    return _record_once(
        key,
        dict(
            image_sha256=image_sha256,
            model_sha256=prediction.model_sha,
            threshold=prediction.threshold,
            probability=prediction.probability,
            label=prediction.label,
            grey_zone=prediction.grey_zone,
            ood=prediction.ood,
            ood_score=prediction.ood_score,
            crop_box=crop_box,
        ),
    )


def record_worklist(table, model_sha256: str, threshold: float) -> int:
    """Records every scored row of a worklist table (``ui.worklist.score_files``) not yet recorded
    in this session; returns how many rows are on the record."""
    recorded = 0
    for row in table[table["error"].isna()].itertuples():
        fields = dict(
            image_sha256=row.sha256,
            model_sha256=model_sha256,
            threshold=threshold,
            probability=float(row.probability),
            label=row.call,
            grey_zone=bool(row.grey_zone),
            ood=None if row.ood is None else bool(row.ood),
            ood_score=None if row.ood is None else float(row.ood_score),
        )
        if _record_once((row.sha256, model_sha256, None), fields) is not None:
            recorded += 1
    return recorded


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
        st.error(f"The verdict was not recorded. {error}", icon=":material/database:")
        return
    st.success(f"Verdict **{verdict}** recorded (record {verdict_id}, on result {result_id}).", icon=":material/task_alt:")
