"""Scoring a batch of uploads into a worklist table: readable files scored, unreadable ones listed."""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ContextManager

import numpy as np
import pandas as pd
from PIL import Image

from pneumo_model.audit import ResultRecord
from pneumo_model.csv_export import write_csv
from pneumo_model.dicom import population_note
from pneumo_model.display import screen_grey
from pneumo_model.errors import PneumoError
from pneumo_model.ood import OUTSIDE, known_grade
from pneumo_model.ood import UNUSUAL as GRADE_UNUSUAL
from pneumo_model.paths import bytes_sha256
from pneumo_model.pipeline import DecodedImage
from pneumo_model.prediction import Predictor

COLUMNS = [
    "file", "probability", "call", "grey_zone", "subtype", "subtype_probability", "ood", "ood_score", "ood_grade",
    "age_years", "operating_point", "error", "sha256", "thumbnail", "upload",
]
THUMBNAIL_SIDE = 96
SESSION_KEY = "worklist"  # the page's ``Worklist`` in ``st.session_state``; the trail reads its thumbnails
# The worklist page's other values in ``st.session_state`` (``ui.state.KEPT_KEYS`` keeps them through a reload).
IDS_KEY = "worklist_ids"  # which uploads or PACS study the worklist is
FILES_KEY = "worklist_files"  # (name, bytes) of each file scored: the worklist outlives the uploader's state
PAGE_KEY = "worklist_page"
OPENED_KEY = "worklist_opened"  # the ``upload`` position of the row opened last


def thumbnail(pixels: np.ndarray) -> str:
    """A small PNG of the grey image as a data URL, for ``st.column_config.ImageColumn`` (kept in
    the session only, never stored)."""
    image = Image.fromarray(screen_grey(pixels, THUMBNAIL_SIDE))  # (h, w) uint8
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass(frozen=True)
class Worklist:
    """A scored batch of uploads.

    Attributes:
        table: one row per file (``COLUMNS``), sorted by probability, highest first, unreadable
            files last; ``ood`` is None when the model has no gate; ``ood_grade`` is the gate's grade
            (``ood.OOD_GRADES``: an ``outside`` call is hidden); ``age_years`` the age a DICOM header
            gives (None without one); ``operating_point`` is the id of
            the operating point that made the call (None for an unreadable file); ``subtype`` and
            ``subtype_probability`` the radiographic pattern and its calibrated probability of the viral
            pattern (``Prediction``'s; None when not applicable or off); ``sha256`` is the
            file's digest; ``upload`` its position in the list scored (which file a row is, even
            when two files have the same name or the same bytes).
        records: the audit record of each scored file, made from its ``Prediction`` (the real
            result, whatever the screen hides).
    """

    table: pd.DataFrame
    records: tuple[ResultRecord, ...]


