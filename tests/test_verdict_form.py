"""The verdict form with AppTest: a refused press keeps everything typed and says what is missing
next to its field; a second verdict on a film this tab already judged is asked about first; a
press whose submission id is spent (the second click of a double click) records nothing; and
what was typed for one film is never offered on another.

The real browser's side of the same (typing, a real double click) is in
``tests/test_review_browser.py``.
"""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from pneumo_model.audit import AuditTrail
from pneumo_model.paths import REPO_ROOT
from ui import audit

pytestmark = pytest.mark.shipped_model

APP = REPO_ROOT / "app.py"
TIMEOUT = 180
SAMPLE = "IM-0003-0001.jpeg"
OTHER_SAMPLE = "IM-0001-0001.jpeg"
FORM = "review_verdict"


def reviewed(name: str = SAMPLE) -> AppTest:
    """Review with a demo image chosen."""
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    app.button(key=f"sample-{name}").click().run()
    assert not app.exception, app.exception
    return app


def type_note_and_name(app: AppTest, note: str = "left base hazy, compare with last week", name: str = "Dr Vance") -> None:
    app.text_area(key=f"{FORM}_note").input(note)
    app.text_input(key=f"{FORM}_reviewer").input(name)


def press(app: AppTest) -> AppTest:
    app.button(key=audit.submit_key(FORM, app.session_state)).click().run()
    assert not app.exception, app.exception
    return app


def verdicts(audit_db) -> list[dict]:
    return [row for row in AuditTrail(audit_db).trail() if row["verdict_id"] is not None]


def texts(elements) -> str:
    return "\n".join(str(element.value) for element in elements)


def test_a_press_without_a_choice_keeps_the_note_and_the_name_and_asks_for_the_choice(audit_db):
    app = reviewed()
    type_note_and_name(app)
    press(app)
    assert verdicts(audit_db) == []
    assert app.text_area(key=f"{FORM}_note").value == "left base hazy, compare with last week"
    assert app.text_input(key=f"{FORM}_reviewer").value == "Dr Vance"
    assert app.radio(key=f"{FORM}_verdict").value is None
    (refusal,) = [w for w in app.warning if "Choose agree, disagree or unsure" in w.value]
    assert "your note and name are kept" in refusal.value
    # Next to the missing field: inside the form, the element right after the choice.
    inside = _form_children(app)
    after_choice = inside[[getattr(child, "key", None) for child in inside].index(f"{FORM}_verdict") + 1]
    assert "Choose agree, disagree or unsure" in str(after_choice.value)

    app.radio(key=f"{FORM}_verdict").set_value("disagree")
    press(app)
    (row,) = verdicts(audit_db)
    assert (row["verdict"], row["note"], row["reviewer"]) == ("disagree", "left base hazy, compare with last week", "Dr Vance")
    assert "Verdict **disagree** recorded" in texts(app.success)
    assert not [w for w in app.warning if "Choose agree" in w.value]
    # Recorded: the choice and the note are emptied for the next verdict, the reader's name stays.
    assert app.radio(key=f"{FORM}_verdict").value is None
    assert app.text_area(key=f"{FORM}_note").value == ""
    assert app.text_input(key=f"{FORM}_reviewer").value == "Dr Vance"


def _form_children(app: AppTest):
    """The elements inside the verdict form, in order."""
    (form,) = [block for block in _blocks(app.main) if getattr(block, "type", None) == "form"]
    return [child for child in form.children.values()]


def _blocks(node):
    for child in getattr(node, "children", {}).values():
        yield child
        yield from _blocks(child)


def test_a_second_verdict_on_the_same_film_is_asked_about_and_needs_the_box(audit_db):
    app = reviewed()
    app.radio(key=f"{FORM}_verdict").set_value("agree")
    press(app)
    (first,) = verdicts(audit_db)

    app.radio(key=f"{FORM}_verdict").set_value("disagree")
    app.text_area(key=f"{FORM}_note").input("on second look, the right base")
    press(app)
    assert len(verdicts(audit_db)) == 1  # asked, not written
    (question,) = [w for w in app.warning if "Record another verdict?" in w.value]
    assert "You recorded **'agree'** on this image at " in question.value
    assert f"(record {first['verdict_id']})" in question.value
    # What was typed for the second verdict is still there, and pressing again without the box asks again.
    assert app.radio(key=f"{FORM}_verdict").value == "disagree"
    assert app.text_area(key=f"{FORM}_note").value == "on second look, the right base"
    press(app)
    assert len(verdicts(audit_db)) == 1

    (box,) = [c for c in app.checkbox if c.label == "Yes, record a second verdict on this image"]
    box.check()
    press(app)
    rows = verdicts(audit_db)
    assert [row["verdict"] for row in rows] == ["agree", "disagree"]
    assert rows[1]["note"] == "on second look, the right base" and rows[1]["result_id"] == rows[0]["result_id"]
    assert "Another verdict **disagree** recorded" in texts(app.success)
    assert not [c for c in app.checkbox if c.label == "Yes, record a second verdict on this image"]

    # A third press is asked about again, the box drawn afresh, unticked.
    app.radio(key=f"{FORM}_verdict").set_value("unsure")
    press(app)
    assert len(verdicts(audit_db)) == 2
    (question,) = [w for w in app.warning if "Record another verdict?" in w.value]
    assert "'disagree'" in question.value
    (box,) = [c for c in app.checkbox if c.label == "Yes, record a second verdict on this image"]
    assert box.value is False


