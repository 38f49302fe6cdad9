"""A verdict and a server restart in a real browser (Chromium through Playwright, the fixtures of
``tests/test_browser.py``), against real ``streamlit run`` servers on one localhost port.

The server is killed (SIGKILL, as a crash or an OOM kill) right after it wrote a verdict whose
answer the tab never saw (the test holds back the server's messages on the tab's websocket from the
press on); a new server is started on the same port. Without the user doing anything, the tab
says that the server restarted and offers no form that could look as if it saved; when the tab
opens the film again, the verdict shows as recorded, and pressing again asks before a second row.
The server's log holds no traceback.
"""

from __future__ import annotations

import re
import signal

import pytest

from pneumo_model.audit import AuditTrail
from tools.app_server import free_port, streamlit_server
from ui.frame import LOADING_MESSAGE

from test_browser import SLOW_MS, WINDOW, browser  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.shipped_model, pytest.mark.browser]

SAMPLE = "IM-0003-0001"
RESTARTED = "The server was restarted"


def verdict_rows(path) -> list[dict]:
    return [row for row in AuditTrail(path).trail() if row["verdict_id"] is not None] if path.exists() else []


def choose_sample(tab) -> None:
    from playwright.sync_api import expect

    tab.get_by_test_id("stSidebar").get_by_role("button", name=re.compile(SAMPLE)).click()
    expect(tab.get_by_test_id("stMetric").filter(has_text="Probability of pneumonia")).to_be_visible()
    expect(tab.get_by_role("button", name="Record verdict")).to_be_visible()


def test_a_restarted_server_is_never_silent_and_a_verdict_whose_answer_was_lost_is_not_doubled(browser, tmp_path):
    from playwright.sync_api import expect

    port, audit_db = free_port(), tmp_path / "audit.sqlite3"
    deliver = {"on": True}  # False: the server's messages to the tab are dropped (an answer lost)

    def relay(route) -> None:
        server = route.connect_to_server()
        route.on_message(server.send)
        server.on_message(lambda message: route.send(message) if deliver["on"] else None)

    context = browser.new_context(viewport=WINDOW)
    tab = context.new_page()
    tab.set_default_timeout(SLOW_MS)
    tab.route_web_socket(re.compile(r".*/_stcore/stream"), relay)
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    try:
        with streamlit_server(logs[0], audit_db=audit_db, port=port) as (url, first):
            tab.goto(url)
            choose_sample(tab)
            tab.get_by_test_id("stRadioGroup").get_by_text("agree", exact=True).click()
            deliver["on"] = False
            tab.get_by_role("button", name="Record verdict").click()
            for _ in range(300):
                if verdict_rows(audit_db):
                    break
                tab.wait_for_timeout(100)
            assert [row["verdict"] for row in verdict_rows(audit_db)] == ["agree"]
            first.send_signal(signal.SIGKILL)
            first.wait()
            expect(tab.get_by_text("recorded (record")).to_have_count(0)  # the tab never heard of it
        deliver["on"] = True
        with streamlit_server(logs[1], audit_db=audit_db, port=port):
            # No click, no reload: the tab runs its page in the new session by itself.
            expect(tab.get_by_text(RESTARTED)).to_be_visible(timeout=60_000)
            expect(tab.get_by_role("button", name="Record verdict")).to_have_count(0)
            # Once the new server has loaded the model (the stale sidebar is not yet this session's):
            expect(tab.get_by_text(LOADING_MESSAGE)).to_have_count(0)
            expect(tab.get_by_test_id("stStatusWidget")).to_have_count(0)
            choose_sample(tab)
            expect(tab.get_by_text("before this tab lost its connection to the server")).to_be_visible()
            expect(tab.get_by_text(re.compile(r"Your verdict agree on this image was recorded at \d\d:\d\d \(record 1\)"))).to_be_visible()
            tab.get_by_test_id("stRadioGroup").get_by_text("agree", exact=True).click()
            tab.get_by_role("button", name="Record verdict").click()
            expect(tab.get_by_text("Record another verdict?")).to_be_visible()
            assert len(verdict_rows(audit_db)) == 1
    finally:
        context.close()
    for log in logs:
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, f"{log.name}:\n{text[-3000:]}"
