"""The grey zone: the band of calibrated probability that a benign change of acquisition can cross.

The rule, fixed before it was applied, is in docs/grey_zone_rule.md. On the model's validation
split, every image's calibrated logit (logit / temperature) is measured plain and under each
benign perturbation of ``GreyZoneRule`` (``shifts``); an image's shift is its largest absolute
change; the half-width ``w`` is a percentile of the shifts, floored; the band is
``[sigmoid(L - w), sigmoid(L + w))`` around ``L = logit(threshold)``. So the threshold lies
strictly inside the band, each edge at least the floor away on the logit scale.

The arithmetic (``image_shifts``, ``half_width``, ``band_around``) is pure and works on arrays;
``measure`` scores images through the pipeline; ``apply_to_metadata`` rewrites a model's
metadata with the band and logs the change (``python -m pneumo_model zone --write``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..artifacts import ModelMetadata, file_sha256, metadata_path, read_metadata
from ..calibration import GreyZone
from ..errors import ConfigError, ModelFileError
from ..operating_point import logit
from ..pipeline import DecodedImage
from . import shifts

RULE_NAME = "benign_acquisition_shift"
RULE_DOCUMENT = "docs/grey_zone_rule.md"
CHANGE_LOG_NAME = "metadata_changes.jsonl"
# Percentiles of the shifts recorded beside the one the rule uses.
REPORTED_PERCENTILES = (50, 75, 90, 95, 99)


@dataclass(frozen=True)
class GreyZoneRule:
    """The rule's parameters (docs/grey_zone_rule.md); the defaults are the rule as committed.

    Attributes:
        brightness: offsets added to the input.
        contrast: factors around the image's mean.
        gamma: powers.
        rotation_deg: rotations about the centre, in degrees.
        zoom: scale factors about the centre (above 1 zooms in).
        resolution: sides, as a share, the input is reduced to and brought back from.
        jpeg_quality: JPEG qualities the input is re-encoded at.
        percentile: the percentile of the per-image shifts that gives the half-width.
        floor: the smallest half-width, on the calibrated logit scale.
    """

    brightness: tuple[float, ...] = (0.04, -0.04)
    contrast: tuple[float, ...] = (0.9, 1.1)
    gamma: tuple[float, ...] = (0.9, 1.1)
    rotation_deg: tuple[float, ...] = (5.0, -5.0)
    zoom: tuple[float, ...] = (0.95, 1.05)
    resolution: tuple[float, ...] = (0.75,)
    jpeg_quality: tuple[int, ...] = (75,)
    percentile: float = 90.0
    floor: float = 0.25

    def __post_init__(self):
        if not 0.0 <= self.percentile <= 100.0:
            raise ConfigError(f"The percentile must lie in [0, 100]; got {self.percentile}.")
        if not self.floor > 0.0:
            raise ConfigError(f"The floor must be positive, so the threshold lies strictly inside the band; got {self.floor}.")

    def perturbations(self) -> list[tuple[str, Callable[[np.ndarray], np.ndarray]]]:
        """``(name, function)`` per perturbation, in a fixed order; each function takes one model
        input (size, size, 1) float32 in [0, 1] and returns a perturbed copy."""
        made = []
        made += [(f"brightness{v:+g}", lambda x, v=v: shifts.add_brightness(x, v)) for v in self.brightness]
        made += [(f"contrast_x{v:g}", lambda x, v=v: shifts.scale_contrast(x, v)) for v in self.contrast]
        made += [(f"gamma_{v:g}", lambda x, v=v: shifts.apply_gamma(x, v)) for v in self.gamma]
        made += [(f"rotation{v:+g}deg", lambda x, v=v: shifts.rotate_and_zoom(x, degrees=v)) for v in self.rotation_deg]
        made += [(f"zoom_x{v:g}", lambda x, v=v: shifts.rotate_and_zoom(x, zoom=v)) for v in self.zoom]
        made += [(f"resolution_{v:g}", lambda x, v=v: shifts.lower_resolution(x, v)) for v in self.resolution]
        made += [(f"jpeg_q{v:d}", lambda x, v=v: shifts.jpeg_reencode(x, v)) for v in self.jpeg_quality]
        return made

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()}


def image_shifts(plain: np.ndarray, perturbed: np.ndarray, temperature: float) -> np.ndarray:
    """Each image's largest absolute change of calibrated logit over the perturbations.

    Args:
        plain: (n,) raw logits of the unperturbed inputs.
        perturbed: (k, n) raw logits, one row per perturbation.
        temperature: the model's temperature (calibrated logit = logit / temperature).

    Returns:
        (n,) float64, non-negative.
    """
    plain = np.asarray(plain, dtype=np.float64).reshape(-1)
    perturbed = np.asarray(perturbed, dtype=np.float64).reshape(-1, plain.size)
    if not temperature > 0:
        raise ConfigError(f"The temperature must be positive; got {temperature}.")
    return np.abs(perturbed - plain[np.newaxis]).max(axis=0) / temperature  # (n,)


def half_width(shifts_: np.ndarray, rule: GreyZoneRule = GreyZoneRule()) -> tuple[float, float]:
    """``(w, measured)``: the rule's percentile of the per-image shifts (``measured``) and the
    half-width ``w = max(measured, floor)``.

    Raises:
        ConfigError: no shift to take a percentile of.
    """
    values = np.asarray(shifts_, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ConfigError("The grey-zone rule needs at least one validation image.")
    measured = float(np.percentile(values, rule.percentile))
    return max(measured, rule.floor), measured


def band_around(threshold: float, w: float) -> GreyZone:
    """``[sigmoid(L - w), sigmoid(L + w))`` with ``L = logit(threshold)``.

    Raises:
        ConfigError: a threshold outside (0, 1) or a half-width that is not positive.
    """
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"The threshold must lie in (0, 1); got {threshold}.")
    if not w > 0.0:
        raise ConfigError(f"The half-width must be positive; got {w}.")
    centre = logit(threshold)
    return GreyZone(float(1.0 / (1.0 + np.exp(-(centre - w)))), float(1.0 / (1.0 + np.exp(-(centre + w)))))


@dataclass(frozen=True)
class ZoneMeasurement:
    """What the rule measured on one model's validation images, and the band it gives.

    Attributes:
        rule: the rule applied.
        temperature, threshold: the model's, unchanged.
        names: the perturbations' names, in ``rule.perturbations()`` order.
        plain_logits: (n,) calibrated logits of the unperturbed inputs.
        changes: (k, n) absolute change of calibrated logit, per perturbation and image.
        measured: the rule's percentile of the per-image shifts, before the floor.
        w: the half-width, ``max(measured, rule.floor)``.
        band: the grey zone.
    """

    rule: GreyZoneRule
    temperature: float
    threshold: float
    names: tuple[str, ...]
    plain_logits: np.ndarray
    changes: np.ndarray
    measured: float
    w: float
    band: GreyZone

    @classmethod
    def from_logits(
        cls, plain: np.ndarray, perturbed: np.ndarray, names: Sequence[str], temperature: float, threshold: float,
        rule: GreyZoneRule = GreyZoneRule(),
    ) -> "ZoneMeasurement":
        """The measurement from raw logits: ``plain`` (n,), ``perturbed`` (k, n), one row per name."""
        plain = np.asarray(plain, dtype=np.float64).reshape(-1)
        perturbed = np.asarray(perturbed, dtype=np.float64).reshape(len(names), plain.size)
        w, measured = half_width(image_shifts(plain, perturbed, temperature), rule)
        changes = np.abs(perturbed - plain[np.newaxis]) / temperature  # (k, n)
        return cls(rule, float(temperature), float(threshold), tuple(names), plain / temperature, changes, measured, w,
                   band_around(threshold, w))

    @property
    def shifts(self) -> np.ndarray:
        """(n,) each image's largest change."""
        return self.changes.max(axis=0)

    def shares(self) -> dict:
        """Share of the validation images in the band, and in it at or above / below the threshold."""
        probabilities = 1.0 / (1.0 + np.exp(-self.plain_logits))  # (n,)
        inside = self.band.contains(probabilities)
        above = probabilities >= self.threshold
        return {
            "in_band": float(inside.mean()),
            "in_band_above_threshold": float((inside & above).mean()),
            "in_band_below_threshold": float((inside & ~above).mean()),
        }

    def facts(self, when: dt.datetime | None = None) -> dict:
        """The metadata's ``grey_zone_rule``: the rule, what was measured and the band."""
        when = when or dt.datetime.now(dt.timezone.utc)
        return {
            "name": RULE_NAME,
            "document": RULE_DOCUMENT,
            "description": (
                f"A call that a benign change of acquisition could flip, for {self.rule.percentile:g} % of images, is "
                "indeterminate: on the model's validation split, each image's largest absolute change of calibrated logit "
                f"(logit / temperature) over the benign perturbations; w is the {self.rule.percentile:g}th percentile of "
                f"those changes, floored "
                f"at {self.rule.floor:g}; the band is [sigmoid(L - w), sigmoid(L + w)) with L = logit(threshold)."
            ),
            "parameters": self.rule.to_dict() | {"perturbations": list(self.names)},
            "split": "validation",
            "n_images": int(self.plain_logits.size),
            "measured_percentile": self.measured,
            "w": self.w,
            "floored": self.w > self.measured,
            "shift_percentiles": {f"p{q:g}": float(np.percentile(self.shifts, q)) for q in REPORTED_PERCENTILES}
            | {"max": float(self.shifts.max())},
            "per_perturbation": {
                name: {"median": float(np.median(row)), "p90": float(np.percentile(row, 90)), "max": float(row.max())}
                for name, row in zip(self.names, self.changes)
            },
            "validation_shares": self.shares(),
            "date_utc": when.isoformat(timespec="seconds"),
        }

    def summary(self) -> dict:
        """The ``zone`` command's JSON line."""
        facts = self.facts()
        return {
            "threshold": self.threshold,
            "temperature": self.temperature,
            "grey_zone": [self.band.low, self.band.high],
            "w": self.w,
            "measured_percentile": self.measured,
            "n_images": facts["n_images"],
            "shift_percentiles": facts["shift_percentiles"],
            "per_perturbation_p90": {name: row["p90"] for name, row in facts["per_perturbation"].items()},
            "validation_shares": facts["validation_shares"],
        }


