"""A reload keeps the tab's work, run headless with AppTest: a new session presenting the tab's mark
gets its chosen image and worklist back (and records nothing twice), a second tab presenting it
while its owner is connected gets nothing but a plain note, a stopped LIME run is said, and the
demo buttons carry the data set's label in words that cannot be read as the model's call.

AppTest has no Streamlit runtime: every AppTest run has the same session id and no session is
"connected", so a new AppTest with the mark is a reload; a second tab is made by giving it its own
session id and a connected owner (``state._session_id``, ``state._session_alive``). The real
browser does both for real in ``test_reload_browser.py``."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from test_app import APP, TIMEOUT, open_page, pick_sample, sample_bytes, shows, start, texts, trail_rows
from test_worklist_page import BORDERLINE, CLEAR_NORMAL, CLEAR_PNEUMONIA, on_screen, select, worklist_app
from ui import audit, state, tab_store, worklist

pytestmark = pytest.mark.shipped_model

NAMES = (CLEAR_PNEUMONIA, BORDERLINE, CLEAR_NORMAL)


def reloaded(app: AppTest, page: str | None = None) -> AppTest:
    """A new session on the same URL: the tab's mark in the query, as a reload sends it."""
    mark = app.session_state[state._MARK_KEY]
    fresh = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    fresh.query_params[state.UPLOADS_PARAM] = mark
    fresh.run()
    assert not fresh.exception, fresh.exception
    if page is not None:
        open_page(fresh, page)
    return fresh


def sidebar_text(app: AppTest) -> str:
    return texts(app.sidebar.caption)


def test_a_reloaded_worklist_comes_back_with_its_rows_and_opened_image_and_records_nothing_twice(audit_db):
    app = select(worklist_app(), BORDERLINE)
    rows = on_screen(app)
    recorded = len(trail_rows(audit_db))
    assert recorded == len(NAMES)

    back = reloaded(app)
    assert f"Chosen image: **{BORDERLINE}**" in sidebar_text(back)
    assert "Kept through the reload" in " ".join(toast.value for toast in back.toast)
    assert state.OTHER_TAB not in texts(back.warning)
    open_page(back, "pages/worklist.py")
    assert on_screen(back) == rows
    assert back.session_state[worklist.OPENED_KEY] == app.session_state[worklist.OPENED_KEY]
    assert f"**{BORDERLINE}**" in texts(back.markdown)  # the opened row's panel
    assert len(trail_rows(audit_db)) == recorded  # the reload showed the same results: no new records
    # The URL keeps its mark, so a second reload comes back too.
    assert back.query_params[state.UPLOADS_PARAM] == app.session_state[state._MARK_KEY]
    assert on_screen(reloaded(back, "pages/worklist.py")) == rows


def test_a_verdict_given_before_a_reload_is_still_marked_in_the_table(audit_db):
    app = select(worklist_app(), BORDERLINE)
    key = f"worklist_verdict_{state.ChosenImage(BORDERLINE, sample_bytes(BORDERLINE), 'upload').digest[:16]}"
    app.radio(key=f"{key}_verdict").set_value("agree")
    app.button(key=audit.submit_key(key, app.session_state)).click().run()
    back = reloaded(app, "pages/worklist.py")
    table = [frame for frame in back.dataframe if frame.key == "worklist_table"][0].value
    assert table.loc[table["file"] == BORDERLINE, "verdict"].item() == "agree"


def test_a_reloaded_review_shows_the_chosen_demo_image():
    app = pick_sample(start(), CLEAR_NORMAL)
    assert state.UPLOADS_PARAM in app.query_params  # a demo pick marks the tab too
    back = reloaded(app)
    assert f"Chosen image: **{CLEAR_NORMAL}**" in sidebar_text(back)
    assert shows(back, CLEAR_NORMAL)  # the film, under the call


