"""The image chosen in this session, shared by the Review, Explain and Crop pages.

The choice lives in ``st.session_state`` (not in a widget's state, which Streamlit drops when
the user leaves the page), so it stays selected across pages until another image is chosen.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from pneumo_model.paths import REPO_ROOT, bytes_sha256
from pneumo_model.data import parse_name
from pneumo_model.errors import DataError
from pneumo_model.preprocessing import SUPPORTED_FORMATS, ImageLimits

from . import tab_store as tab_store_module

SAMPLES_DIR = REPO_ROOT / "assets" / "samples"
_CHOSEN_KEY = "chosen_image"
REVIEW_UPLOADER = "review_upload"
_REVIEW_ROUND_KEY = "review_upload_round"

# File name endings the uploaders accept: the usual ones of each format the package decodes.
_EXTENSIONS = {
    "PNG": ("png",),
    "JPEG": ("jpg", "jpeg"),
    "BMP": ("bmp",),
    "TIFF": ("tif", "tiff"),
    "DICOM": ("dcm", "dicom"),
}
UPLOAD_TYPES = [extension for fmt in SUPPORTED_FORMATS for extension in _EXTENSIONS.get(fmt, (fmt.lower(),))]
UPLOAD_FORMATS = ", ".join(SUPPORTED_FORMATS[:-1]) + " or " + SUPPORTED_FORMATS[-1]
# Per image, in Streamlit's MB (2**20 bytes): the package's own limit. The server's
# ``server.maxUploadSize`` is higher for the Site calibration page's zip, so every image uploader
# passes this: the browser refuses a larger image before sending it, and the package refuses it
# with its plain message if it arrives by another route.
IMAGE_UPLOAD_MB = ImageLimits().max_bytes // 2**20


@dataclass(frozen=True)
class ChosenImage:
    """An image the user picked.

    Attributes:
        name: file name shown to the user.
        data: the file's bytes, unchanged.
        source: "upload", "sample" or "pacs" (retrieved from the PACS into the worklist).
    """

    name: str
    data: bytes
    source: str
    digest: str = field(init=False, repr=False, compare=False)  # SHA-256 of ``data``, computed once

    def __post_init__(self):
        object.__setattr__(self, "digest", bytes_sha256(self.data))


# The data set's diagnosis of each demo, as its button says it: words that cannot be read as the
# model's call ("Bacterial" beside the model's "Pneumonia · indeterminate" once read as its verdict).
_LABEL_WORDS = {"Normal": "normal", "Bacterial": "bacterial pneumonia", "Viral": "viral pneumonia"}


@dataclass(frozen=True)
class Sample:
    """A demo image from ``assets/samples`` and the label its file name carries."""

    path: Path
    label: str

    @property
    def title(self) -> str:
        """The button's words: 'data set label: bacterial pneumonia · person153_bacteria_726'."""
        return f"data set label: {_LABEL_WORDS[self.label]} · {self.path.stem}"


def samples() -> list[Sample]:
    """The demo images, normal first, then bacterial, then viral pneumonia."""
    found = []
    for path in sorted(SAMPLES_DIR.iterdir()):
        if path.suffix.lstrip(".").lower() not in UPLOAD_TYPES:
            continue
        try:
            _, subtype = parse_name(path.name)
        except DataError:
            continue
        label = {None: "Normal", "bacteria": "Bacterial", "virus": "Viral"}[subtype]
        found.append(Sample(path, label))
    order = {"Normal": 0, "Bacterial": 1, "Viral": 2}
    return sorted(found, key=lambda sample: (order[sample.label], sample.path.name))


def chosen() -> ChosenImage | None:
    return st.session_state.get(_CHOSEN_KEY)


def choose(image: ChosenImage, widget_key: str | None = None) -> None:
    """Makes ``image`` the chosen one; ``widget_key`` is the uploader it came from, if any.

    An image chosen any other way (a demo, a worklist row) empties the Review page's uploader, so
    that it never shows the file it held beside another image's call. A file uploader cannot be
    emptied from the server; a widget under a new key is a new, empty one (``review_uploader_key``).
    """
    st.session_state[_CHOSEN_KEY] = image
    note_uploads()  # the tab keeps its choice through a reload (``keep_tab``)
    held = review_uploader_key()
    if widget_key != held and st.session_state.get(held) is not None:
        st.session_state[_REVIEW_ROUND_KEY] = st.session_state.get(_REVIEW_ROUND_KEY, 0) + 1


def review_uploader_key() -> str:
    """The Review page uploader's key now: ``review_upload``, and a new one each time it is emptied."""
    round_ = st.session_state.get(_REVIEW_ROUND_KEY, 0)
    return REVIEW_UPLOADER if round_ == 0 else f"{REVIEW_UPLOADER}_{round_}"


def choose_sample(path: Path) -> None:
    """Button callback: makes a demo image the chosen one."""
    choose(ChosenImage(name=path.name, data=Path(path).read_bytes(), source="sample"))