def score_files(
    files: Sequence[tuple[str, bytes]],
    predictor: Predictor,
    progress: Callable[[int, int], None] | None = None,
    decode_slot: Callable[[], ContextManager] = contextlib.nullcontext,
) -> Worklist:
    """Scores every readable file; unreadable ones get a row with the reason instead.

    Each file is decoded (``DecodedImage``), called (``Predictor.call``, as on Review) and reduced
    to its thumbnail, and its full-size pixels are dropped before the next, so a long list costs the
    memory of one image at a time.

    Args:
        files: ``(file name, bytes)`` pairs.
        predictor: the loaded model.
        progress: called as ``progress(done, total)`` after each file is scored.
        decode_slot: entered around each decode (the app's limit on decodes at once).
    """
    rows, records = [], []
    for index, (name, data) in enumerate(files):
        row = {"file": name, "sha256": bytes_sha256(data), "upload": index}
        try:
            with decode_slot():
                image = DecodedImage.decode(data, whole=True)  # its thumbnail: the whole image, in the slot
            prediction = predictor.call(image)
            records.append(ResultRecord.of(prediction, row["sha256"], "app"))
            row |= {
                "error": None, "thumbnail": thumbnail(image.pixels), "probability": prediction.probability,
                "call": prediction.label, "grey_zone": prediction.grey_zone, "ood": prediction.ood,
                "subtype": prediction.subtype, "subtype_probability": prediction.subtype_probability,
                "ood_score": prediction.ood_score, "operating_point": prediction.operating_point,
                "ood_grade": known_grade(prediction.ood_grade, prediction.ood_score),
                "age_years": prediction.info.age_years,
            }
            del image
        except PneumoError as error:
            row |= {"error": str(error), "thumbnail": None, "probability": np.nan, "call": None, "grey_zone": None,
                    "subtype": None, "subtype_probability": np.nan, "ood": None, "ood_score": np.nan, "ood_grade": None,
                    "age_years": None, "operating_point": None}
        rows.append(row)
        if progress is not None:
            progress(index + 1, len(files))
    table = pd.DataFrame(rows, columns=COLUMNS)
    table = table.sort_values("probability", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    return Worklist(table, tuple(records))


HIDDEN_CALL = "hidden: not like a chest X-ray"
HIDDEN_ON_SCREEN = "hidden"  # the table's narrow call column; its flags column says "not X-ray-like"


def hidden_rows(table: pd.DataFrame) -> pd.Series:
    """Which rows' calls the gate hides: its ``outside`` grade (an ``unusual`` film keeps its call). A
    table scored before the grades were kept (no ``ood_grade`` column) hides by the single cut, as then."""
    if "ood_grade" not in table:
        return table["ood"].eq(True)
    return table["ood_grade"].eq(OUTSIDE)


def masked(table: pd.DataFrame, show_flagged: bool) -> pd.DataFrame:
    """The table as shown: unless ``show_flagged``, images the out-of-distribution gate grades
    ``outside`` lose their probability, call, grey-zone flag and pattern and move after the scored ones (their place in
    the order would give their probability away). A new table; ``table`` is not changed."""
    shown = table.astype({"grey_zone": object, "call": object, "probability": float, "subtype": object,
                          "subtype_probability": float})
    if show_flagged:
        return shown
    hidden = hidden_rows(shown)
    shown.loc[hidden, "probability"] = np.nan
    shown.loc[hidden, "call"] = HIDDEN_CALL
    shown.loc[hidden, "grey_zone"] = None
    shown.loc[hidden, "subtype"] = None  # a flagged film has none (``Prediction.subtype_applies``): hidden anyway
    shown.loc[hidden, "subtype_probability"] = np.nan
    order = np.select([shown["error"].notna(), hidden], [2, 1], 0)
    return shown.assign(_order=order).sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def counts(shown: pd.DataFrame) -> dict[str, int]:
    """What the metrics above the table say, from the table as shown."""
    scored = shown[shown["error"].isna()]
    return {
        "scored": len(scored),
        "pneumonia": int((scored["call"] == "pneumonia").sum()),
        "grey_zone": int(scored["grey_zone"].eq(True).sum()),
        "flagged": int(hidden_rows(scored).sum()),
        "unreadable": int(shown["error"].notna().sum()),
    }


def to_csv(table: pd.DataFrame, model_sha: str) -> bytes:
    """The worklist as CSV (pass the table as shown), without thumbnails, with the model that scored it
    (each call's operating point is its own column).

    Written by the same ``write_csv`` as the audit trail's export: a file named ``=1+1.png`` is
    a text cell, never a formula.
    """
    export = table.drop(columns=["thumbnail", "upload"], errors="ignore").assign(model_sha=model_sha)
    rows = export.astype(object).where(export.notna(), None).to_dict("records")
    return write_csv(rows, list(export.columns), float_digits=6).encode("utf-8")


# ----------------------------------------------------------------------------- the table on screen
INDETERMINATE = "indeterminate"
NOT_XRAY_LIKE = "not X-ray-like"  # the gate's ``outside`` grade: the call is hidden
UNUSUAL = "unusual: read with care"  # the gate's ``unusual`` grade: the call is shown
OLDER = "age over 5"  # the header's age is outside the trained population (children aged 1-5)
UNREADABLE = "unreadable"
FLAGS = (INDETERMINATE, UNUSUAL, NOT_XRAY_LIKE, OLDER, UNREADABLE)
CALLS = ("pneumonia", "normal")
# How the rows may be put in order; the first is the order the worklist is scored in.
ORDERS = {
    "probability, highest first": (["probability"], [False]),
    "probability, lowest first": (["probability"], [True]),
    "file name": (["file"], [True]),
    "upload order": (["upload"], [True]),
}
ROWS_PER_PAGE = 10


def for_screen(shown: pd.DataFrame, verdicts: dict[str, str] | None = None) -> pd.DataFrame:
    """The shown table (``masked``) with what a reader scans for in words: ``flags`` ("indeterminate",
    "unusual: read with care", "not X-ray-like", "age over 5", "unreadable", joined by commas; empty when none), ``verdict`` (this tab's
    verdict on the row's image, from ``verdicts`` keyed by SHA-256; None when none), and a hidden
    call as ``HIDDEN_ON_SCREEN``. A new table."""
    verdicts = verdicts or {}
    has = _flagged(shown)
    flags = [", ".join(flag for flag in FLAGS if has[flag][index]) for index in range(len(shown))]
    return shown.assign(
        call=shown["call"].where(shown["call"] != HIDDEN_CALL, HIDDEN_ON_SCREEN),
        flags=flags,
        verdict=[verdicts.get(sha) for sha in shown["sha256"]],
    )


def _flagged(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Which rows carry each flag (a hidden image has no grey-zone flag in the table as shown)."""
    return {
        INDETERMINATE: table["grey_zone"].eq(True).to_numpy(),
        UNUSUAL: table["ood_grade"].eq(GRADE_UNUSUAL).to_numpy() if "ood_grade" in table else np.zeros(len(table), bool),
        NOT_XRAY_LIKE: hidden_rows(table).to_numpy(),
        OLDER: np.array([population_note(age) is not None for age in _ages(table)], dtype=bool),
        UNREADABLE: table["error"].notna().to_numpy(),
    }


def _ages(table: pd.DataFrame) -> list[float | None]:
    if "age_years" not in table:
        return [None] * len(table)
    return [None if age is None or pd.isna(age) else float(age) for age in table["age_years"].astype(object)]


def selected(
    table: pd.DataFrame, calls: Sequence[str] = (), flags: Sequence[str] = (), order: str = next(iter(ORDERS))
) -> pd.DataFrame:
    """The rows a reader asked for, in the order asked for. A new table; ``table`` is not changed.

    Args:
        table: the table as shown (``masked``): a hidden call is neither pneumonia nor normal here,
            and a hidden image has no grey-zone flag, so no filter gives a hidden call away.
        calls: keep the rows with one of these calls (``CALLS``); empty keeps every call.
        flags: keep the rows with at least one of these flags (``FLAGS``); empty keeps every row.
        order: one of ``ORDERS``. Rows without a probability (hidden calls, unreadable files) stay
            after the others when sorting by probability, in the table's own order.

    Raises:
        ValueError: an unknown call, flag or order (a bug in the page, not a user's error).
    """
    unknown = (set(calls) - set(CALLS)) | (set(flags) - set(FLAGS)) | ({order} - set(ORDERS))
    if unknown:
        raise ValueError(f"Unknown worklist filter or order: {sorted(unknown)}")
    keep = np.ones(len(table), bool)
    if calls:
        keep &= table["call"].isin(list(calls)).to_numpy()
    if flags:
        has = _flagged(table)
        keep &= np.logical_or.reduce([has[flag] for flag in flags])
    columns, ascending = ORDERS[order]
    rows = table[keep]
    return rows.sort_values(columns, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)


def page_of(rows: pd.DataFrame, page: int, per_page: int = ROWS_PER_PAGE) -> tuple[pd.DataFrame, int, int]:
    """One page of ``rows``: ``(those rows, the page number kept inside 1..pages, pages)``; a table
    with no rows has one, empty, page."""
    pages = max(1, -(-len(rows) // per_page))
    page = min(max(1, int(page)), pages)
    return rows.iloc[(page - 1) * per_page : page * per_page].reset_index(drop=True), page, pages