def test_a_second_tab_on_the_same_url_while_the_first_is_open_shows_none_of_its_films(monkeypatch, audit_db):
    app = select(worklist_app(), BORDERLINE)
    mark = app.session_state[state._MARK_KEY]
    monkeypatch.setattr(state, "_session_id", lambda: "second tab")
    monkeypatch.setattr(state, "_session_alive", lambda session: session == "test session id")
    monkeypatch.setattr(state.kept_tabs(), "limits", tab_store.StoreLimits(wait_for_close_seconds=0.2))

    second = reloaded(app)
    assert state.OTHER_TAB.split("**")[1] in texts(second.warning)
    assert "No image chosen yet." in sidebar_text(second)
    assert BORDERLINE not in sidebar_text(second)
    assert state.UPLOADS_PARAM not in second.query_params  # the link's mark is dropped from this tab
    open_page(second, "pages/worklist.py")
    assert not [frame for frame in second.dataframe if frame.key == "worklist_table"]
    assert all(name not in texts(second.markdown) + texts(second.caption) for name in NAMES)
    assert state.OTHER_TAB.split("**")[1] in texts(second.warning)  # said until something is chosen

    # The first tab keeps its mark: reloaded itself later (owner gone), it comes back.
    monkeypatch.setattr(state, "_session_id", lambda: "test session id")
    monkeypatch.setattr(state, "_session_alive", lambda session: False)
    assert mark in state.kept_tabs()
    assert on_screen(reloaded(app, "pages/worklist.py"))


def test_a_lime_run_stopped_by_a_reload_is_said_and_not_restarted():
    app = open_page(pick_sample(start(), CLEAR_PNEUMONIA), "pages/explain.py")
    mark = app.session_state[state._MARK_KEY]
    # What the Explain page does around LIME (``state.stopped_by_reload``), caught in the middle.
    state.kept_tabs().running(mark, "test session id", state.LIME_STOPPED, drop=("lime_request",))
    back = reloaded(app, "pages/explain.py")
    assert "The LIME explanation that was running was stopped by the reload" in texts(back.warning)
    assert "lime_request" not in back.session_state
    assert "Choose the settings and press Run LIME" in texts(back.info)
    assert f"Chosen image: **{CLEAR_PNEUMONIA}**" in sidebar_text(back)


def test_a_mark_from_before_a_restart_still_says_the_server_restarted():
    fresh = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    fresh.query_params[state.UPLOADS_PARAM] = "a-mark-this-server-never-issued"
    fresh.run()
    assert "The server was restarted" in texts(fresh.warning)
    assert state.UPLOADS_PARAM not in fresh.query_params


def test_no_file_name_goes_into_the_url():
    app = worklist_app()
    (mark,) = [value for key, value in app.query_params.items() if key == state.UPLOADS_PARAM]
    mark = mark[0] if isinstance(mark, list) else mark
    assert len(mark) >= 21 and all(name.split(".")[0] not in mark for name in NAMES)
    assert set(app.query_params) == {state.UPLOADS_PARAM}


def test_the_kept_keys_are_the_ones_the_pages_use():
    from ui import audit, pacs_source

    assert set(state.KEPT_KEYS) >= {
        worklist.SESSION_KEY, worklist.IDS_KEY, worklist.FILES_KEY, worklist.PAGE_KEY, worklist.OPENED_KEY,
        pacs_source.RETRIEVED_KEY, pacs_source.SENT_KEY, audit._RECORDED_KEY, audit._REVEALED_KEY,
        audit._VERDICTS_KEY, state._CHOSEN_KEY,
    }
    assert set(state.WORKLIST_KEYS) == {
        worklist.SESSION_KEY, worklist.IDS_KEY, worklist.FILES_KEY, worklist.PAGE_KEY, worklist.OPENED_KEY,
        pacs_source.RETRIEVED_KEY,
    }


def test_demo_buttons_say_the_data_sets_label_not_a_call():
    app = start()
    demos = [button for button in app.sidebar.button if button.key and button.key.startswith("sample-")]
    assert len(demos) == len(state.samples())
    for button in demos:
        assert button.label.startswith("data set label: "), button.label
        label = button.label.removeprefix("data set label: ").split(" · ")[0]
        assert label in ("normal", "bacterial pneumonia", "viral pneumonia")
        assert button.label.split(" · ")[1] == button.key.removeprefix("sample-").rsplit(".", 1)[0]
    words = {button.label.split(" · ")[0] for button in demos}
    assert words == {"data set label: normal", "data set label: bacterial pneumonia", "data set label: viral pneumonia"}
