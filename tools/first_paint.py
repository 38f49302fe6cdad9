"""First paint of a cold server: how long after the server answers the banner, and then the model, are on screen.

``.venv/bin/python -m tools.first_paint [--runs 3] [--page explain]`` starts ``streamlit run app.py``
afresh for each run, waits until its health endpoint answers (time 0), opens the page in Debian's
Chromium (launched beforehand, so its own start is not counted) and records, from inside the page
(a MutationObserver installed before the page's scripts), when the intended-use banner first shows,
when the "Loading the model..." note shows, and when the banner carries the model's id (the model
loaded). The old frame drew its banner only once the model had loaded, so "model in the banner" is
also when the naive order would have shown anything at all: the ratio compares the two in the same
run. With ``--demo`` it then presses the first demo image in the sidebar, at once, and records
when its call ("Probability of pneumonia") is on screen: the cold server's first call; and when
the probability bar under it is (its picture, drawn with matplotlib, comes right after). With
``--baseline REF`` the same runs are made, in the same run of this tool, on the app of commit REF
served from a temporary worktree (the TensorFlow run time before ``d8350f2``'s successor merged
ONNX Runtime, say), and the medians' ratios printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tools.app_server import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, WINDOW, checkout, streamlit_server

# Milliseconds since navigation start at which each text first appeared in the page (null: never).
OBSERVER = """
(() => {
  const marks = {page: null, banner: null, loading: null, model: null, call: null, bar: null};
  document.addEventListener("DOMContentLoaded", () => { marks.page = performance.now(); });
  window.__firstPaint = marks;
  const look = () => {
    const now = performance.now();
    const text = document.body ? document.body.innerText : "";
    if (marks.banner === null && text.includes(%(disclaimer)s)) marks.banner = now;
    if (marks.loading === null && text.includes(%(loading)s)) marks.loading = now;
    if (marks.model === null && /Model \\w{12}/.test(text)) marks.model = now;
    if (marks.call === null && text.includes("Probability of pneumonia")) marks.call = now;
    if (marks.bar === null && document.querySelector(".st-key-probability_bar img")) marks.bar = now;
  };
  new MutationObserver(look).observe(document, {subtree: true, childList: true, characterData: true});
})();
"""


def observer_script() -> str:
    """The observer, with the frame's own words (so a change of wording cannot silently break it)."""
    from ui.frame import DISCLAIMER, LOADING_MESSAGE

    return OBSERVER % {"disclaimer": json.dumps(DISCLAIMER), "loading": json.dumps(LOADING_MESSAGE.split("(")[0].strip())}


def measure(browser, path: str = "", timeout_s: float = 180.0, demo: bool = False, root: Path = REPO_ROOT) -> dict:
    """One cold start: seconds from the server's first healthy answer to each mark."""
    with tempfile.TemporaryDirectory() as folder:
        log, audit_db = Path(folder) / "streamlit.log", Path(folder) / "audit.sqlite3"
        with streamlit_server(log, audit_db=audit_db, root=root) as (url, _):
            answered = time.monotonic()
            context = browser.new_context(viewport=WINDOW)
            try:
                tab = context.new_page()
                tab.add_init_script(observer_script())
                opened = time.monotonic()
                tab.goto(f"{url}/{path}")
                tab.wait_for_function("window.__firstPaint && window.__firstPaint.model !== null", timeout=timeout_s * 1000)
                if demo:
                    demos = tab.get_by_test_id("stSidebar").get_by_role("button", name=re.compile("data set label"))
                    demos.first.click(timeout=timeout_s * 1000)
                    tab.wait_for_function(
                        "window.__firstPaint.call !== null && window.__firstPaint.bar !== null", timeout=timeout_s * 1000
                    )
                marks = tab.evaluate("window.__firstPaint")
            finally:
                context.close()
    offset = opened - answered  # navigation starts this long after the server answered

    def seconds(mark: float | None) -> float | None:
        return None if mark is None else round(offset + mark / 1000.0, 3)

    return {name: seconds(value) for name, value in marks.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--page", default="", help="page path after the server's URL ('' is Review, 'explain', ...)")
    parser.add_argument("--demo", action="store_true", help="then press a demo image and time its call (Review)")
    parser.add_argument("--baseline", help="a commit whose app is measured the same way in the same run")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        print(f"Chromium is missing at {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 2
    names = ("page", "banner", "loading", "model") + (("call", "bar") if args.demo else ())
    apps = {"this checkout": REPO_ROOT}
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as stack, sync_playwright() as playwright:
        if args.baseline:
            apps[args.baseline] = stack.enter_context(checkout(args.baseline))
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            runs: dict[str, list[dict]] = {name: [] for name in apps}
            for run in range(args.runs):
                for app, root in apps.items():  # alternated, so that a busier minute hits both
                    marks = measure(browser, args.page, demo=args.demo, root=root)
                    runs[app].append(marks)
                    print(f"{app}, run {run + 1}: " + ", ".join(f"{name} {marks[name]} s" for name in names), flush=True)
        finally:
            browser.close()
    for app, app_runs in runs.items():
        medians = {name: round(statistics.median(run[name] for run in app_runs), 3) for name in names}
        medians["model_over_banner"] = round(medians["model"] / medians["banner"], 2)
        results[app] = medians
    summary = {"page": args.page or "review", "runs": args.runs, "median_s_after_server_answered": results}
    if args.baseline:
        summary["baseline_over_this"] = {
            name: round(results[args.baseline][name] / results["this checkout"][name], 2) for name in names
        }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
