"""The Worklist page run headless with AppTest: a row opens its image on Review, Explain and Crop,
a verdict recorded from the worklist lands in the audit trail (a real SQLite file), no verdict on a
call the gate hides, the filters, order and pages, no "None" on screen, and the worklist outlives
a page switch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from pneumo_model.artifacts import REPO_ROOT
from pneumo_model.audit import AuditTrail
from pneumo_model.paths import bytes_sha256
from test_app import inverted_sample, open_page, sample_bytes, shows, start, texts
from ui import audit, resources, state, worklist

pytestmark = pytest.mark.shipped_model

PAGE = "pages/worklist.py"
# The demo images the shipped model calls on each side of the threshold, and one in its grey zone.
CLEAR_PNEUMONIA = "person10_virus_35.jpeg"
CLEAR_NORMAL = "IM-0001-0001.jpeg"
BORDERLINE = "person153_bacteria_726.jpeg"


def expected(name: str):
    return resources.predictor().predict_source(sample_bytes(name))


def upload(app: AppTest, files: list[tuple[str, bytes]]) -> AppTest:
    app.file_uploader(key="worklist_upload").set_value([(name, data, "image/png") for name, data in files])
    app.run()
    assert not app.exception, app.exception
    return app


def worklist_app(files: list[tuple[str, bytes]] | None = None) -> AppTest:
    if files is None:
        files = [(name, sample_bytes(name)) for name in (CLEAR_PNEUMONIA, BORDERLINE, CLEAR_NORMAL)]
    return upload(open_page(start(), PAGE), files)


def grid(app: AppTest):
    (table,) = [frame for frame in app.dataframe if frame.key == "worklist_table"]
    return table


def on_screen(app: AppTest) -> list[str]:
    """The file names in the table, top to bottom."""
    return list(grid(app).value["file"])


def select(app: AppTest, name: str) -> AppTest:
    """Ticks the row of ``name``, as a click on its box does."""
    row = on_screen(app).index(name)
    app.session_state["worklist_table"] = {"selection": {"rows": [row], "columns": []}}
    app.run()
    assert not app.exception, app.exception
    return app


def click(app: AppTest, label: str) -> AppTest:
    (button,) = [button for button in app.button if button.label == label]
    button.click().run()
    assert not app.exception, app.exception
    return app


def test_the_borderline_demo_is_in_the_grey_zone_and_the_others_are_not():
    # The tests below lean on it; if a new model moves them, this says so first.
    assert expected(BORDERLINE).grey_zone and expected(BORDERLINE).label == "pneumonia"
    assert not expected(CLEAR_PNEUMONIA).grey_zone and expected(CLEAR_PNEUMONIA).label == "pneumonia"
    assert not expected(CLEAR_NORMAL).grey_zone and expected(CLEAR_NORMAL).label == "normal"


def test_a_row_opens_its_image_on_review_explain_and_crop():
    app = select(worklist_app(), BORDERLINE)
    chosen = app.session_state["chosen_image"]
    assert chosen.name == BORDERLINE and chosen.data == sample_bytes(BORDERLINE) and chosen.source == "upload"
    assert BORDERLINE in texts(app.sidebar.caption)  # the sidebar names it at once
    assert "Indeterminate: needs a careful read" in texts(app.warning)
    assert f"Probability {expected(BORDERLINE).probability:.3f}" in texts(app.markdown)

    click(app, "Review")
    assert current_page(app) == "app.py"
    assert shows(app, BORDERLINE)  # the picture's caption starts with the file's name
    shown = texts(app.markdown) + "\n" + "\n".join(str(metric.value) for metric in app.metric)
    assert f"{expected(BORDERLINE).probability:.3f}" in shown
    for page, caption in (("pages/explain.py", "Original: " + BORDERLINE), ("pages/crop.py", None)):
        open_page(app, page)
        assert not app.error, texts(app.error)
        assert BORDERLINE in texts(app.sidebar.caption)
        if caption:
            assert shows(app, caption)


def current_page(app: AppTest) -> str:
    """The script of the page the last run ended on (after an ``st.switch_page``), as ``frame.PAGES`` names it.
    AppTest keeps it only in private attributes; a failure here may be a Streamlit upgrade."""
    script = app._registered_pages[app._finished_page_script_hash]["script_path"]
    return Path(script).relative_to(REPO_ROOT).as_posix()


def test_each_open_button_lands_on_its_page_with_that_image():
    for label, page in (("Review", "app.py"), ("Explain", "pages/explain.py"), ("Crop", "pages/crop.py")):
        app = select(worklist_app(), CLEAR_NORMAL)
        app.session_state["chosen_image"] = state.ChosenImage(CLEAR_PNEUMONIA, sample_bytes(CLEAR_PNEUMONIA), "sample")
        app.run()  # another image was chosen meanwhile (a demo in the sidebar)...
        click(app, label)
        assert current_page(app) == page, label
        assert app.session_state["chosen_image"].name == CLEAR_NORMAL  # ...the button opens the row's own
        assert CLEAR_NORMAL in texts(app.sidebar.caption)
        assert not app.error, texts(app.error)


def test_a_verdict_recorded_from_the_worklist_lands_in_the_trail(audit_db):
    app = select(worklist_app(), BORDERLINE)
    digest = bytes_sha256(sample_bytes(BORDERLINE))
    form = f"worklist_verdict_{digest[:16]}"
    app.radio(key=f"{form}_verdict").set_value("disagree")
    app.text_area(key=f"{form}_note").input("consolidation right lower lobe")
    app.text_input(key=f"{form}_reviewer").input("Dr Worklist")
    app.button(key=audit.submit_key(form, app.session_state)).click().run()
    assert not app.exception, app.exception
    assert "Verdict **disagree** recorded" in texts(app.success)

    rows = AuditTrail(audit_db).trail()
    assert len(rows) == 3  # the three scored files, recorded when the worklist was shown
    (judged,) = [row for row in rows if row["verdict"] is not None]
    assert judged["image_sha256"] == digest and judged["verdict"] == "disagree"
    assert judged["note"] == "consolidation right lower lobe" and judged["reviewer"] == "Dr Worklist"
    assert judged["probability"] == pytest.approx(expected(BORDERLINE).probability, abs=1e-9)
    table = grid(app).value.set_index("file")
    assert table.loc[BORDERLINE, "verdict"] == "disagree"  # the table marks it done at once
    assert table["verdict"].isna().sum() == 2

    open_page(app, "pages/trail.py")
    trail = app.dataframe[0].value
    assert trail.iloc[0]["verdict"] == "disagree" and trail.iloc[0]["image_sha256"] == digest  # newest first


def test_no_verdict_on_a_call_the_gate_hides_until_it_is_shown(audit_db):
    app = worklist_app([("normal.jpeg", sample_bytes(CLEAR_NORMAL)), ("inverted.png", inverted_sample())])
    select(app, "inverted.png")
    assert "Its call is hidden" in texts(app.warning)
    assert not [button for button in app.button if button.label == "Record verdict"]
    assert "Call:" not in texts(app.markdown)

    app.checkbox(key="worklist_show_ood").check().run()
    assert not app.exception, app.exception
    select(app, "inverted.png")
    assert [button for button in app.button if button.label == "Record verdict"]
    assert "Call:" in texts(app.markdown)


def test_the_filters_keep_the_rows_asked_for_and_never_give_a_hidden_call_away():
    files = [(name, sample_bytes(name)) for name in (CLEAR_PNEUMONIA, BORDERLINE, CLEAR_NORMAL)]
    files += [("inverted.png", inverted_sample()), ("broken.png", b"not an image")]
    app = worklist_app(files)
    assert on_screen(app) == [CLEAR_PNEUMONIA, BORDERLINE, CLEAR_NORMAL, "inverted.png", "broken.png"]

    app.segmented_control(key="worklist_calls").set_value(["pneumonia"]).run()
    assert on_screen(app) == [CLEAR_PNEUMONIA, BORDERLINE]
    app.segmented_control(key="worklist_calls").set_value(["normal"]).run()
    assert on_screen(app) == [CLEAR_NORMAL]  # the hidden call is neither
    app.segmented_control(key="worklist_calls").set_value([]).run()

    for flags, rows in (
        (["indeterminate"], [BORDERLINE]),
        (["not X-ray-like"], ["inverted.png"]),
        (["unreadable"], ["broken.png"]),
        (["indeterminate", "unreadable"], [BORDERLINE, "broken.png"]),
    ):
        app.pills(key="worklist_flags").set_value(flags).run()
        assert on_screen(app) == rows, flags
    app.pills(key="worklist_flags").set_value([]).run()

    app.selectbox(key="worklist_order").set_value("probability, lowest first").run()
    assert on_screen(app) == [CLEAR_NORMAL, BORDERLINE, CLEAR_PNEUMONIA, "inverted.png", "broken.png"]
    app.selectbox(key="worklist_order").set_value("file name").run()
    assert on_screen(app) == sorted(name for name, _ in files)
    app.selectbox(key="worklist_order").set_value("upload order").run()
    assert on_screen(app) == [name for name, _ in files]
    assert "rows 1–5 of 5" in texts(app.caption)


def test_the_selection_follows_the_opened_row_when_the_rows_change():
    app = select(worklist_app(), CLEAR_NORMAL)
    app.selectbox(key="worklist_order").set_value("probability, lowest first").run()
    assert on_screen(app)[0] == CLEAR_NORMAL
    assert app.session_state["worklist_table"]["selection"]["rows"] == [0]  # still its row, now first
    app.segmented_control(key="worklist_calls").set_value(["pneumonia"]).run()
    assert app.session_state["worklist_table"]["selection"]["rows"] == []  # filtered out: nothing ticked
    assert "Select a row" in texts(app.info)
    app.segmented_control(key="worklist_calls").set_value([]).run()
    assert app.session_state["worklist_table"]["selection"]["rows"] == [0]  # and back
    assert app.session_state["chosen_image"].name == CLEAR_NORMAL


def test_a_long_worklist_is_shown_a_page_at_a_time_every_row_of_it_drawn():
    names = [f"case{index:02d}.jpeg" for index in range(23)]
    app = worklist_app([(name, sample_bytes(CLEAR_NORMAL)) for name in names])
    table = grid(app)
    assert len(table.value) == worklist.ROWS_PER_PAGE
    assert table.proto.row_height == 50
    assert "Page 1 of 3: rows 1–10 of 23" in texts(app.caption)
    click(app, "Next")
    click(app, "Next")
    assert len(grid(app).value) == 3 and "Page 3 of 3: rows 21–23 of 23" in texts(app.caption)
    assert [button.disabled for button in app.button if button.label in ("Previous", "Next")] == [False, True]
    app.selectbox(key="worklist_order").set_value("file name").run()
    assert "Page 1 of 3" in texts(app.caption)  # a new order starts at its first page
    assert on_screen(app) == names[:10]


def test_nothing_on_screen_says_none():
    files = [(CLEAR_NORMAL, sample_bytes(CLEAR_NORMAL)), ("inverted.png", inverted_sample()), ("broken.png", b"")]
    app = worklist_app(files)
    table = grid(app)
    assert table.proto.placeholder == "—"  # what a missing value shows
    shown = table.value[list(table.proto.column_order)]
    for column in shown.columns:
        for value in shown[column]:
            missing = value is None or (isinstance(value, float) and np.isnan(value))  # drawn as the placeholder
            assert missing or str(value) not in ("None", "nan", "NaN", "<NA>", "null"), (column, value)
    assert shown["call"].iloc[1] == worklist.HIDDEN_ON_SCREEN and pd.isna(shown["call"].iloc[2])


def test_the_worklist_outlives_a_page_switch_until_cleared_or_emptied():
    app = worklist_app()
    open_page(app, "app.py")
    open_page(app, PAGE)  # Streamlit gives the uploader back empty...
    assert on_screen(app) == [CLEAR_PNEUMONIA, BORDERLINE, CLEAR_NORMAL]  # ...the worklist stays
    assert "kept while this tab is open" in texts(app.info)
    select(app, BORDERLINE)
    assert app.session_state["chosen_image"].data == sample_bytes(BORDERLINE)  # its files too
    click(app, "Clear worklist")
    assert not [frame for frame in app.dataframe if frame.key == "worklist_table"]
    assert "Upload images to build a worklist" in texts(app.info)

    emptied = worklist_app()
    emptied.file_uploader(key="worklist_upload").set_value([]).run()  # the user removed every file
    assert not emptied.exception
    assert not [frame for frame in emptied.dataframe if frame.key == "worklist_table"]


def test_an_unreadable_row_says_why_and_offers_nothing_to_open():
    app = select(worklist_app([("broken.png", b"nope"), (CLEAR_NORMAL, sample_bytes(CLEAR_NORMAL))]), "broken.png")
    assert "could not be read, so it cannot be opened" in texts(app.error)
    assert not [button for button in app.button if button.label in ("Review", "Explain", "Crop")]
    assert app.session_state.get("chosen_image") is None or app.session_state["chosen_image"].name != "broken.png"
    assert np.isnan(grid(app).value.set_index("file").loc["broken.png", "probability"])


def test_the_pacs_source_says_how_to_configure_it_and_what_failed_without_a_traceback(monkeypatch):
    import socket

    from test_app import start as fresh_start

    monkeypatch.delenv("PNEUMO_DICOMWEB_URL", raising=False)
    app = open_page(fresh_start(), PAGE)
    assert "No PACS is configured: an administrator sets PNEUMO_DICOMWEB_URL" in texts(app.caption)
    assert "worklist_source" not in app.session_state  # no source choice: file upload only
    assert app.file_uploader(key="worklist_upload") is not None

    monkeypatch.setenv("PNEUMO_DICOMWEB_URL", "pacs.example.org/dicom-web")  # no scheme: cannot work
    app = open_page(fresh_start(), PAGE)
    app.session_state["worklist_source"] = "PACS"
    app.run()
    assert "The PACS settings cannot be used" in texts(app.error) and "http:// or https://" in texts(app.error)

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("PNEUMO_DICOMWEB_URL", f"http://127.0.0.1:{port}/dicom-web")
    app = open_page(fresh_start(), PAGE)
    app.session_state["worklist_source"] = "PACS"
    app.run()
    assert "Select a study, then retrieve and score it" in texts(app.info)
    app.button(key="FormSubmitter:pacs_search-Search the PACS").click().run()
    assert not app.exception, app.exception
    assert f"The PACS at http://127.0.0.1:{port} cannot be reached while searching for studies" in texts(app.error)
