"""The image chosen in this session, shared by the Review, Explain and Crop pages.

The choice lives in ``st.session_state`` (not in a widget's state, which Streamlit drops when
the user leaves the page), so it stays selected across pages until another image is chosen.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from pneumo_model.paths import REPO_ROOT, bytes_sha256
from pneumo_model.data import parse_name
from pneumo_model.errors import DataError
from pneumo_model.preprocessing import SUPPORTED_FORMATS, ImageLimits

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


@dataclass(frozen=True)
class Sample:
    """A demo image from ``assets/samples`` and the label its file name carries."""

    path: Path
    label: str

    @property
    def title(self) -> str:
        return f"{self.label}: {self.path.stem}"


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
        note_uploads()


# ----------------------------------------------------------------------------- lost uploads
# Uploaded files live only in the server's memory, with the session. When the server restarts
# (or the tab is reloaded), the browser reconnects to a new, empty session: the worklist's file
# chips stay on screen in red and nothing else would say the files are gone. A tab that uploaded
# something carries a mark in its URL (``?uploads=...``) and its menu links, which survive a
# restart; a new session that finds a mark this server never issued knows its files were lost.
UPLOADS_PARAM = "uploads"
_MARK_KEY = "uploads_mark"
_LOST_KEY = "uploads_lost"
SERVER_RESTARTED = (
    "**The server was restarted, so the files uploaded earlier in this tab are gone** (uploads are "
    "kept only in the server's memory, never on disk). Upload them again."
)


@st.cache_resource(show_spinner=False)
def _marks_of_this_server() -> set[str]:
    return set()


def note_uploads() -> bool:
    """Marks this tab as holding uploads (call it whenever files are uploaded).

    Returns:
        True when the mark is new: the page's menu was drawn without it, so a page that calls this
        after drawing the frame should ``st.rerun()`` once (a file uploader's callback need not).
    """
    st.session_state.pop(_LOST_KEY, None)
    mark = st.session_state.get(_MARK_KEY)
    new = mark is None
    if new:
        mark = secrets.token_urlsafe(9)
        _marks_of_this_server().add(mark)
        st.session_state[_MARK_KEY] = mark
    st.query_params[UPLOADS_PARAM] = mark
    return new


def upload_mark() -> dict[str, str] | None:
    """The query parameters that carry this tab's mark (for links), None when it uploaded nothing."""
    mark = st.session_state.get(_MARK_KEY)
    return None if mark is None else {UPLOADS_PARAM: mark}


def lost_uploads() -> str | None:
    """What to tell the user when this tab's earlier uploads are gone, else None; keeps the URL mark.

    Called once per run, before the page: a new session finding a mark this server never issued
    learns that the server restarted and its uploads were lost. (A mark this server issued, in a
    reloaded tab or a link opened in a new tab, says nothing: the other tab may still hold its
    files, and a reloaded uploader shows itself empty.) The message stays until something is
    uploaded again.
    """
    seen = st.query_params.get(UPLOADS_PARAM)
    mark = st.session_state.get(_MARK_KEY)
    if mark is None and seen is not None:
        if seen not in _marks_of_this_server():
            st.session_state[_LOST_KEY] = SERVER_RESTARTED
        del st.query_params[UPLOADS_PARAM]
    elif mark is not None and seen != mark:
        st.query_params[UPLOADS_PARAM] = mark  # a page switch dropped it
    return st.session_state.get(_LOST_KEY)
