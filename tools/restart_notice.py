"""How long a tab whose server was killed and started again takes to say so, by itself.

``python -m tools.restart_notice [--runs 3]``: for each run, a real server on a free port, a
Chromium tab with a demo image chosen on Review, the server killed with SIGKILL, a new one started
on the same port; the time from the new server's first healthy answer to the restart notice on
the tab's screen, with no click and no reload (``ui/frame.py`` ``_connection_watch``). Prints one
line per run and the median as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tools.app_server import CHROMIUM, CHROMIUM_ARGS, WINDOW, free_port, streamlit_server

TIMEOUT_MS = 180_000


def measure(browser) -> float:
    """Seconds from the restarted server's first healthy answer to the notice on screen."""
    from playwright.sync_api import expect

    from ui.state import SERVER_RESTARTED

    notice = SERVER_RESTARTED.split("**")[1]
    port, folder = free_port(), Path(tempfile.mkdtemp(prefix="restart_notice_"))
    context = browser.new_context(viewport=WINDOW)
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    try:
        with streamlit_server(folder / "first.log", audit_db=folder / "audit.sqlite3", port=port) as (url, first):
            tab.goto(url)
            tab.get_by_test_id("stSidebar").get_by_role("button", name=re.compile("data set label")).first.click()
            expect(tab.get_by_role("button", name="Record verdict")).to_be_visible()
            first.send_signal(signal.SIGKILL)
            first.wait()
        with streamlit_server(folder / "second.log", audit_db=folder / "audit.sqlite3", port=port):
            answered = time.monotonic()
            expect(tab.get_by_text(notice)).to_be_visible()
            return round(time.monotonic() - answered, 2)
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    seconds = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            for run in range(args.runs):
                seconds.append(measure(browser))
                print(f"run {run + 1}: notice {seconds[-1]} s after the new server answered", flush=True)
        finally:
            browser.close()
    print(json.dumps({"runs": args.runs, "median_s": statistics.median(seconds), "max_s": max(seconds)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
