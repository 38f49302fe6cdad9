"""The one way an image travels: bytes, decoded once, then every step takes the decoded image.

``DecodedImage.decode`` reads and decodes a file (or bytes) once: its SHA-256 (the audit trail's
key), its grey pixels (read-only, shared by every later step) and its ``ImageInfo``. The model
input is made from the pixels once per input size, on first use. ``Predictor.call``,
``Predictor.call_on_crop`` and ``Predictor.rescore`` take it; the app, the CLI, evaluation and the
benchmark all go through them, so the same bytes get the same probability and the same gate
everywhere.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .paths import bytes_sha256
from .preprocessing import ImageInfo, ImageLimits, load_image, preprocess, read_image_bytes


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """An image decoded once, as every later step takes it.

    Attributes:
        digest: SHA-256 of the file's bytes, 64 hex digits.
        pixels: the 2-D grey array ``load_image`` returned (uint8 or uint16), read-only.
        info: the image's facts and warnings.
    """

    digest: str
    pixels: np.ndarray
    info: ImageInfo
    _inputs: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        self.pixels.flags.writeable = False  # shared by every step, and by every session in the app

    @classmethod
    def decode(cls, source: str | Path | bytes, limits: ImageLimits = ImageLimits()) -> "DecodedImage":
        """Reads and decodes a file or its bytes.

        Raises:
            InvalidImageError: the image cannot be used (see ``load_image``; the message says why).
        """
        data = read_image_bytes(source, limits)
        pixels, info = load_image(data, limits)
        return cls(bytes_sha256(data), pixels, info)

    def model_input(self, size: int) -> np.ndarray:
        """``preprocess(pixels, size)``, made once per size: (size, size, 1) float32 in [0, 1], read-only."""
        with self._lock:
            if size not in self._inputs:
                model_input = preprocess(self.pixels, size)
                model_input.flags.writeable = False
                self._inputs[size] = model_input
            return self._inputs[size]
