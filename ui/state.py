"""The image chosen in this session, shared by the Review, Explain and Crop pages.

The choice lives in ``st.session_state`` (not in a widget's state, which Streamlit drops when
the user leaves the page), so it stays selected across pages until another image is chosen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from pneumo_model.artifacts import REPO_ROOT
from pneumo_model.data import parse_name
from pneumo_model.errors import DataError
from pneumo_model.preprocessing import SUPPORTED_FORMATS

SAMPLES_DIR = REPO_ROOT / "assets" / "samples"
_CHOSEN_KEY = "chosen_image"

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


@dataclass(frozen=True)
class ChosenImage:
    """An image the user picked.

    Attributes:
        name: file name shown to the user.
        data: the file's bytes, unchanged.
        source: "upload" or "sample".
    """

    name: str
    data: bytes
    source: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


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


def choose(image: ChosenImage) -> None:
    st.session_state[_CHOSEN_KEY] = image


def choose_sample(path: Path) -> None:
    """Button callback: makes a demo image the chosen one."""
    choose(ChosenImage(name=path.name, data=Path(path).read_bytes(), source="sample"))


def choose_upload(widget_key: str) -> None:
    """File-uploader callback: makes the uploaded file the chosen one (a cleared uploader keeps the choice)."""
    uploaded = st.session_state.get(widget_key)
    if uploaded is not None:
        choose(ChosenImage(name=uploaded.name, data=uploaded.getvalue(), source="upload"))
