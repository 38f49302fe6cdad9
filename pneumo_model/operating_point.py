"""The operating point: how a model's logit becomes a probability, a call and a grey-zone flag.

Three kinds exist. The one shipped with the model is fixed on validation data (temperature,
threshold and grey zone in the model's metadata). A site profile (``site``) is fitted on a
hospital's own labelled films; a label-free profile (``alignment``) maps a site's unlabelled score
distribution onto validation's first. Every call goes through one ``OperatingPoint``:

    probability = sigmoid(scale * mapping(logit) + offset)     (mapping: the identity but for label-free)
    label       = "pneumonia" if probability >= threshold else "normal"
    grey zone   = low <= probability < high

The shipped point has ``scale = 1 / temperature`` and ``offset = 0``. Each operating point has an
``id`` that every result records (``Prediction.operating_point``, the ``predict`` JSON, the
worklist CSV and the audit trail): for the shipped one a content hash of its temperature,
threshold and grey zone, for a site profile the profile's own content hash. So a result always
says which operating point made it, and two different points never share an id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .calibration import GreyZone

SHIPPED, SITE, LABEL_FREE = "shipped", "site", "label-free"
ID_HEX_DIGITS = 16


def content_id(facts: dict) -> str:
    """A short content hash: the first ``ID_HEX_DIGITS`` hex digits of the SHA-256 of ``facts``
    as canonical JSON (sorted keys, no spaces; floats written exactly, as Python's repr)."""
    text = json.dumps(facts, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_HEX_DIGITS]


def logit(probability: float) -> float:
    """The log-odds of a probability in (0, 1)."""
    p = float(probability)
    return float(np.log(p) - np.log1p(-p))


@dataclass(frozen=True)
class OperatingPoint:
    """One way of turning logits into calls (see the module's docstring).

    Attributes:
        id: content hash recorded with every result.
        kind: ``"shipped"`` or ``"site"``.
        model_sha256: the model it was fixed for.
        scale, offset: ``probability = sigmoid(scale * logit + offset)``.
        threshold: the call is pneumonia at or above this probability.
        grey_zone: the ``[low, high)`` band of probability that needs a careful read.
        description: one line for the page banner and the CLI, e.g. "as shipped: fixed on
            validation data from one paediatric hospital".
        mapping: for a label-free profile (``alignment``), the knots ``(x, y)`` of the monotone
            piecewise-linear map from the site's raw logit to validation's, applied before
            ``scale`` and ``offset`` (slope 1 beyond the end knots); None: no map.
    """

    id: str
    kind: str
    model_sha256: str
    scale: float
    offset: float
    threshold: float
    grey_zone: GreyZone
    description: str
    mapping: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @classmethod
    def shipped(cls, metadata) -> "OperatingPoint":
        """The operating point in a model's metadata (``artifacts.ModelMetadata``)."""
        low, high = (float(edge) for edge in metadata.grey_zone)
        facts = {"temperature": float(metadata.temperature), "threshold": float(metadata.threshold), "grey_zone": [low, high]}
        return cls(
            id=content_id(facts),
            kind=SHIPPED,
            model_sha256=metadata.model_sha256,
            scale=1.0 / float(metadata.temperature),
            offset=0.0,
            threshold=float(metadata.threshold),
            grey_zone=GreyZone(low, high),
            description="as shipped: fixed on validation data from one paediatric hospital",
        )

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of pneumonia from raw model logits (float64, same shape)."""
        raw = np.asarray(logits, dtype=np.float64)
        if self.mapping is not None:
            raw = piecewise_linear(*self.mapping, raw)
        z = self.scale * raw + self.offset
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))

    def label(self, probability: float) -> str:
        return "pneumonia" if probability >= self.threshold else "normal"

    def in_grey_zone(self, probability: float) -> bool:
        return bool(self.grey_zone.contains(float(probability)))

    def facts(self) -> dict:
        """What a report or the predict command says about it."""
        return {
            "id": self.id,
            "kind": self.kind,
            "threshold": self.threshold,
            "grey_zone": [self.grey_zone.low, self.grey_zone.high],
            "description": self.description,
        }


def piecewise_linear(x: Sequence[float], y: Sequence[float], values: np.ndarray) -> np.ndarray:
    """The map through the knots ``(x, y)`` (both increasing), slope 1 beyond the ends (float64)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    inside = np.interp(values, x, y)
    return np.where(values < x[0], y[0] + (values - x[0]), np.where(values > x[-1], y[-1] + (values - x[-1]), inside))