def measure(
    predictor, paths: Sequence[Path], temperature: float, threshold: float, rule: GreyZoneRule = GreyZoneRule()
) -> ZoneMeasurement:
    """Applies the rule to a model on the given (validation) files.

    Each file is decoded once and preprocessed through the pipeline (``DecodedImage.decode``,
    ``model_input``), as ``evaluation.call_files`` does; plain and perturbed inputs go through the
    same forward pass (``predictor.logits``), a batch at a time.

    Args:
        predictor: a ``Predictor`` (its raw logits are used; its own operating point is not).
        paths: the validation files.
        temperature, threshold: the operating point the band is made for.
        rule: the rule's parameters.

    Raises:
        InvalidImageError: a file cannot be used.
        ConfigError: no file, or a threshold outside (0, 1).
    """
    size = predictor.input_size
    named = rule.perturbations()
    plain, perturbed = [], [[] for _ in named]
    for start in range(0, len(paths), predictor.batch_size):
        inputs = np.stack([DecodedImage.decode(path).model_input(size) for path in paths[start : start + predictor.batch_size]])
        plain.append(predictor.logits(inputs))  # (batch,)
        for row, (_, perturb) in zip(perturbed, named):
            row.append(predictor.logits(np.stack([perturb(image) for image in inputs])))  # (batch,)
    if not plain:
        raise ConfigError("The grey-zone rule needs at least one validation image.")
    return ZoneMeasurement.from_logits(
        np.concatenate(plain), np.array([np.concatenate(row) for row in perturbed]), [name for name, _ in named],
        temperature, threshold, rule,
    )


