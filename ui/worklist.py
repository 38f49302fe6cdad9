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
from pneumo_model.display import screen_grey
from pneumo_model.errors import PneumoError
from pneumo_model.paths import bytes_sha256
from pneumo_model.pipeline import DecodedImage
from pneumo_model.prediction import Predictor

COLUMNS = ["file", "probability", "call", "grey_zone", "ood", "ood_score", "operating_point", "error", "sha256", "thumbnail"]
THUMBNAIL_SIDE = 96


def _thumbnail(pixels: np.ndarray) -> str:
    """A small PNG of the grey image as a data URL, for ``st.column_config.ImageColumn``."""
    image = Image.fromarray(screen_grey(pixels, THUMBNAIL_SIDE))  # (h, w) uint8
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass(frozen=True)
class Worklist:
    """A scored batch of uploads.

    Attributes:
        table: one row per file (``COLUMNS``), sorted by probability, highest first, unreadable
            files last; ``ood`` is None when the model has no gate; ``operating_point`` is the id of
            the operating point that made the call (None for an unreadable file); ``sha256`` is the
            file's digest.
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
        row = {"file": name, "sha256": bytes_sha256(data)}
        try:
            with decode_slot():
                image = DecodedImage.decode(data)
            prediction = predictor.call(image)
            records.append(ResultRecord.of(prediction, row["sha256"], "app"))
            row |= {
                "error": None, "thumbnail": _thumbnail(image.pixels), "probability": prediction.probability,
                "call": prediction.label, "grey_zone": prediction.grey_zone, "ood": prediction.ood,
                "ood_score": prediction.ood_score, "operating_point": prediction.operating_point,
            }
            del image
        except PneumoError as error:
            row |= {"error": str(error), "thumbnail": None, "probability": np.nan, "call": None, "grey_zone": None,
                    "ood": None, "ood_score": np.nan, "operating_point": None}
        rows.append(row)
        if progress is not None:
            progress(index + 1, len(files))
    table = pd.DataFrame(rows, columns=COLUMNS)
    table = table.sort_values("probability", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    return Worklist(table, tuple(records))


HIDDEN_CALL = "hidden: not like a chest X-ray"


def masked(table: pd.DataFrame, show_flagged: bool) -> pd.DataFrame:
    """The table as shown: unless ``show_flagged``, images flagged by the out-of-distribution gate
    lose their probability, call and grey-zone flag and move after the scored ones (their place in
    the order would give their probability away). A new table; ``table`` is not changed."""
    shown = table.astype({"grey_zone": object, "call": object, "probability": float})
    if show_flagged:
        return shown
    hidden = shown["ood"].eq(True)
    shown.loc[hidden, "probability"] = np.nan
    shown.loc[hidden, "call"] = HIDDEN_CALL
    shown.loc[hidden, "grey_zone"] = None
    order = np.select([shown["error"].notna(), hidden], [2, 1], 0)
    return shown.assign(_order=order).sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def counts(shown: pd.DataFrame) -> dict[str, int]:
    """What the metrics above the table say, from the table as shown."""
    scored = shown[shown["error"].isna()]
    return {
        "scored": len(scored),
        "pneumonia": int((scored["call"] == "pneumonia").sum()),
        "grey_zone": int(scored["grey_zone"].eq(True).sum()),
        "flagged": int(scored["ood"].eq(True).sum()),
        "unreadable": int(shown["error"].notna().sum()),
    }


def to_csv(table: pd.DataFrame, model_sha: str) -> bytes:
    """The worklist as CSV (pass the table as shown), without thumbnails, with the model that scored it
    (each call's operating point is its own column).

    Written by the same ``write_csv`` as the audit trail's export: a file named ``=1+1.png`` is
    a text cell, never a formula.
    """
    export = table.drop(columns=["thumbnail"]).assign(model_sha=model_sha)
    rows = export.astype(object).where(export.notna(), None).to_dict("records")
    return write_csv(rows, list(export.columns), float_digits=6).encode("utf-8")
