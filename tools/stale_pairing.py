"""Does Review ever show one image's call beside another image's film? Measured in the real browser.

Usage: ``.venv/bin/python -m tools.stale_pairing [--uploads 10] [--repo PATH]``. It starts the app
(``--repo``: another checkout's ``app.py``, to measure a version before a fix), uploads a sequence
of films on Review one after the other (demo images and an inverted X-ray, which the
out-of-distribution gate flags), and watches the page with a ``MutationObserver``: after every
change of the page (before the browser can paint it) it notes the call's heading, the probability,
the probability bar's picture, the gate's message and the film's caption. Once each upload has
settled, that upload's own call, probability, bar, gate message and caption are known; a moment
whose elements do not all belong to one film is a mix. Prints one JSON object: per upload, how
many moments showed a mix and for how long.

The browser test ``tests/test_review_browser.py`` runs the same measurement.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tools.app_server import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, WINDOW

SAMPLES_DIR = REPO_ROOT / "assets" / "samples"
# Films with distinct probabilities (three decimals, as shown), both calls and the grey zone.
SAMPLE_FILMS = ("IM-0003-0001.jpeg", "person100_bacteria_475.jpeg", "NORMAL2-IM-0012-0001.jpeg", "person10_virus_35.jpeg")
INVERTED = "inverted-IM-0001-0001.png"  # flagged by the out-of-distribution gate: its message, no call
SLOW_MS = 180_000

# What the page shows of a result at one moment, read after every DOM change.
OBSERVER = r"""
() => {
  const main = document.querySelector('[data-testid=stMain]') || document.body;
  const text = (element) => element ? element.innerText.replace(/\u2060/g, '').trim() : null;
  const read = () => {
    const metric = [...main.querySelectorAll('[data-testid=stMetric]')].find((m) => m.innerText.includes('Probability of pneumonia'));
    const call = [...main.querySelectorAll('h4')].find((h) => h.innerText.startsWith('Call:'));
    const bar = main.querySelector('.st-key-probability_bar img');
    const gate = [...main.querySelectorAll('[data-testid=stAlert]')].some((a) => /out-of-distribution score/i.test(a.innerText))
      || [...main.querySelectorAll('label')].some((l) => l.innerText.includes("Show the model's output anyway"));
    const captions = [...main.querySelectorAll('[data-testid=stImageCaption], [data-testid=stCaptionContainer]')]
      .map(text).filter((c) => c && /\((demo image|upload|from the PACS)/.test(c));
    const uploaded = main.querySelector('[data-testid=stFileChipName]');
    const film = [...main.querySelectorAll('[data-testid=stImageCaption]')].find((c) => /\((demo image|upload|from the PACS)/.test(text(c)));
    const holder = film ? film.closest('[data-testid=stElementContainer]') : null;
    return {
      t: performance.now(),
      call: text(call),
      probability: metric ? text(metric.querySelector('[data-testid=stMetricValue]')) : null,
      bar: bar ? bar.getAttribute('src') : null,
      gate: gate,
      caption: captions.length ? captions[0] : null,
      uploader: text(uploaded),
      // Streamlit's own mark of an element the running script has not drawn again (it fades it).
      film_stale: holder ? holder.getAttribute('data-stale') === 'true' : null,
    };
  };
  window.__snaps = [];
  let last = null;
  const note = () => {
    const snap = read();
    const key = JSON.stringify({...snap, t: 0});
    if (key !== last) { window.__snaps.push(snap); last = key; }
  };
  new MutationObserver(note).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
  note();
}
"""


@dataclass
class Upload:
    """One upload's moments and what they showed."""

    film: str
    previous: str | None
    moments: int = 0
    mixed: int = 0
    mixed_ms: float = 0.0
    examples: list[dict] = field(default_factory=list)
    # Moments that showed the previous film's result (whole) while the uploader already named this
    # one: all of them, and those Streamlit did not mark as stale (faded).
    previous_result_ms: float = 0.0
    previous_result_unmarked_ms: float = 0.0


def films(folder: Path) -> list[Path]:
    """The sample films and an inverted X-ray, written to ``folder`` (uploads need files)."""
    paths = []
    for name in SAMPLE_FILMS:
        path = folder / name
        path.write_bytes((SAMPLES_DIR / name).read_bytes())
        paths.append(path)
    grey = np.asarray(Image.open(SAMPLES_DIR / "IM-0001-0001.jpeg").convert("L"))
    inverted = folder / INVERTED
    Image.fromarray(255 - grey).save(inverted)
    paths.append(inverted)
    return paths


def _settled(page, name: str) -> dict:
    """Waits until the page has finished its run for film ``name``; returns what it shows then."""
    from playwright.sync_api import expect

    deadline = time.monotonic() + SLOW_MS / 1000
    while True:
        page.wait_for_timeout(200)
        expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=SLOW_MS)
        snap = page.evaluate("() => window.__snaps[window.__snaps.length - 1]")
        caption = snap["caption"] or ""
        if caption.startswith(name) and (snap["probability"] or snap["gate"]):
            page.wait_for_timeout(400)  # late changes of the same run (the case report's button)
            return page.evaluate("() => window.__snaps[window.__snaps.length - 1]")
        if time.monotonic() > deadline:
            raise TimeoutError(f"Review did not settle on {name}: {snap}")


def _film_of(snap: dict, names: list[str]) -> str | None:
    caption = snap["caption"] or ""
    matches = [name for name in names if caption.startswith(name)]
    return max(matches, key=len) if matches else None


def _names(chip: str | None, name: str) -> bool:
    """The uploader's chip names ``name`` (it shortens a long one to "person...ia_475.jpeg")."""
    if not chip:
        return False
    head, _, tail = chip.partition("...")
    return name == chip or (bool(tail) and name.startswith(head) and name.endswith(tail))


def _owners(snap: dict, shown: dict[str, dict], names: list[str]) -> list[set[str]]:
    """For each result element on screen, the films it can belong to (by what each film showed settled)."""
    owners = []
    film = _film_of(snap, names)
    if snap["caption"] is not None:
        owners.append({film} if film else set())
    for part in ("call", "probability", "bar"):
        if snap[part] is not None:
            owners.append({name for name, settled in shown.items() if settled[part] == snap[part]})
    if snap["gate"]:
        owners.append({name for name, settled in shown.items() if settled["gate"]})
    return owners


def judge(snaps: list[dict], shown: dict[str, dict], names: list[str]) -> list[tuple[dict, float]]:
    """The moments whose result elements do not all belong to one film, with how long each lasted (ms).

    A film that was never settled on screen owns nothing, so its elements count as a mix with any other.
    """
    mixed = []
    for index, snap in enumerate(snaps):
        owners = _owners(snap, shown, names)
        if len(owners) > 1 and not set.intersection(*owners):
            until = snaps[index + 1]["t"] if index + 1 < len(snaps) else snap["t"]
            mixed.append((snap, until - snap["t"]))
    return mixed


def measure(page, paths: list[Path], uploads: int) -> list[Upload]:
    """Uploads films from ``paths`` in turn (``uploads`` times, never the same film twice in a row)
    on Review and judges every moment of each upload (``judge``). Each film is uploaded once first,
    unobserved, so that what it shows settled is known."""
    names = [path.name for path in paths]
    chooser = page.locator("input[type=file]").first
    shown: dict[str, dict] = {}
    page.evaluate(OBSERVER)
    for path in paths:  # what each film shows, settled
        chooser.set_input_files(str(path))
        shown[path.name] = _settled(page, path.name)
    results = []
    previous = paths[-1].name
    for number in range(uploads):
        path = paths[number % len(paths)]
        if path.name == previous:
            path = paths[(number + 1) % len(paths)]
        page.evaluate("() => { window.__snaps = [window.__snaps[window.__snaps.length - 1]]; }")
        chooser.set_input_files(str(path))
        _settled(page, path.name)
        snaps = page.evaluate("() => window.__snaps")
        upload = Upload(path.name, previous, moments=len(snaps))
        for snap, lasted in judge(snaps, shown, names):
            upload.mixed += 1
            upload.mixed_ms += lasted
            if len(upload.examples) < 3:
                upload.examples.append({key: value for key, value in snap.items() if key != "bar"} | {"lasted_ms": round(lasted, 1)})
        for index, snap in enumerate(snaps[:-1]):
            if _film_of(snap, names) == previous and _names(snap["uploader"], path.name):
                upload.previous_result_ms += snaps[index + 1]["t"] - snap["t"]
                if not snap["film_stale"]:
                    upload.previous_result_unmarked_ms += snaps[index + 1]["t"] - snap["t"]
        results.append(upload)
        previous = path.name
    return results


def summary(results: list[Upload]) -> dict:
    return {
        "uploads": len(results),
        "uploads_with_a_mix": sum(upload.mixed > 0 for upload in results),
        "mixed_moments": sum(upload.mixed for upload in results),
        "longest_mix_ms": round(max((upload.mixed_ms for upload in results), default=0.0), 1),
        "per_upload": [
            {
                "film": upload.film, "after": upload.previous, "moments": upload.moments, "mixed": upload.mixed,
                "mixed_ms": round(upload.mixed_ms, 1), "previous_result_with_new_upload_name_ms": round(upload.previous_result_ms, 1),
                "of_which_not_marked_stale_ms": round(upload.previous_result_unmarked_ms, 1),
                "examples": upload.examples,
            }
            for upload in results
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=10)
    parser.add_argument("--repo", type=Path, default=None, help="a checkout whose app.py to run (default: this one)")
    arguments = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    import tools.app_server as app_server

    if arguments.repo is not None:
        app_server.REPO_ROOT = arguments.repo.resolve()
    expect.set_options(timeout=SLOW_MS)
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        paths = films(Path(folder))
        with app_server.streamlit_app(Path(folder) / "streamlit.log", audit_db=Path(folder) / "audit.sqlite3") as url:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport=WINDOW).new_page()
            page.set_default_timeout(SLOW_MS)
            page.goto(url)
            page.locator("input[type=file]").first.wait_for(state="attached")
            print(json.dumps(summary(measure(page, paths, arguments.uploads)), indent=1))
            browser.close()


if __name__ == "__main__":
    main()