def test_a_spent_submission_records_nothing_and_says_already_recorded(audit_db):
    """The second click of a double click (or a resend) may reach the server under the first
    click's submission id: the trail's unique index finds it written, no second row is written,
    and the reader is told it was already recorded, with the record's number."""
    app = reviewed()
    app.radio(key=f"{FORM}_verdict").set_value("agree")
    spent = app.session_state[f"{FORM}_submission"]
    press(app)
    assert len(verdicts(audit_db)) == 1
    assert app.session_state[f"{FORM}_submission"] != spent
    # The same press again, under the first id, with the same choice and even the box ticked.
    app.session_state[f"{FORM}_submission"] = spent
    app.session_state[f"{FORM}_submission_again_{spent}"] = True
    app.run()
    app.radio(key=f"{FORM}_verdict").set_value("agree")
    press(app)
    assert len(verdicts(audit_db)) == 1
    # The submission this form settled last, sent again: the same confirmation, said to be one record.
    assert "Verdict **agree** recorded (record 1, on result 1). Pressed again: already recorded, still one record." in texts(app.success)


def test_what_was_typed_for_one_film_is_kept_for_it_and_never_offered_on_another(audit_db):
    app = reviewed()
    type_note_and_name(app, note="typed for the first film")
    press(app)  # refused: no choice; the note is now the form's
    app.button(key=f"sample-{OTHER_SAMPLE}").click().run()
    assert app.text_area(key=f"{FORM}_note").value == ""  # never recorded against the other film
    assert app.text_input(key=f"{FORM}_reviewer").value == "Dr Vance"
    assert not [w for w in app.warning if "Choose agree" in w.value]
    app.button(key=f"sample-{SAMPLE}").click().run()
    assert app.text_area(key=f"{FORM}_note").value == "typed for the first film"  # back with its film
    assert verdicts(audit_db) == []


def test_a_verdict_on_another_film_is_not_asked_about(audit_db):
    app = reviewed()
    app.radio(key=f"{FORM}_verdict").set_value("agree")
    press(app)
    app.button(key=f"sample-{OTHER_SAMPLE}").click().run()
    app.radio(key=f"{FORM}_verdict").set_value("agree")
    press(app)
    assert [row["verdict"] for row in verdicts(audit_db)] == ["agree", "agree"]
    assert not [w for w in app.warning if "Record another verdict?" in w.value]


def test_a_verdict_whose_answer_was_lost_shows_as_recorded_when_the_tab_opens_the_film_again(audit_db):
    """A restart between the write and the confirmation: the tab's URL still names the form's
    submission, and a new session (nothing of the old one left) finds the verdict in the trail."""
    app = reviewed()
    submission = app.session_state[f"{FORM}_submission"]
    assert app.query_params["verdict"] == submission  # the tab's URL names the form on screen
    # The write happened (as if by the press whose answer never came back), nothing else did.
    (result_id,) = {row["result_id"] for row in AuditTrail(audit_db).trail()}
    AuditTrail(audit_db).record_verdict_once(submission, result_id, "disagree", note="lost answer")

    fresh = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    fresh.query_params["verdict"] = submission
    fresh.run()
    fresh.button(key=f"sample-{SAMPLE}").click().run()
    assert not fresh.exception, fresh.exception
    (said,) = [s for s in fresh.success if "before this tab lost its connection" in s.value]
    assert "Your verdict **disagree** on this image was recorded at" in said.value and "(record 1)" in said.value
    # A verdict now is a second one on this film, asked about first, as for any verdict of this tab.
    fresh.radio(key=f"{FORM}_verdict").set_value("agree")
    press(fresh)
    assert len(verdicts(audit_db)) == 1
    assert "Record another verdict?" in texts(fresh.warning)


def test_a_press_on_the_form_just_emptied_by_a_verdict_is_the_double_clicks_second_click(audit_db):
    app = reviewed()
    app.radio(key=f"{FORM}_verdict").set_value("unsure")
    press(app)
    press(app)  # at once, on the emptied form
    assert len(verdicts(audit_db)) == 1
    assert "Verdict **unsure** recorded (record 1, on result 1)." in texts(app.success)
    assert "Choose agree, disagree or unsure" not in texts(app.warning)


def test_a_submission_the_trail_already_holds_is_one_row_and_said_already_recorded(audit_db):
    """A resend after a lost answer: the trail wrote the form's submission (the first send), the
    tab never heard; the press sends it again and is told so, with the record's number."""
    app = reviewed()
    submission = app.session_state[f"{FORM}_submission"]
    (result_id,) = {row["result_id"] for row in AuditTrail(audit_db).trail()}
    first = AuditTrail(audit_db).record_verdict_once(submission, result_id, "agree")
    app.radio(key=f"{FORM}_verdict").set_value("agree")
    press(app)
    assert len(verdicts(audit_db)) == 1
    assert (
        f"Already recorded: verdict **agree** (record {first.verdict_id}, on result {result_id}); sent again, it is "
        "still one record."
    ) in texts(app.success)
    assert app.radio(key=f"{FORM}_verdict").value is None  # settled: the form is empty for the next film