def choose_bytes(name: str, data: bytes, source: str = "upload") -> None:
    """Makes these bytes the chosen image: a worklist row opened on the other pages (the bytes its
    uploader held, unchanged, so every page computes on the very file the row was scored from)."""
    choose(ChosenImage(name=name, data=data, source=source))


def choose_upload(widget_key: str) -> None:
    """File-uploader callback: makes the uploaded file the chosen one (a cleared uploader keeps the choice)."""
    uploaded = st.session_state.get(widget_key)
    if uploaded is not None:
        choose(ChosenImage(name=uploaded.name, data=uploaded.getvalue(), source="upload"), widget_key)


# ----------------------------------------------------------------------------- lost uploads
# Uploaded files live only in the server's memory, with the session. When the server restarts
# (or the tab is reloaded), the browser reconnects to a new, empty session: the worklist's file
# chips stay on screen in red and nothing else would say the files are gone. A tab that uploaded
# or chose something carries a mark in its URL (``?uploads=...``) and its menu links, which survive
# a reload and a restart; a new session that finds a mark this server never issued knows its files
# were lost. A mark this server issued is the key of what the tab keeps through a reload
# (``ui.tab_store``): a new session gets it back only if it is that tab come back.
UPLOADS_PARAM = "uploads"
_MARK_KEY = "uploads_mark"
_LOST_KEY = "uploads_lost"
SERVER_RESTARTED = (
    "**The server was restarted, so the files uploaded earlier in this tab are gone** (uploads are "
    "kept only in the server's memory, never on disk). Upload them again."
)
OTHER_TAB = (
    "**This link belongs to another tab; its images are not shown here.** Each tab keeps its own "
    "images and worklist: upload files or pick a demo image to start in this one."
)
LIME_STOPPED = "**The LIME explanation that was running was stopped by the reload**; run it again."
WORKLIST_STOPPED = (
    "**The worklist that was being scored was stopped by the reload**, and its files went with it; upload "
    "them again."
)
# What a tab keeps through a reload: the chosen image, the worklist (its files, scored table, page
# and opened row; ``pages/worklist.py`` and ``ui.worklist``), what it recorded in the audit trail
# (so a reload records nothing twice, and the table still marks its verdicts), the PACS study and
# reports sent, and the last LIME asked for. Widgets' own states (filters, ticks) start afresh.
WORKLIST_KEYS = ("worklist", "worklist_ids", "worklist_files", "worklist_page", "worklist_opened", "pacs_retrieved")
KEPT_KEYS = (
    _CHOSEN_KEY,
    # ui.audit: results recorded once, reveals, and the verdicts given (a second one asks first)
    "audit_recorded", "audit_revealed", "audit_verdicts", "audit_verdict_log",
    *WORKLIST_KEYS,  # ui.worklist, ui.pacs_source
    "pacs_sent",  # ui.pacs_source
    "lime_request",  # pages/explain.py
)


@st.cache_resource(show_spinner=False)
def _marks_of_this_server() -> set[str]:
    return set()


@st.cache_resource(show_spinner=False)
def kept_tabs() -> tab_store_module.TabStore:
    """The server's one store of what tabs keep through a reload (in memory, never on disk)."""
    return tab_store_module.TabStore(tab_store_module.StoreLimits())


def note_uploads() -> bool:
    """Marks this tab as holding uploads or a chosen image (call it whenever files are uploaded).

    Returns:
        True when the mark is new: the page's menu was drawn without it, so a page that calls this
        after drawing the frame should ``st.rerun()`` once (a file uploader's callback need not).
    """
    st.session_state.pop(_LOST_KEY, None)
    mark = st.session_state.get(_MARK_KEY)
    new = mark is None
    if new:
        mark = _new_mark()
    st.query_params[UPLOADS_PARAM] = mark
    return new


def _new_mark() -> str:
    """A mark nobody can guess (128 random bits): it is all that stands between a URL and a tab's films."""
    mark = secrets.token_urlsafe(16)
    _marks_of_this_server().add(mark)
    st.session_state[_MARK_KEY] = mark
    return mark


def upload_mark() -> dict[str, str] | None:
    """The query parameters that carry this tab's mark (for links), None when it uploaded nothing."""
    mark = st.session_state.get(_MARK_KEY)
    return None if mark is None else {UPLOADS_PARAM: mark}


