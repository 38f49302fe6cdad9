"""First paint in a real browser: on a cold server the banner and the page's layout come before the model.

The old frame loaded the model (seconds of TensorFlow import and loading) before it drew anything,
so a demo's first sight was a white page. The order is read from inside the page by the
benchmark's own observer (``tools.first_paint``), which notes when each text first appears.
"""

from __future__ import annotations

import pytest

from tools.app_server import WINDOW, streamlit_app
from tools.first_paint import observer_script
from ui.frame import DISCLAIMER, LOADING_MESSAGE, PAGES

from test_browser import SLOW_MS, browser  # noqa: F401 (the module's Chromium fixture)

pytestmark = [pytest.mark.shipped_model, pytest.mark.browser]


@pytest.mark.parametrize("path", ["", "model_card"])
def test_a_cold_server_draws_the_banner_and_menu_before_the_model_loads_then_completes_the_banner(browser, tmp_path, path):  # noqa: F811
    from playwright.sync_api import expect

    context = browser.new_context(viewport=WINDOW)
    try:
        tab = context.new_page()
        tab.set_default_timeout(SLOW_MS)
        tab.add_init_script(observer_script())
        with streamlit_app(tmp_path / "streamlit.log", audit_db=tmp_path / "audit.sqlite3") as url:
            tab.goto(f"{url}/{path}")
            tab.wait_for_function("window.__firstPaint.model !== null", timeout=SLOW_MS)
            marks = tab.evaluate("window.__firstPaint")
            assert marks["banner"] is not None and marks["loading"] is not None, marks
            assert marks["banner"] <= marks["loading"] < marks["model"], marks
            # Once loaded, the note is gone and the banner names the model and its operating point.
            expect(tab.get_by_text(LOADING_MESSAGE)).to_have_count(0)
            banner = tab.get_by_test_id("stAlert").filter(has_text=DISCLAIMER).first
            expect(banner).to_contain_text("operating point")
            expect(tab.get_by_test_id("stSidebar").get_by_role("link")).to_have_count(len(PAGES))  # drawn once
    finally:
        context.close()
