"""Scoring a batch of uploads into a worklist table: readable files scored, unreadable ones listed."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from pneumo_model.errors import PneumoError
from pneumo_model.prediction import Predictor
from pneumo_model.preprocessing import load_image, preprocess

from .drawing import display_copy

COLUMNS = ["file", "probability", "call", "grey_zone", "error", "thumbnail"]
THUMBNAIL_SIDE = 96


def _thumbnail(pixels: np.ndarray) -> str:
    """A small PNG of the grey image as a data URL, for ``st.column_config.ImageColumn``."""
    grey = np.round(display_copy(pixels, THUMBNAIL_SIDE) * 255.0).astype(np.uint8)  # (h, w)
    image = Image.fromarray(grey)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def score_files(
    files: Sequence[tuple[str, bytes]],
    predictor: Predictor,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Scores every readable file; unreadable ones get a row with the reason instead.

    Args:
        files: ``(file name, bytes)`` pairs.
        predictor: the loaded model.
        progress: called as ``progress(done, total)`` after each file is decoded.

    Returns:
        One row per file, columns ``COLUMNS``, sorted by probability (highest first) with
        unreadable files last.
    """
    rows, inputs = [], []
    for index, (name, data) in enumerate(files):
        try:
            pixels, _ = load_image(data)
            inputs.append(preprocess(pixels, predictor.input_size))  # (size, size, 1)
            rows.append({"file": name, "error": None, "thumbnail": _thumbnail(pixels)})
        except PneumoError as error:
            rows.append({"file": name, "error": str(error), "thumbnail": None})
        if progress is not None:
            progress(index + 1, len(files))
    probabilities = iter(predictor.probabilities(np.stack(inputs)) if inputs else [])  # (n readable,)
    for row in rows:
        if row["error"] is None:
            probability = float(next(probabilities))
            row["probability"] = probability
            row["call"] = predictor.label_for(probability)
            row["grey_zone"] = bool(predictor.grey_zone.contains(probability))
        else:
            row.update(probability=np.nan, call=None, grey_zone=None)
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values("probability", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def to_csv(table: pd.DataFrame, model_sha: str) -> bytes:
    """The worklist as CSV, without thumbnails, with the model that scored it."""
    export = table.drop(columns=["thumbnail"]).assign(model_sha=model_sha)
    return export.to_csv(index=False, float_format="%.6f").encode("utf-8")
