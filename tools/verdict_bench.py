"""How long a reader waits for "Verdict ... recorded": several readers recording at once, each in
a real Chromium tab against one ``streamlit run`` server, measured inside each page.

Each reader opens Review with a demo image of their own. In every round all readers press
"Record verdict" within a few milliseconds of one another; each page notes the moment of its
press and the moment a new confirmation (a record number it has not shown before) is in its DOM
(``performance.now()`` and a ``MutationObserver``, so the figure does not depend on how fast this
script polls). From the second round on a press first gets "Record another verdict?", whose box
is ticked before the timed press, as a reader would.

The naive way, the page run again in full for every verdict, is measured in the same run when
``--baseline REF`` names a commit that had it (``d844464``, the last before the form became a
fragment): its app is served from a temporary worktree beside this one, with the same readers.

    python -m tools.verdict_bench --readers 4 --rounds 6 --baseline d844464 --out reports/verdict_bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from tools.app_server import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, WINDOW, checkout, streamlit_server

SAMPLES = sorted((REPO_ROOT / "assets" / "samples").glob("*.jpeg"))
TIMEOUT_MS = 180_000

# Armed before a press: notes when a confirmation with a record number not on screen before appears.
_ARM = """() => {
  const numbers = () => [...document.querySelectorAll('[data-testid="stAlert"]')]
    .flatMap(alert => [...alert.textContent.matchAll(/recorded \\(record (\\d+)/g)].map(m => m[1]));
  const seen = new Set(numbers());
  window.__verdict = {pressed: null, confirmed: null};
  const observer = new MutationObserver(() => {
    if (window.__verdict.confirmed === null && numbers().some(n => !seen.has(n))) {
      window.__verdict.confirmed = performance.now();
      observer.disconnect();
    }
  });
  observer.observe(document.body, {subtree: true, childList: true, characterData: true});
}"""
_PRESS = """() => {
  const button = [...document.querySelectorAll('button')].find(b => b.textContent.includes('Record verdict'));
  window.__verdict.pressed = performance.now();
  button.click();
}"""


def _ready(tab, sample: Path) -> None:
    from playwright.sync_api import expect

    tab.get_by_test_id("stSidebar").get_by_role("button", name=re.compile(re.escape(sample.stem))).click()
    expect(tab.get_by_test_id("stMetric").filter(has_text="Probability of pneumonia")).to_be_visible()
    expect(tab.get_by_role("button", name="Record verdict")).to_be_visible()
    _idle(tab)


def _idle(tab) -> None:
    from playwright.sync_api import expect

    tab.wait_for_timeout(500)
    expect(tab.get_by_test_id("stStatusWidget")).to_have_count(0)


def _choose(tab, verdict: str, second: bool) -> None:
    """Chooses the verdict; on a film this tab judged, presses once for the question and ticks its box."""
    from playwright.sync_api import expect

    tab.get_by_test_id("stRadioGroup").get_by_text(verdict, exact=True).click()
    if second:
        tab.get_by_role("button", name="Record verdict").click()
        box = tab.get_by_text("Yes, record a second verdict on this image")
        expect(box).to_be_visible()
        box.click()
    _idle(tab)


def measure(url: str, browser, readers: int, rounds: int) -> list[float]:
    """Seconds from press to confirmation, for every reader in every round."""
    contexts = [browser.new_context(viewport=WINDOW) for _ in range(readers)]
    tabs = [context.new_page() for context in contexts]
    waits: list[float] = []
    try:
        for index, tab in enumerate(tabs):
            tab.set_default_timeout(TIMEOUT_MS)
            tab.goto(url)
            _ready(tab, SAMPLES[index % len(SAMPLES)])
        for number in range(rounds):
            verdict = ("agree", "disagree", "unsure")[number % 3]
            for tab in tabs:
                _choose(tab, verdict, second=number > 0)
            for tab in tabs:
                tab.evaluate(_ARM)
            for tab in tabs:  # all presses within a few milliseconds
                tab.evaluate(_PRESS)
            deadline = time.monotonic() + TIMEOUT_MS / 1000
            for tab in tabs:
                while (times := tab.evaluate("() => window.__verdict"))["confirmed"] is None:
                    if time.monotonic() > deadline:
                        alerts = tab.get_by_test_id("stAlert").all_inner_texts()
                        raise RuntimeError(f"a confirmation did not come within the time limit; on screen: {alerts}")
                    tab.wait_for_timeout(20)
                waits.append((times["confirmed"] - times["pressed"]) / 1000)
            for tab in tabs:
                _idle(tab)  # the worklist-style page run after a confirmation, if any, is over
    finally:
        for context in contexts:
            context.close()
    return waits


def _summary(waits: list[float]) -> dict:
    return {
        "presses": len(waits),
        "median_s": round(statistics.median(waits), 3),
        "max_s": round(max(waits), 3),
        "min_s": round(min(waits), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--baseline", help="a commit whose app is measured in the same run (the naive way)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.readers < 1 or args.rounds < 1:
        parser.error("--readers and --rounds are at least 1")

    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    servers = {"fragment": REPO_ROOT}
    figures: dict[str, dict] = {}
    with contextlib.ExitStack() as stack, sync_playwright() as playwright:
        if args.baseline:
            servers["full page run"] = stack.enter_context(checkout(args.baseline))
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        logs = Path(tempfile.mkdtemp(prefix="verdict_bench_logs_"))
        for name, root in servers.items():
            with streamlit_server(logs / f"{name}.log", audit_db=logs / f"{name}.sqlite3", root=root) as (url, _):
                measure(url, browser, 1, 1)  # the model loaded and the pages warm, untimed
                figures[name] = _summary(measure(url, browser, args.readers, args.rounds))
            print(f"{name}: {json.dumps(figures[name])}", flush=True)
        browser.close()
    result = {
        "what": "seconds from a press of 'Record verdict' to its confirmation in the page, readers pressing at once",
        "readers": args.readers,
        "rounds": args.rounds,
        "baseline": args.baseline,
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}, {_cores()} cores",
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "figures": figures,
    }
    if "full page run" in figures:
        result["median_ratio"] = round(figures["full page run"]["median_s"] / figures["fragment"]["median_s"], 2)
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