def lost_uploads() -> str | None:
    """What to tell the user when this tab's earlier work is gone, else None; keeps the URL mark.

    Called once per run, before the page (``ui.frame.render``), which makes it also the place
    where a tab's work is kept and given back:

    - a new session finding a mark this server never issued learns that the server restarted and
      its uploads were lost (``SERVER_RESTARTED``);
    - a new session finding a mark this server issued gets that tab's chosen image and worklist
      back when it is that tab reloaded (``come_back``), with a word on anything the reload
      stopped; a second tab or a pasted link gets nothing but ``OTHER_TAB``;
    - every run keeps this tab's values for the next reload (``keep_tab``).

    The message stays until something is uploaded or chosen again.
    """
    seen = st.query_params.get(UPLOADS_PARAM)
    mark = st.session_state.get(_MARK_KEY)
    if mark is None and seen is not None:
        if seen not in _marks_of_this_server():
            st.session_state[_LOST_KEY] = SERVER_RESTARTED
            del st.query_params[UPLOADS_PARAM]
        elif not come_back(seen):
            del st.query_params[UPLOADS_PARAM]
    elif mark is not None and seen != mark:
        st.query_params[UPLOADS_PARAM] = mark  # a page switch dropped it
    keep_tab()
    return st.session_state.get(_LOST_KEY)


# ----------------------------------------------------------------------------- kept through a reload
def _session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    context = get_script_run_ctx()
    return context.session_id if context is not None else ""


def _session_alive(session_id: str) -> bool:
    """Whether that session's tab is still connected (Streamlit's runtime; none under AppTest)."""
    from streamlit import runtime

    return runtime.exists() and runtime.get_instance().is_active_session(session_id)


def _user() -> str | None:
    """The signed-in user's subject; None in local mode (one workstation, no sign-in)."""
    from . import access

    identity = access.current()
    return None if identity is None else identity.subject


def _browser() -> str | None:
    """The browser's token in Streamlit's XSRF cookie: the same in every tab of one browser."""
    try:
        cookie = st.context.cookies.get("_streamlit_xsrf")
    except Exception:  # no request behind this run
        cookie = None
    return tab_store_module.browser_key(cookie if isinstance(cookie, str) else None)  # AppTest: a mock


def come_back(mark: str) -> bool:
    """Gives this new session the values kept under ``mark`` if it is the tab that owned them,
    come back (reloaded); says what was lost or that the mark is another tab's.

    Returns:
        Whether this session now owns the mark (keep it in the URL).
    """
    claim = kept_tabs().claim(mark, _session_id(), _user(), _browser(), _session_alive)
    if claim.outcome == tab_store_module.RESTORED:
        st.session_state.update(claim.values)
        st.session_state[_MARK_KEY] = mark
        if claim.lost:
            st.session_state[_LOST_KEY] = " ".join(claim.lost)
        kept = restored_words(claim.values)
        if kept:
            st.toast(f"Kept through the reload: {kept}.", icon=":material/restore_page:")
        return True
    if claim.outcome == tab_store_module.OTHER_TAB:
        st.session_state[_LOST_KEY] = OTHER_TAB
    elif claim.outcome == tab_store_module.DROPPED:
        st.session_state[_LOST_KEY] = " ".join(claim.lost)
    return False


def restored_words(values) -> str:
    """'the chosen image person153_bacteria_726.jpeg and the worklist of 30 files', from kept values."""
    from .markup import plain

    words = []
    image = values.get(_CHOSEN_KEY)
    if image is not None:
        words.append(f"the chosen image {plain(image.name)}")
    files = values.get("worklist_files")
    if files:
        words.append(f"the worklist of {len(files)} file{'s' if len(files) != 1 else ''}")
    return " and ".join(words)


def keep_tab() -> None:
    """Keeps this tab's values (``KEPT_KEYS``) for its next reload; nothing without a mark.

    Called at the start of every run (by ``lost_uploads``) and after a page changes them in the
    middle of a run (a worklist scored). A new run also means that nothing of the last one is
    still running.
    """
    mark = st.session_state.get(_MARK_KEY)
    if mark is None:
        return
    store, me = kept_tabs(), _session_id()
    store.finished(mark, me)
    values = {key: st.session_state[key] for key in KEPT_KEYS if key in st.session_state}
    if not store.save(mark, me, _user(), _browser(), values):
        # This tab came back after another session took its mark over (its link opened while it
        # was away): it keeps its own work under a new mark.
        mark = _new_mark()
        st.query_params[UPLOADS_PARAM] = mark
        store.save(mark, me, _user(), _browser(), values)


@contextlib.contextmanager
def stopped_by_reload(note: str, drop: Iterable[str] = ()) -> Iterator[None]:
    """Around work that a reload stops (LIME, scoring a worklist): a tab reloaded meanwhile is told
    ``note`` and does not get the keys ``drop`` back (they would start the work again unasked)."""
    mark = st.session_state.get(_MARK_KEY)
    if mark is not None:
        kept_tabs().running(mark, _session_id(), note, drop)
    yield
    # Not reached when the run is stopped or rerun: the note stays for a reload, and the next run
    # of this session (``keep_tab``) clears it.
    if st.session_state.get(_LOST_KEY) == note:
        st.session_state.pop(_LOST_KEY)  # done again, so no longer lost
    keep_tab()
