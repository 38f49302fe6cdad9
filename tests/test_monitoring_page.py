"""The Monitoring page run headless with AppTest on a real SQLite trail: administrators only, no
trail is never created, windows without a change say so, a change of the films is an alert in
plain words with what to do."""

from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from pneumo_model.artifacts import DEFAULT_MODEL_PATH, read_metadata
from test_access import claims, refusal, signed_in
from test_app import APP, TIMEOUT, open_page, texts
from test_monitor import write_trail

pytestmark = pytest.mark.shipped_model

PAGE = "pages/monitoring.py"


def monitoring(window: int | None = None) -> AppTest:
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    app.run()
    assert not app.exception, app.exception
    open_page(app, PAGE)
    if window is not None:
        app.number_input(key="monitor_window").set_value(window).run()
        assert not app.exception, app.exception
    return app


def stream(rng, shifted: bool) -> tuple[np.ndarray, list[bool]]:
    """120 films like validation's (a quarter normal), then 60 more: alike, or with the normal films
    scoring 2 higher and a fifth of them flagged."""
    def films(n, move):
        sick = rng.random(n) < 0.74
        return np.where(sick, rng.normal(3.4, 1.5, n), rng.normal(-4.3 + move, 1.1, n))

    logits = np.concatenate([films(120, 0.0), films(60, 2.0 if shifted else 0.0)])
    flagged = [False] * 120 + [bool(shifted and i % 5 == 0) for i in range(60)]
    return logits, flagged


def test_without_a_trail_it_says_nothing_to_monitor_and_creates_none(audit_db):
    app = monitoring()
    assert "Nothing to monitor yet" in texts(app.info)
    assert not app.error and not app.dataframe
    assert not audit_db.exists()


def test_a_stream_without_change_draws_its_windows_and_says_so(audit_db, rng):
    write_trail(audit_db, *stream(rng, shifted=False), read_metadata(DEFAULT_MODEL_PATH))
    app = monitoring(window=60)
    assert "No change beyond what chance gives in the last full window 3" in texts(app.success)
    assert not app.error
    (table,) = app.dataframe
    assert list(table.value["window"]) == ["3", "2", "1"] and list(table.value["alert"]) == ["", "", ""]
    assert "the trail's first window of 60 films" in texts(app.caption)
    assert len(app.image) == 1  # the windows over time


def test_a_change_of_the_films_is_an_alert_with_what_to_do(audit_db, rng):
    write_trail(audit_db, *stream(rng, shifted=True), read_metadata(DEFAULT_MODEL_PATH))
    app = monitoring(window=60)
    words = texts(app.error)
    assert words.startswith("**The films changed** in the last full window 3")
    steps = texts(app.markdown)
    for action in ("Check the scanner's processing", "align again", "Calibrate with labels"):
        assert action in steps
    (table,) = app.dataframe
    assert list(table.value["alert"]) == ["ALERT", "", ""]


def test_fewer_films_than_a_window_is_said_plainly(audit_db, rng):
    write_trail(audit_db, *stream(rng, shifted=False), read_metadata(DEFAULT_MODEL_PATH))
    app = monitoring(window=200)
    assert "the first full window of 200 is the baseline" in texts(app.info)
    assert str(audit_db) not in texts(app.info)


def test_a_reader_is_refused_and_an_administrator_opens_it():
    app = signed_in(claims("r-1"), PAGE)
    assert refusal(app) == "The Monitoring page is for administrators. You are signed in as Dr r-1 (reader)."
    app = signed_in(claims("r-1"))
    assert "Monitoring" not in [link.label for link in app.sidebar.get("page_link")]
    app = signed_in(claims("a-1", groups=["pneumo-admins"]), PAGE)
    assert not app.exception and app.subheader[0].value == "Monitoring"


def test_with_no_full_window_the_words_say_nothing_was_judged():
    from ui import monitor_page

    result = {"windows": [], "window": 100, "films": 0, "alert": False, "cause": None, "actions": []}
    headline, reasons, actions = monitor_page.alert_words(result)
    assert headline == "No full window of 100 films yet (0 films so far): nothing judged." and not reasons and not actions
