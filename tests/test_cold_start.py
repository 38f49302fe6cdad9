"""A cold server's first call waits for nothing it does not use (issue 25: a demo's call on screen
within 4 s of the server answering, ``tools.first_paint --demo``).

The Review page's way to a call (the frame, the model, the page's own imports, then a demo image's
call) imports no display or table library: each is imported where it is used, after the call is
drawn (the probability bar's matplotlib) or on another page. The heap is still frozen with every
library in it, as when everything was imported up front (``ui.frame._freeze_heap``: full
collections stay short). Each check runs the page in a fresh interpreter, where nothing was
imported before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Libraries the Review page's call does not use; each costs a 2-core server a tenth of a second or more.
NOT_ON_THE_WAY = ("matplotlib", "pandas", "scipy", "skimage", "sklearn", "lime", "pyarrow", "tensorflow", "keras")

pytestmark = pytest.mark.shipped_model


def run_fresh(code: str, audit_db: Path) -> dict:
    """Runs ``code`` in a fresh interpreter in the repository; returns the JSON it printed last."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "PNEUMO_AUDIT_DB": str(audit_db), "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def loaded(modules: list[str], names=NOT_ON_THE_WAY) -> list[str]:
    return sorted({name.split(".")[0] for name in modules} & set(names))


def test_the_review_pages_way_to_a_demo_call_imports_no_display_or_table_library(audit_db):
    # What the page has imported when the call is drawn is read from inside ``show_call``.
    code = f"""
import json, sys
from streamlit.testing.v1 import AppTest
from ui import call_view
seen = {{}}
show_call = call_view.show_call
def noting(*args, **kwargs):
    seen.setdefault("modules", sorted(sys.modules))
    return show_call(*args, **kwargs)
call_view.show_call = noting
app = AppTest.from_file({str(REPO / "app.py")!r}, default_timeout=120).run()
first = sorted(sys.modules)
demos = [button for button in app.sidebar.button if button.label.startswith("data set label")]
demos[0].click().run()
assert not app.exception, app.exception
print(json.dumps({{"first": first, "call": seen["modules"], "metrics": [metric.label for metric in app.metric]}}))
"""
    found = run_fresh(code, audit_db)
    assert "onnxruntime" in found["first"] and "ui.call_view" in found["first"]  # the model and the page loaded
    assert loaded(found["first"]) == []
    assert loaded(found["call"]) == []
    assert any(label.startswith("Probability of pneumonia") for label in found["metrics"])  # the call was drawn


def test_the_heap_is_frozen_once_the_first_page_is_drawn_and_again_after_a_page_loaded_a_library(audit_db):
    # The freeze keeps full collections short (ui.frame._freeze_heap); a library imported by a page
    # (matplotlib, by the call's probability bar) is frozen too, at the start of the next page run.
    code = f"""
import gc, json, sys
from streamlit.testing.v1 import AppTest
app = AppTest.from_file({str(REPO / "app.py")!r}, default_timeout=120).run()
assert not app.exception, app.exception
first = gc.get_freeze_count()
demos = [button for button in app.sidebar.button if button.label.startswith("data set label")]
demos[0].click().run()
assert not app.exception, app.exception
bar_loaded = "matplotlib.figure" in sys.modules
app.run()  # the next run of the page, as the reader's next click makes
assert not app.exception, app.exception
print(json.dumps({{"first": first, "after": gc.get_freeze_count(), "bar_loaded": bar_loaded,
                   "walked": len(gc.get_objects())}}))
"""
    found = run_fresh(code, audit_db)
    assert found["first"] > 0  # the model and its libraries, frozen once the first page was drawn
    assert found["bar_loaded"] and found["after"] > found["first"]  # and matplotlib, at the next run
    assert found["walked"] < found["after"] / 10  # what a full collection still walks
