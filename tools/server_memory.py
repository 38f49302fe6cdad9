"""Peak memory of the real server for one upload: `python -m tools.server_memory [FILE...]`.

Starts `streamlit run app.py` on a free localhost port, opens it in Debian's Chromium (in
``--at-once`` tabs, each its own session), warms it up with a demo image (TensorFlow, the model,
the first pages), then for each file: resets the
server process's high-water mark (``/proc/PID/clear_refs``), uploads the file on Review, opens
Explain and Crop & rescore, and prints the peak resident memory above the idle server
(``VmHWM`` minus ``VmRSS`` before) and what stayed held afterwards. Without FILE it writes and
uses the 7740 x 7740 16-bit all-zero PNG of the issue (116 KB on disk). Linux only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tools.app_server import CHROMIUM, CHROMIUM_ARGS, WINDOW, streamlit_server

TIMEOUT_MS = 300_000


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def _settle(pid: int, seconds: float = 3.0) -> int:
    """VmRSS in kB once it stops moving (background work after a page is drawn)."""
    last = _status_kb(pid, "VmRSS")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _status_kb(pid, "VmRSS")
        if abs(now - last) < 1024:
            return now
        last = now
    return last


def _wait_for_page(tab, name: str) -> None:
    """Until the page shows the file: a picture captioned with its name, or an error naming it."""
    from playwright.sync_api import expect

    shown = tab.get_by_test_id("stImage").filter(has_text=name[:12]).or_(
        tab.get_by_test_id("stAlertContentError").filter(has_text=name[:12])
    )
    expect(shown.first).to_be_visible(timeout=TIMEOUT_MS)
    expect(tab.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=TIMEOUT_MS)  # the run has ended


def issue_file(folder: Path) -> Path:
    path = folder / "zeros_7740_16bit.png"
    Image.fromarray(np.zeros((7740, 7740), np.uint16)).save(path)
    return path


def measure(files: list[Path], at_once: int = 1) -> list[dict]:
    from playwright.sync_api import expect, sync_playwright

    log = Path(tempfile.gettempdir()) / "server_memory.log"
    results = []
    audit_db = Path(tempfile.mkdtemp()) / "audit.sqlite3"
    with streamlit_server(log, audit_db=audit_db) as (url, server):
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            for path in files:
                tabs = [browser.new_page(viewport=WINDOW) for _ in range(at_once)]
                for tab in tabs:
                    tab.set_default_timeout(TIMEOUT_MS)
                    tab.goto(url)
                    tab.get_by_role("button", name="data set label: normal · IM-0001-0001").click()  # warm-up: model, pages
                    expect(tab.get_by_test_id("stMetric").first).to_be_visible(timeout=TIMEOUT_MS)
                idle = _settle(server.pid)
                Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
                for tab in tabs:  # the uploads start together; the server reads them side by side
                    tab.locator("input[type=file]").first.set_input_files(str(path))
                for tab in tabs:
                    _wait_for_page(tab, path.name)
                review = _status_kb(server.pid, "VmHWM") - idle
                for title in ("Explain", "Crop & rescore"):
                    for tab in tabs:
                        tab.get_by_test_id("stSidebar").get_by_role("link", name=title, exact=True).click()
                    for tab in tabs:
                        _wait_for_page(tab, path.name)
                every_page = _status_kb(server.pid, "VmHWM") - idle
                for tab in tabs:
                    tab.close()
                held = _settle(server.pid) - idle
                results.append({
                    "file": path.name, "bytes": path.stat().st_size, "sessions": at_once, "idle_mb": idle / 1024,
                    "peak_review_mb": review / 1024, "peak_all_pages_mb": every_page / 1024, "held_after_mb": held / 1024,
                })
                print(
                    f"{path.name} ({path.stat().st_size / 1024:.0f} KB), {at_once} session(s) at once: idle server "
                    f"{idle / 1024:.0f} MB; peak above idle {review / 1024:.0f} MB on Review, {every_page / 1024:.0f} MB "
                    f"with Explain and Crop; {held / 1024:.0f} MB still held after",
                    flush=True,
                )
            browser.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="files to upload (default: the issue's 7740 x 7740 16-bit PNG)")
    parser.add_argument("--at-once", type=int, default=1, help="sessions uploading the same file at the same time")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        measure(args.files or [issue_file(Path(folder))], args.at_once)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
