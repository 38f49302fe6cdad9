"""The one way an image travels: bytes, decoded once, then every step takes the decoded image.

``DecodedImage.decode`` reads and decodes a file (or bytes) once: its SHA-256 (the audit trail's
key), the pixels the model input is made from (``load_model_pixels``: a large JPEG decoded at
reduced DCT scale, everything else as ``load_image`` returns it) and its ``ImageInfo``. The model
input is made once per input size, on first use, always from the same pixels for the same bytes;
the whole-size ``pixels`` (for the screen, crops, markers, the diaphragm) are decoded on first use
when they differ from those, so a batch job that only scores never pays for them.
``Predictor.call``, ``Predictor.call_on_crop`` and ``Predictor.rescore`` take it; the app, the
CLI, ``batch``, evaluation and the benchmark all go through them, so the same bytes get the same
probability and the same gate everywhere.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .paths import bytes_sha256
from .preprocessing import (
    DEFAULT_INPUT_SIZE, DRAFT_RATIO, ImageInfo, ImageLimits, load_image, load_model_pixels, preprocess, read_image_bytes
)


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """An image decoded once, as every later step takes it.

    Attributes:
        digest: SHA-256 of the file's bytes, 64 hex digits.
        info: the image's facts and warnings (as ``load_image`` states them).
        draft: a JPEG decoded at reduced scale for the model input (read-only, uint8), or None
            when the model input is made from ``pixels``.
    """

    digest: str
    info: ImageInfo
    draft: np.ndarray | None = None
    # {"pixels": the working-size array} once decoded; before that {"data", "limits"} to decode it from.
    _whole: dict = field(default_factory=dict, repr=False)
    _inputs: dict = field(default_factory=dict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __post_init__(self):
        # Shared by every step, and by every session in the app.
        for array in (self.draft, self._whole.get("pixels")):
            if array is not None:
                array.flags.writeable = False

    @classmethod
    def decode(cls, source: str | Path | bytes, limits: ImageLimits = ImageLimits(), *, whole: bool = False) -> "DecodedImage":
        """Reads and decodes a file or its bytes.

        Args:
            whole: also decode the whole-size ``pixels`` now when the model's come from a draft
                (the app does, inside its decode slot, to show the image); otherwise on first use.

        Raises:
            InvalidImageError: the image cannot be used (see ``load_image``; the message says why).
        """
        data = read_image_bytes(source, limits)
        pixels, info, drafted = load_model_pixels(data, limits)
        if not drafted:
            return cls(bytes_sha256(data), info, None, {"pixels": pixels})
        image = cls(bytes_sha256(data), info, pixels, {"data": data, "limits": limits})
        if whole:
            image.pixels  # noqa: B018 - decoded now
        return image

    @property
    def pixels(self) -> np.ndarray:
        """The 2-D grey array ``load_image`` returns for these bytes (uint8 or uint16), read-only."""
        with self._lock:
            if "pixels" not in self._whole:
                pixels, _ = load_image(self._whole["data"], self._whole["limits"])
                pixels.flags.writeable = False
                self._whole.clear()  # the bytes are no longer needed
                self._whole["pixels"] = pixels
            return self._whole["pixels"]

    def model_input(self, size: int) -> np.ndarray:
        """The model input, made once per size: (size, size, 1) float32 in [0, 1], read-only.

        ``preprocess`` of the draft when its short side is at least ``DRAFT_RATIO`` times ``size``
        (always, for the 128 px model and a drafted JPEG), else of ``pixels``.
        """
        with self._lock:
            if size not in self._inputs:
                draft = self.draft
                source = draft if draft is not None and min(draft.shape) >= DRAFT_RATIO * size else self.pixels
                model_input = preprocess(source, size)
                model_input.flags.writeable = False
                self._inputs[size] = model_input
            return self._inputs[size]


def load_and_preprocess(
    source: str | Path | bytes, size: int = DEFAULT_INPUT_SIZE, limits: ImageLimits = ImageLimits()
) -> tuple[np.ndarray, ImageInfo]:
    """The model input and the image facts, as every face makes them (``DecodedImage.decode``, then
    ``model_input``: from the JPEG draft where it is large enough, else from ``load_image``'s pixels)."""
    image = DecodedImage.decode(source, limits)
    return image.model_input(size), image.info
