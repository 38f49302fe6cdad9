"""Scoring a batch of uploads into a worklist table: readable files scored, unreadable ones listed."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
from collections.abc import Callable, Sequence
from typing import ContextManager

import numpy as np
import pandas as pd
from PIL import Image

from pneumo_model.audit import ResultRecord
from pneumo_model.csv_export import write_csv
from pneumo_model.display import screen_grey
from pneumo_model.errors import PneumoError
from pneumo_model.prediction import Predictor
from pneumo_model.preprocessing import load_image, preprocess

COLUMNS = ["file", "probability", "call", "grey_zone", "ood", "ood_score", "error", "sha256", "thumbnail"]
THUMBNAIL_SIDE = 96


def _thumbnail(pixels: np.ndarray) -> str:
    """A small PNG of the grey image as a data URL, for ``st.column_config.ImageColumn``."""
    image = Image.fromarray(screen_grey(pixels, THUMBNAIL_SIDE))  # (h, w) uint8
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def score_files(
    files: Sequence[tuple[str, bytes]],
    predictor: Predictor,
    progress: Callable[[int, int], None] | None = None,
    decode_slot: Callable[[], ContextManager] = contextlib.nullcontext,
) -> pd.DataFrame:
    """Scores every readable file; unreadable ones get a row with the reason instead.

    Each file is decoded, reduced to its model input and thumbnail, and dropped before the next,
    so a long list costs the memory of one image at a time.

    Args:
        files: ``(file name, bytes)`` pairs.
        predictor: the loaded model.
        progress: called as ``progress(done, total)`` after each file is decoded.
        decode_slot: entered around each decode (the app's limit on decodes at once).

    Returns:
        One row per file, columns ``COLUMNS``, sorted by probability (highest first) with
        unreadable files last. ``ood`` is None when the model has no gate; ``sha256`` is the
        file's digest (the audit trail's key).
    """
    rows, inputs, infos = [], [], []
    for index, (name, data) in enumerate(files):
        row = {"file": name, "sha256": hashlib.sha256(data).hexdigest()}
        try:
            with decode_slot():
                pixels, info = load_image(data)
            inputs.append(preprocess(pixels, predictor.input_size))  # (size, size, 1)
            infos.append(info)
            rows.append(row | {"error": None, "thumbnail": _thumbnail(pixels)})
        except PneumoError as error:
            rows.append(row | {"error": str(error), "thumbnail": None})
        if progress is not None:
            progress(index + 1, len(files))
    predictions = iter(predictor.predict_inputs(np.stack(inputs), infos) if inputs else [])
    for row in rows:
        if row["error"] is None:
            prediction = next(predictions)
            row.update(
                probability=prediction.probability,
                call=prediction.label,
                grey_zone=prediction.grey_zone,
                ood=prediction.ood,
                ood_score=prediction.ood_score,
            )
        else:
            row.update(probability=np.nan, call=None, grey_zone=None, ood=None, ood_score=np.nan)
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values("probability", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


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


def audit_records(table: pd.DataFrame, metadata) -> list[ResultRecord]:
    """One audit record per scored row (the real result, whatever the screen hides)."""
    return [
        ResultRecord(
            image_sha256=row.sha256,
            model_sha256=metadata.model_sha256,
            threshold=metadata.threshold,
            probability=float(row.probability),
            label=row.call,
            grey_zone=bool(row.grey_zone),
            source="app",
            ood=None if row.ood is None else bool(row.ood),
            ood_score=None if row.ood is None else float(row.ood_score),
        )
        for row in table[table["error"].isna()].itertuples()
    ]


def to_csv(table: pd.DataFrame, model_sha: str) -> bytes:
    """The worklist as CSV (pass the table as shown), without thumbnails, with the model that scored it.

    Written by the same ``write_csv`` as the audit trail's export: a file named ``=1+1.png`` is
    a text cell, never a formula.
    """
    export = table.drop(columns=["thumbnail"]).assign(model_sha=model_sha)
    rows = export.astype(object).where(export.notna(), None).to_dict("records")
    return write_csv(rows, list(export.columns), float_digits=6).encode("utf-8")