def measure_model(model_path: Path, data_dir: Path, rule: GreyZoneRule = GreyZoneRule()) -> ZoneMeasurement:
    """The rule on a saved model's own validation split, at its metadata's temperature and threshold.

    Raises:
        ModelFileError: the model files are missing or altered.
        DataError: the data folder differs from the data the model was trained on (``model_split``).
    """
    from ..data import model_split
    from ..prediction import Predictor

    predictor = Predictor.from_file(Path(model_path), runtime="keras")
    metadata = predictor.metadata
    validation = model_split(metadata, Path(data_dir)).validation
    return measure(predictor, [s.path for s in validation], metadata.temperature, metadata.threshold, rule)


def apply_to_metadata(model_path: Path, measurement: ZoneMeasurement, reports_dir: Path, command: str) -> list[dict]:
    """Rewrites the model's metadata with the measured band and logs each changed field.

    The ``.keras`` file, its SHA-256, the temperature and the threshold stay as they are; only
    ``grey_zone``, ``grey_zone_rule`` and ``validation["grey_zone_fraction"]`` change. Every
    changed field is appended to ``reports_dir / metadata_changes.jsonl`` (UTC time, model SHA,
    field, old value, new value, the command).

    Returns:
        The log entries written.

    Raises:
        ModelFileError: the model file does not match its metadata, or the measurement was made
            for another temperature or threshold.
    """
    model_path = Path(model_path)
    metadata = read_metadata(model_path)
    if file_sha256(model_path) != metadata.model_sha256:
        raise ModelFileError(f"The model file '{model_path}' does not match its metadata; restore the shipped files first.")
    if (measurement.temperature, measurement.threshold) != (metadata.temperature, metadata.threshold):
        raise ModelFileError("The grey-zone measurement was made for another temperature or threshold than the model's.")
    now = dt.datetime.now(dt.timezone.utc)
    updated = metadata_with_band(metadata, measurement, now)
    before, after = metadata.to_dict(), updated.to_dict()
    changes = [
        ("grey_zone", before["grey_zone"], after["grey_zone"]),
        ("grey_zone_rule", before["grey_zone_rule"], after["grey_zone_rule"]),
        ("validation.grey_zone_fraction", before["validation"].get("grey_zone_fraction"), after["validation"]["grey_zone_fraction"]),
    ]
    metadata_path(model_path).write_text(json.dumps(after, indent=2) + "\n")
    entries = [
        {"utc": now.isoformat(timespec="seconds"), "model_sha256": metadata.model_sha256, "field": field_name,
         "old": old, "new": new, "command": command}
        for field_name, old, new in changes
        if old != new
    ]
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    with open(reports_dir / CHANGE_LOG_NAME, "a") as log:
        for entry in entries:
            log.write(json.dumps(entry) + "\n")
    return entries


def metadata_with_band(metadata: ModelMetadata, measurement: ZoneMeasurement, when: dt.datetime | None = None) -> ModelMetadata:
    """``metadata`` with the measured band, its rule (``grey_zone_rule``) and the validation share
    in the band; everything else as it was."""
    facts = measurement.facts(when)
    return dataclasses.replace(
        metadata,
        grey_zone=(measurement.band.low, measurement.band.high),
        grey_zone_rule=facts,
        validation={**metadata.validation, "grey_zone_fraction": facts["validation_shares"]["in_band"]},
    )
